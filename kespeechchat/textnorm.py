"""Text normalisation: written form -> spoken form, so TTS reads it and ASR is scored like with like.

WeTextProcessing's zh and en grammars do the work ("3000000元" -> "三百万元", "12.5%" -> "twelve
point five percent"). Around them sit rewrites for what the grammars get wrong, each found by a
test case:

- en: only number/symbol regions of a line go through the grammar ("5 kg", "Jan 5, 2024",
  "3:30 PM"); plain words never do. Its unit rules have no right word boundary and split words
  after a number or "per": "1 month" -> "one minute onth", "per day" -> "- per dalton y".
- en money: "$3.50" was "three point five dollars" -> "three dollars and fifty cents"; "$5/month"
  was "dollar five slash month" -> "five dollars a month".
- en: "9 - 6" was "nine to six" and "9 - 2 x 3" kept its "-": a spaced minus between numbers is
  "minus" (unspaced "3-5 days" stays a range, year ranges stay "to").
- en: "1,000" was "thousand"; "1990s" was "one thousand nine hundred and ninety seconds"; "#1" was
  "number one degree Fahrenheit"; "5 m" was "five minutes"; "3x faster" broke "faster"; phone
  numbers and year ranges were read as cardinals.
- zh: "$3.50" -> "三点五零美元" becomes "三点五美元"; "-3.2%" was "百分之负三点二"; "1,000,000" was
  read digit by digit; "10+年" kept the "+"; "40 * 52 = 2080" was "四十*五十二等于二十八十";
  list numbers "1." become "一、".

The zh grammar is compiled once (about 6 s) with erhua and interjections ("嗯", "啊") kept, since
they are spoken, and without the full-width -> half-width pass, so zh keeps "，。！？". Compiled
FSTs go to ``~/.cache/kespeechchat/wetext-<version>/`` (``KESPEECHCHAT_CACHE`` overrides the root),
never into site-packages. The en grammar ships prebuilt in the wheel and is only read.
Normalisers are cached per process.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import tempfile
import threading
import unicodedata
from collections.abc import Callable, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

from kespeechchat.langid import HAN_RANGES

log = logging.getLogger(__name__)

LANGUAGES = ("zh", "en")

_lock = threading.Lock()
_normalizers: dict[str, Any] = {}

# zh grammar options: keep what is spoken (erhua, interjections) and zh punctuation.
_ZH_OPTIONS = {
    "remove_erhua": False,
    "remove_interjections": False,
    "full_to_half": False,
    "traditional_to_simple": True,
    "remove_puncts": False,
    "tag_oov": False,
}


def cache_root() -> Path:
    """Where compiled grammars live: ``$KESPEECHCHAT_CACHE`` or ``~/.cache/kespeechchat``."""
    env = os.environ.get("KESPEECHCHAT_CACHE")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "kespeechchat"


def _import_tn() -> Any:
    try:
        import tn
    except ImportError as e:
        raise ImportError(
            f"text normalisation needs WeTextProcessing ({e}); install it with: pip install 'kespeechchat[embedded]'"
        ) from None
    logging.getLogger("wetext").setLevel(logging.WARNING)
    return tn


def _tn_version() -> str:
    try:
        from importlib.metadata import version

        return version("WeTextProcessing")
    except Exception:
        return "unknown"


def _build_once(target: Path, build: Callable[[str], Any]) -> None:
    """Compile grammars into ``target`` atomically: build in a temp dir, then rename it into place.

    Several workers may start at once; each builds in its own directory and the first rename wins,
    so nobody ever reads a half-written FST.
    """
    if target.is_dir():
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".build-", dir=target.parent))
    try:
        build(str(tmp))
        try:
            os.rename(tmp, target)
        except OSError:
            if not target.is_dir():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _zh_normalizer() -> Any:
    _import_tn()
    from tn.chinese.normalizer import Normalizer

    tag = "-".join(f"{k}={int(v)}" for k, v in sorted(_ZH_OPTIONS.items()))
    target = cache_root() / f"wetext-{_tn_version()}" / f"zh-{hashlib.sha256(tag.encode()).hexdigest()[:12]}"
    _build_once(target, lambda d: Normalizer(cache_dir=d, **_ZH_OPTIONS))
    return Normalizer(cache_dir=str(target), **_ZH_OPTIONS)


def _en_normalizer() -> Any:
    tn = _import_tn()
    from tn.english.normalizer import Normalizer

    shipped = Path(tn.__file__).parent
    if (shipped / "en_tn_tagger.fst").is_file() and (shipped / "en_tn_verbalizer.fst").is_file():
        return Normalizer(cache_dir=str(shipped))
    target = cache_root() / f"wetext-{_tn_version()}" / "en"
    _build_once(target, lambda d: Normalizer(cache_dir=d))
    return Normalizer(cache_dir=str(target))


def get_normalizer(language: str) -> Any:
    """The WeTextProcessing normaliser of ``language``, loaded once per process."""
    if language not in LANGUAGES:
        raise ValueError(
            f"no text normalisation for language {language!r}; expected one of {', '.join(LANGUAGES)}"
        )
    n = _normalizers.get(language)
    if n is None:
        with _lock:
            n = _normalizers.get(language)
            if n is None:
                n = _zh_normalizer() if language == "zh" else _en_normalizer()
                _normalizers[language] = n
    return n


def warm_up(languages: Sequence[str] = LANGUAGES) -> None:
    """Load (and on first use compile) the grammars, e.g. in a stage's ``setup()``."""
    for lang in languages:
        get_normalizer(lang)


# ---------------------------------------------------------------------------------------------
# shared clean-up

_ZERO_WIDTH = re.compile("[\u200b\u200c\u200d\u2060\ufeff]")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
_SPACES = re.compile(r"[ \t\u00a0\u2000-\u200a\u3000]+")
# Full-width digits, letters and a few symbols -> ASCII, so the grammars see numbers.
# Full-width punctuation (，。！？：；（）) is kept: it is what zh text should look like.
_FULLWIDTH_KEEP = set("，。！？：；（）")
_FULLWIDTH = {cp: cp - 0xFEE0 for cp in range(0xFF01, 0xFF5F) if chr(cp) not in _FULLWIDTH_KEEP}
# "1,000" -> "1000": the en grammar reads "1,000" as "thousand", the zh one digit by digit.
_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")
_FULLWIDTH[0x2212] = ord("-")  # minus sign
_FULLWIDTH[0xFFE5] = ord("¥")  # full-width yen/yuan sign


def _clean(text: str) -> list[str]:
    """NFC, no invisible or control characters, one space at most, non-empty lines."""
    text = unicodedata.normalize("NFC", text.replace("\r\n", "\n").replace("\r", "\n"))
    text = _ZERO_WIDTH.sub("", text)
    text = _CONTROL.sub(" ", text)
    text = text.translate(_FULLWIDTH)
    lines = (_SPACES.sub(" ", ln).strip() for ln in text.split("\n"))
    return [ln for ln in lines if ln]


# ---------------------------------------------------------------------------------------------
# en

_NUM = r"\d{1,3}(?:,\d{3})+|\d+"
_MONEY_EN = re.compile(
    rf"(?<![\w$])(US\$|\$|€|£|¥)\s?({_NUM})(?:\.(\d{{1,2}}))?(?!\.?\d)"
    r"(?:\s?(thousand|million|billion|trillion)\b)?"
)
_CURRENCY_EN = {
    "$": ("dollar", "dollars", "cent", "cents"),
    "US$": ("dollar", "dollars", "cent", "cents"),
    "€": ("euro", "euros", "cent", "cents"),
    "£": ("pound", "pounds", "penny", "pence"),
    "¥": ("yuan", "yuan", "fen", "fen"),
}
_PER = re.compile(r"\b(dollars?|cents?|euros?|pounds?|pence|penny|yuan|fen)\s*/\s*([A-Za-z]+)")
_DECADE = re.compile(r"(?<![\w'’])(?:(1[0-9]|20)(\d)0|['’](\d)0)s\b")
_TEENS = "ten eleven twelve thirteen fourteen fifteen sixteen seventeen eighteen nineteen twenty".split()
_TENS_PLURAL = [
    "",
    "tens",
    "twenties",
    "thirties",
    "forties",
    "fifties",
    "sixties",
    "seventies",
    "eighties",
    "nineties",
]
_DIGITS_EN = "zero one two three four five six seven eight nine".split()
_INTL_PHONE = re.compile(r"(?<![\w+])\+(\d{1,3})((?:[ .-]?\(?\d{1,4}\)?){2,5})(?![\w])")
_HASH_NUM = re.compile(r"(?<![\w&])#\s?(\d+)")
_NO_NUM = re.compile(r"\b(?:No|no|NO)\.\s?(?=\d)")
_TIMES_WORD = re.compile(r"(?<![\w.])(\d+(?:\.\d+)?)x(?=\s+[A-Za-z])")
_MINUS_TEMP = re.compile(r"(?<![\w.])-(?=\d[\d.,]*\s?°)")
_METERS = re.compile(r"(?<![\w.,])(\d+(?:\.\d+)?)\s?m(?:/s\b|\b(?![²³]))(?!\s*/)")
_HOURS = re.compile(r"(?<![\w.,])(\d+(?:\.\d+)?)\s?(hrs?|mins|secs|yrs?)\b\.?")
_ABBREV_UNITS = {
    "hr": "hour",
    "hrs": "hours",
    "mins": "minutes",
    "secs": "seconds",
    "yr": "year",
    "yrs": "years",
}
_ABBREV_EN = [
    (re.compile(r"\be\.g\.(?=\W|$)", re.IGNORECASE), "for example"),
    (re.compile(r"\bi\.e\.(?=\W|$)", re.IGNORECASE), "that is"),
    (re.compile(r"\betc\.(?=\s*$)"), "et cetera."),
    (re.compile(r"\betc\.?(?=\W|$)"), "et cetera"),
    (re.compile(r"\bvs\.?(?=\s)"), "versus"),
    (re.compile(r"\bapprox\.(?=\s)"), "approximately"),
    (re.compile(r"\bProf\.(?=\s)"), "Professor"),
    (re.compile(r"\bDr\.(?=\s+[A-Z])"), "Doctor"),
    (re.compile(r"\bMr\.(?=\s)"), "Mister"),
    (re.compile(r"\bMrs\.(?=\s)"), "Missus"),
    (re.compile(r"\bJr\.(?=\W|$)"), "Junior"),
    (re.compile(r"\bSr\.(?=\W|$)"), "Senior"),
    (re.compile(r"\bMt\.(?=\s+[A-Z])"), "Mount"),
    (re.compile(r"\bSt\.(?=\s+[A-Z])"), "Saint"),
    (re.compile(r"(?<!\w)w/o(?=\s)"), "without"),
    (re.compile(r"(?<!\w)w/(?=\s)"), "with"),
    (re.compile(r"(?<![\w/])24/7(?![\w/])"), "twenty four seven"),
]
_MONTHS = (
    "january february march april may june july august september october november december "
    "jan feb mar apr jun jul aug sep sept oct nov dec"
).split()
_US_PHONE = re.compile(r"(?<![\w(-])(?:\((\d{3})\)\s?|(\d{3})[-.])(\d{3})[-.](\d{4})(?![\w-])")
_LOCAL_PHONE = re.compile(r"(?<![\w-])(\d{3})-(\d{4})(?![\w-])")
_YEAR = r"(1[5-9]\d\d|20\d\d)"
_YEAR_RANGE = re.compile(rf"(?<![\w.,-]){_YEAR}\s?[-–]\s?{_YEAR}(?![\w.,-])")
_AMPM = re.compile(r"(?<=\d)\s?([ap])\.m\.?(?=\W|$)", re.IGNORECASE)
_DIVIDED = re.compile(r"(?<=\d)\s+/\s+(?=\d)")
# "9 - 6" with spaces is arithmetic (the grammar said "nine to six"); "3-5 days" stays a range
_MINUS_SPACED = re.compile(r"(?<=\d) [-−] (?=\d)")
_STAR_TIMES = re.compile(r"(?<=\d)\s*\*\s*(?=\d)")
_POWER = re.compile(r"\^(\d+)")
_POWER_WORDS = {"2": " squared", "3": " cubed"}
_ORDINAL_DASH = re.compile(r"(?<![\w.])(\d+(?:st|nd|rd|th))-(?=[A-Za-z])")
# Tokens with digits or these symbols go to the grammar ("Q&A", "=", "°C", "¼").
_SPECIAL = re.compile(r"[0-9@#$€£¥%&+=°×÷℃℉¼½¾⅓⅔⅛]")
_JOINERS = {"x", "X", "-", "–", "/", "*", "to"}
_PAIRS = {'"': '"', "'": "'", "“": "”", "‘": "’", "(": ")", "[": "]", "{": "}", "«": "»"}
_CLOSERS = {c: o for o, c in _PAIRS.items()}
_MONTH_NAMES = frozenset(_MONTHS)
_PUNCT_SPACE = re.compile(r"\s+([,.!?;:%])")
_MONTH_WORD = re.compile(
    r"\b(january|february|march|april|may|june|july|august|september|october|november|december)\b"
)


@lru_cache(maxsize=1)
def _en_units() -> frozenset[str]:
    """Unit abbreviations of the en grammar: a region "5 kg" keeps its unit for the grammar."""
    tn = _import_tn()
    base = Path(tn.__file__).parent / "english" / "data" / "measure"
    units = {"am", "pm", "AM", "PM"}
    for name in ("unit.tsv", "unit_alternatives.tsv"):
        p = base / name
        if p.is_file():
            for line in p.read_text(encoding="utf-8").splitlines():
                if line.strip():
                    units.add(line.split("\t")[0].strip())
    return frozenset(units)


def _money_en(m: re.Match[str]) -> str:
    sym, whole, frac, scale = m.group(1), m.group(2), m.group(3), m.group(4)
    one, many, sub_one, sub_many = _CURRENCY_EN[sym]
    if scale:
        return f"{whole}{'.' + frac if frac else ''} {scale} {many}"
    n = int(whole.replace(",", ""))
    cents = int(frac.ljust(2, "0")) if frac else 0
    parts = []
    if n or not cents:
        parts.append(f"{whole} {one if n == 1 else many}")
    if cents:
        parts.append(f"{cents} {sub_one if cents == 1 else sub_many}")
    return " and ".join(parts)


def _decade_en(m: re.Match[str]) -> str:
    if m.group(3):  # '80s
        return _TENS_PLURAL[int(m.group(3))] if m.group(3) != "0" else "two thousands"
    century, decade = int(m.group(1)), int(m.group(2))
    if decade == 0:
        return "two thousands" if century == 20 else f"{_TEENS[century - 10]} hundreds"
    return f"{_TEENS[century - 10]} {_TENS_PLURAL[decade]}"


def _digits_en(digits: str) -> str:
    return " ".join(_DIGITS_EN[int(d)] for d in digits)


def _phone_en(m: re.Match[str]) -> str:
    groups = re.split(r"[ .()-]+", m.group(1) + " " + m.group(2))
    return "plus " + ", ".join(_digits_en(re.sub(r"\D", "", g)) for g in groups if re.sub(r"\D", "", g))


def _pre_en(line: str) -> str:
    """Rewrites the en grammar gets wrong; the result still has digits for the grammar."""
    line = line.replace("’", "'").replace("‘", "'")
    line = _INTL_PHONE.sub(_phone_en, line)
    line = _US_PHONE.sub(
        lambda m: ", ".join(_digits_en(g) for g in (m.group(1) or m.group(2), m.group(3), m.group(4))), line
    )
    line = _LOCAL_PHONE.sub(lambda m: f"{_digits_en(m.group(1))}, {_digits_en(m.group(2))}", line)
    line = _MONEY_EN.sub(_money_en, line)
    line = _PER.sub(r"\1 a \2", line)
    line = _DECADE.sub(_decade_en, line)
    line = _YEAR_RANGE.sub(r"\1 to \2", line)
    line = _THOUSANDS.sub("", line)
    line = _HASH_NUM.sub(r"number \1", line)
    line = _NO_NUM.sub("number ", line)
    for rx, repl in _ABBREV_EN:
        line = rx.sub(repl, line)
    line = _AMPM.sub(lambda m: f" {m.group(1).upper()}M", line)
    line = _HOURS.sub(lambda m: f"{m.group(1)} {_ABBREV_UNITS[m.group(2)]}", line)
    line = _METERS.sub(
        lambda m: (
            f"{m.group(1)} {'meter' if m.group(1) == '1' else 'meters'}"
            + (" per second" if m.group(0).endswith("/s") else "")
        ),
        line,
    )
    line = _MINUS_TEMP.sub("minus ", line)
    line = _TIMES_WORD.sub(r"\1 times", line)
    line = _DIVIDED.sub(" divided by ", line)
    line = _MINUS_SPACED.sub(" minus ", line)
    line = _STAR_TIMES.sub(" times ", line)
    line = _POWER.sub(lambda m: _POWER_WORDS.get(m.group(1), f" to the power of {m.group(1)}"), line)
    line = _ORDINAL_DASH.sub(r"\1 ", line)
    return line


def _is_special(tok: str) -> bool:
    return bool(_SPECIAL.search(tok))


def _bare(tok: str) -> str:
    return tok.strip("".join(_PAIRS) + "".join(_CLOSERS) + ",.;:!?")


def _regions_en(tokens: list[str]) -> list[tuple[int, int]]:
    """Spans [a, b] of word tokens the grammar must see: numbers and symbols with their context.

    Plain words never reach the grammar: its unit rules have no right word boundary, so next to
    a number they split ordinary words ("1 month" -> "one minute onth", "per day" -> "- per
    dalton y"). A region is a run of tokens with digits or symbols, joined by operators, plus a
    month name before or after (dates) and a unit or AM/PM right after ("5 kg", "3:30 PM").
    """
    n = len(tokens)
    special = [_is_special(t) for t in tokens]
    spans: list[tuple[int, int]] = []
    i = 0
    while i < n:
        if not special[i]:
            i += 1
            continue
        a = b = i
        while True:
            if b + 1 < n and special[b + 1]:
                b += 1
            elif b + 2 < n and _bare(tokens[b + 1]) in _JOINERS and special[b + 2]:
                b += 2
            else:
                break
        if a > 0 and _bare(tokens[a - 1]).lower().rstrip(".") in _MONTH_NAMES and tokens[a - 1][:1].isupper():
            a -= 1
        if b + 1 < n:
            nxt = _bare(tokens[b + 1])
            if (
                nxt in _en_units()
                or nxt.split("/")[0] in _en_units()
                or (nxt.lower().rstrip(".") in _MONTH_NAMES and nxt[:1].isupper())
            ):
                b += 1
        spans.append((a, b))
        i = b + 1
    return spans


def _peel(text: str) -> tuple[str, str, str]:
    """Split unmatched outer quotes/brackets off a region: '("5")' -> ('("', '5', '")')."""
    lead, trail = "", ""
    while len(text) > 1 and text[0] in _PAIRS:
        close = _PAIRS[text[0]]
        if text[-1] == close and close not in text[1:-1]:
            lead, trail, text = lead + text[0], text[-1] + trail, text[1:-1]
        elif close not in text[1:]:
            lead, text = lead + text[0], text[1:]
        else:
            break
    while len(text) > 1 and text[-1] in _CLOSERS and _CLOSERS[text[-1]] not in text[:-1]:
        trail, text = text[-1] + trail, text[:-1]
    return lead, text, trail


def _tn_en(normalizer: Any, text: str) -> str:
    """The grammar on one region, with quotes and brackets around it peeled off and put back."""
    lead, core, trail = _peel(text)
    spoken = _MONTH_WORD.sub(lambda m: m.group(1).capitalize(), normalizer.normalize(core))
    return lead + spoken + trail


def _normalize_en(normalizer: Any, line: str) -> str:
    tokens = line.split(" ")
    out = list(tokens)
    for a, b in _regions_en(tokens):
        out[a] = _tn_en(normalizer, " ".join(tokens[a : b + 1]))
        for k in range(a + 1, b + 1):
            out[k] = ""
    spoken = " ".join(t for t in out if t)
    if spoken[:1].islower() and (line[:1].isupper() or line[:1].isdigit()):
        spoken = spoken[0].upper() + spoken[1:]  # "March 3rd ..." -> "The third of March ..."
    return spoken


def _post_en(line: str) -> str:
    line = _PUNCT_SPACE.sub(r"\1", line)
    return _SPACES.sub(" ", line).strip()


# ---------------------------------------------------------------------------------------------
# zh

_HAN = HAN_RANGES  # the compatibility ideographs too (this copy used to miss them)
_MONEY_ZH = re.compile(r"(?<![0-9A-Za-z$])(US\$|HK\$|\$|€|£|¥)\s?(\d+(?:\.\d+)?)(\s?[万亿千百]+)?(元|块)?")
_CURRENCY_ZH = {"$": "美元", "US$": "美元", "HK$": "港元", "€": "欧元", "£": "英镑", "¥": "元"}
_NEG_PERCENT = re.compile(r"(?<![0-9A-Za-z.])-(?=\d+(?:\.\d+)?%)")
_PLUS_MORE = re.compile(r"(?<=\d)\+(?![\d+])")
_COMPARE = [
    (re.compile(r"(?<=[\w)])\s*>\s*(?=-?\d)"), "大于"),
    (re.compile(r"(?<=[\w)])\s*<\s*(?=-?\d)"), "小于"),
    (re.compile(r"\s*≈\s*"), "约等于"),
    (re.compile(r"\s*≠\s*"), "不等于"),
]
_LIST_ZH = re.compile(r"^(\d{1,2})(?:[.)）](?!\d)\s*)")
_STAR_ZH = re.compile(r"(?<=\d)\s*[*]\s*(?=\d)")
_DIVIDE_ZH = re.compile(r"(?<=\d)\s*[/÷]\s*(?=\d)(?=\d+\s*=)|(?<=\d)\s+/\s+(?=\d)")
_POWER_ZH = re.compile(r"\^(\d+)")
_EQUALS_ZH = re.compile(r"\s*=\s*(?=[-\d])|(?<=\d)\s*=\s*")
_NO_ZH = re.compile(r"(?<![A-Za-z])(?:No|NO|no)\.\s?(?=\d)")
_FRACTIONS = {"½": "1/2", "⅓": "1/3", "⅔": "2/3", "¼": "1/4", "¾": "3/4", "⅕": "1/5", "⅛": "1/8"}
_ZH_PUNCT = {",": "，", "!": "！", "?": "？", ":": "：", ";": "；", ".": "。"}
_ZH_PUNCT_AFTER = re.compile(rf"(?<=[{_HAN}])([,!?:;])|(?<=[{_HAN}])\.(?=\s|$)")
_ZH_PUNCT_BEFORE = re.compile(rf"([,!?:;])\s*(?=[{_HAN}])")
_ZH_PARENS = re.compile(rf"\(([^()]*[{_HAN}][^()]*)\)")
_ZH_SPACE = re.compile(rf"(?<=[{_HAN}，。！？：；、])\s+|\s+(?=[{_HAN}，。！？：；、])")


def _money_zh(m: re.Match[str]) -> str:
    sym, amount, scale, _yuan = m.group(1), m.group(2), (m.group(3) or "").strip(), m.group(4)
    if "." in amount:
        amount = amount.rstrip("0").rstrip(".")
    return f"{amount}{scale}{_CURRENCY_ZH[sym]}"


# "（1939-1945）" is a span of years, said digit by digit ("一九三九年到一九四五年"); the grammar
# read it as a subtraction. "COVID-19": a name with a number, not minus nineteen.
# Han characters count as \w: around a zh span of years only Latin letters, digits and . , - matter.
_YEAR_RANGE_ZH = re.compile(rf"(?<![0-9A-Za-z.,-]){_YEAR}\s?[-–—~～]\s?{_YEAR}(?![0-9A-Za-z.,-])(年)?")
_NAME_DASH_NUM = re.compile(r"(?<=[A-Za-z])-(?=\d)")
_ZH_DIGITS = "零一二三四五六七八九"


def _year_range_zh(m: re.Match[str]) -> str:
    a, b = ("".join(_ZH_DIGITS[int(d)] for d in y) for y in (m.group(1), m.group(2)))
    return f"{a}年到{b}年"


def _pre_zh(line: str) -> str:
    line = _YEAR_RANGE_ZH.sub(_year_range_zh, line)
    line = _NAME_DASH_NUM.sub(" ", line)
    for k, v in _FRACTIONS.items():
        line = line.replace(k, v)
    line = _THOUSANDS.sub("", line)
    line = _MONEY_ZH.sub(_money_zh, line)
    line = _NEG_PERCENT.sub("负", line)
    line = _PLUS_MORE.sub("多", line)
    for rx, repl in _COMPARE:
        line = rx.sub(repl, line)
    line = _NO_ZH.sub("第", line)
    line = _LIST_ZH.sub(r"\1、", line)
    line = _STAR_ZH.sub("×", line)
    line = _DIVIDE_ZH.sub("除以", line)
    line = _POWER_ZH.sub(
        lambda m: {"2": "的平方", "3": "的立方"}.get(m.group(1), f"的{m.group(1)}次方"), line
    )
    line = _EQUALS_ZH.sub("等于", line)
    return line


def _quotes_zh(line: str) -> str:
    """Pairs of ASCII double quotes in zh text -> “ ”."""
    if line.count('"') % 2:
        return line
    parts = line.split('"')
    return "".join(p + ("“" if i % 2 == 0 else "”") for i, p in enumerate(parts[:-1])) + parts[-1]


def _post_zh(line: str) -> str:
    if '"' in line and re.search(f"[{_HAN}]", line):
        line = _quotes_zh(line)
    line = _ZH_PARENS.sub(r"（\1）", line)
    line = _ZH_PUNCT_AFTER.sub(lambda m: _ZH_PUNCT[m.group(1) or "."], line)
    line = _ZH_PUNCT_BEFORE.sub(lambda m: _ZH_PUNCT[m.group(1)], line)
    line = _ZH_SPACE.sub("", line)
    return line.strip()


# ---------------------------------------------------------------------------------------------


def _normalize_zh(normalizer: Any, line: str) -> str:
    return normalizer.normalize(line)


_PRE: dict[str, Callable[[str], str]] = {"zh": _pre_zh, "en": _pre_en}
_RUN: dict[str, Callable[[Any, str], str]] = {"zh": _normalize_zh, "en": _normalize_en}
_POST: dict[str, Callable[[str], str]] = {"zh": _post_zh, "en": _post_en}


def normalize(text: str, language: str) -> str:
    """Spoken form of ``text`` in ``language`` ("zh" or "en"); lines are kept, blank lines dropped.

    A line the grammar cannot handle is kept as rewritten so far (and logged), never lost.
    """
    if not isinstance(text, str):
        raise TypeError(f"normalize expects str, got {type(text).__name__}")
    normalizer = get_normalizer(language)
    pre, run, post = _PRE[language], _RUN[language], _POST[language]
    out = []
    for line in _clean(text):
        line = pre(line)
        try:
            spoken = run(normalizer, line)
        except Exception as e:  # a grammar failure must not lose the line
            log.warning(
                "text normalisation failed (%s: %s) on %r; kept as is", type(e).__name__, e, line[:80]
            )
            spoken = line
        spoken = post(spoken)
        if spoken:
            out.append(spoken)
    return "\n".join(out)


def normalize_many(texts: Sequence[str], language: str) -> list[str]:
    """:func:`normalize` of each text (one language for all, e.g. the turns of one dialogue)."""
    return [normalize(t, language) for t in texts]
