"""Error rates between the text we asked the TTS to say and what ASR heard.

Reference and hypothesis go through the same normalisation, so differences in script
(traditional/simplified), number form ("3" vs "three"), case and punctuation are not counted as
errors: only what a listener would hear differently is. Chinese is scored by characters (CER),
English by words (WER).

Chinese has many characters per syllable, and a recogniser that hears the right syllable with the
right tone still has to guess which of them was written (汇总 or 绘总, 在 or 再). Such a guess says
nothing about the audio, so a Chinese character counts as right when it is the same character or
has the same toned reading as the one it is aligned with (a tone heard wrongly is still an
error: 香 xiāng heard as 像 xiàng). ``literal_error_rate`` keeps the character-only count.

A recogniser also writes a symbol between two numbers for several different spoken words: "660-549"
is "six hundred and sixty minus five hundred forty nine" as well as "… to …", "3x4" is "three
times four" or "three by four". Text normalisation can only guess which was said, so the
hypothesis is scored under each reading of such symbols (``OPERATOR_READINGS``) and the best
reading counts: the audio said one of them, and nothing in the transcript says which.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable
from functools import lru_cache

from kespeechchat.langid import HAN_RANGES

_KINDS = {"zh": "cer", "en": "wer"}
# apostrophes inside words are dropped ("it's" -> "its"); all other punctuation splits words
_APOSTROPHES = "'\u2019\u2018\u02bc\uff07"
_SPACES = re.compile(r"\s+")
_HAN = re.compile(f"[{HAN_RANGES}]")
_LATIN_WORD = re.compile(r"[A-Za-z]+(?:'[A-Za-z]+)*")
_ALNUM = re.compile(r"[A-Za-z0-9]")
# Readings of a symbol that a recogniser writes between two numbers (hyphens, dashes and minus signs;
# multiplication signs and the letter x), per language. The hypothesis is scored under each.
_BETWEEN_DIGITS = {
    "dash": re.compile(r"(?<=\d)\s*[-\u2010-\u2015\u2212]\s*(?=\d)"),
    "times": re.compile(r"(?<=\d)\s*[x\u00d7*]\s*(?=\d)"),
}
OPERATOR_READINGS: dict[str, dict[str, tuple[str, ...]]] = {
    "en": {"dash": ("to", "minus"), "times": ("times", "by")},
    "zh": {"dash": ("到", "至", "减"), "times": ("乘",)},
}
# One English word inside Chinese speech takes about as long as two Chinese characters; one Chinese
# character inside English speech about as long as three letters.
ZH_CHARS_PER_LATIN_WORD = 2
EN_CHARS_PER_HAN = 3


def error_kind(language: str) -> str:
    """Return "cer" for Chinese, "wer" for English."""
    try:
        return _KINDS[language]
    except KeyError:
        raise ValueError(
            f"no error metric for language {language!r} (expected one of {sorted(_KINDS)})"
        ) from None


@lru_cache(maxsize=1)
def _t2s() -> Callable[[str], str]:
    import opencc

    return opencc.OpenCC("t2s").convert


@lru_cache(maxsize=1)
def _text_normalizer() -> Callable[[str, str], str] | None:
    """kespeechchat.textnorm.normalize, or None when that module is not part of this install.

    Only the absence of the module itself is tolerated; an import error inside it (a broken
    dependency) propagates, so scores are never silently computed without normalisation.
    """
    import importlib

    try:
        textnorm = importlib.import_module("kespeechchat.textnorm")
    except ModuleNotFoundError as e:
        if e.name == "kespeechchat.textnorm":
            return None
        raise
    return textnorm.normalize


def _strip_punctuation(text: str) -> str:
    out = []
    for ch in text:
        if ch in _APOSTROPHES:
            continue
        cat = unicodedata.category(ch)
        out.append(" " if cat[0] in ("P", "S") else ch)
    return "".join(out)


# Written forms that sound the same, so no listener (and no recogniser) can tell them apart: the
# third-person pronouns are all "tā", and the question particles 吗/嘛 are both a toneless "ma"
# (Whisper writes 嘛 for a clearly spoken 吗). A mismatch between them is not an error of the audio.
_ZH_SAME_SOUND = str.maketrans({"她": "他", "它": "他", "祂": "他", "牠": "他", "嘛": "吗"})


@lru_cache(maxsize=4096)  # a text is scored more than once (literal and by reading, each repair attempt)
def normalize_for_scoring(text: str, language: str) -> str:
    """Canonical form for scoring: NFKC, traditional->simplified, TN, lowercase, no punctuation.

    zh: all spaces removed (scored per character), 她/它 written as 他 and 嘛 as 吗 (``_ZH_SAME_SOUND``);
    en: single spaces between words.
    """
    kind = error_kind(language)
    s = unicodedata.normalize("NFKC", text or "")
    s = _t2s()(s)
    tn = _text_normalizer()
    if tn is not None and s.strip():
        s = tn(s, language)
        s = unicodedata.normalize("NFKC", s)
    s = _strip_punctuation(s.lower())
    if kind == "cer":
        return _SPACES.sub("", s).translate(_ZH_SAME_SOUND)
    return _SPACES.sub(" ", s).strip()


@lru_cache(maxsize=1)
def _pinyin() -> Callable[..., list[list[str]]]:
    from pypinyin import Style, pinyin

    def readings(text: str) -> list[list[str]]:
        return pinyin(text, style=Style.TONE3, neutral_tone_with_five=True, errors=lambda x: list(x))

    return readings


def zh_readings(text: str) -> list[str]:
    """One toned pinyin syllable per character of ``text`` (``hui4``), read in context (phrase
    dictionary); a character that is not Chinese stands for itself."""
    out = [r[0] for r in _pinyin()(text)]
    return out if len(out) == len(text) else list(text)


def _same(a: tuple[str, str], b: tuple[str, str]) -> bool:
    return a[0] == b[0] or a[1] == b[1]


def _edit_table(ref: list[tuple[str, str]], hyp: list[tuple[str, str]]) -> list[list[int]]:
    """Levenshtein table where two (character, reading) tokens match when either part is equal."""
    d = [list(range(len(hyp) + 1))]
    for i, r in enumerate(ref, 1):
        row = [i] + [0] * len(hyp)
        for j, h in enumerate(hyp, 1):
            row[j] = min(d[i - 1][j] + 1, row[j - 1] + 1, d[i - 1][j - 1] + (0 if _same(r, h) else 1))
        d.append(row)
    return d


def _zh_tokens(text: str) -> list[tuple[str, str]]:
    return list(zip(text, zh_readings(text), strict=True))


def zh_read_alike(reference: str, hypothesis: str) -> list[tuple[str, str, str]]:
    """(written, heard, reading) for every aligned pair of characters of a zh text and its
    transcript (normalised as for scoring) that differ in writing but not in reading: what
    ``error_rate`` counts as right and ``literal_error_rate`` as wrong."""
    ref = _zh_tokens(normalize_for_scoring(reference, "zh"))
    hyp = _zh_tokens(normalize_for_scoring(hypothesis, "zh"))
    d = _edit_table(ref, hyp)
    out = []
    i, j = len(ref), len(hyp)
    while i and j:
        same = _same(ref[i - 1], hyp[j - 1])
        if d[i][j] == d[i - 1][j - 1] + (0 if same else 1):
            if same and ref[i - 1][0] != hyp[j - 1][0]:
                out.append((ref[i - 1][0], hyp[j - 1][0], ref[i - 1][1]))
            i, j = i - 1, j - 1
        elif d[i][j] == d[i - 1][j] + 1:
            i -= 1
        else:
            j -= 1
    return out[::-1]


def literal_error_rate(reference: str, hypothesis: str, language: str) -> float:
    """Like ``error_rate``, but a Chinese character is right only when it is the same character."""
    return _rate(reference, hypothesis, language, by_sound=False)


def error_rate(reference: str, hypothesis: str, language: str) -> float:
    """CER (zh) or WER (en) of ``hypothesis`` against ``reference`` after normalize_for_scoring.

    Chinese characters that are written differently but read the same, tone included, are not
    errors (see the module's text). An empty reference scores 0 when the hypothesis is empty too,
    else 1. The rate is not capped: insertions can push it above 1.
    """
    return _rate(reference, hypothesis, language, by_sound=True)


def hypothesis_readings(hypothesis: str, language: str) -> list[str]:
    """``hypothesis`` and its rewrites with each reading of the symbols between numbers
    (``OPERATOR_READINGS``): one symbol kind read the same way throughout a hypothesis."""

    error_kind(language)
    text = unicodedata.normalize("NFKC", hypothesis or "")
    variants = [text]
    for kind, pattern in _BETWEEN_DIGITS.items():
        if pattern.search(text):
            variants = [
                pattern.sub(f" {word} " if language == "en" else word, v)
                for v in variants
                for word in OPERATOR_READINGS[language][kind]
            ]
    return [text, *variants] if variants[0] != text else variants


def _rate(reference: str, hypothesis: str, language: str, *, by_sound: bool) -> float:

    return min(
        _rate_one(reference, h, language, by_sound=by_sound)
        for h in hypothesis_readings(hypothesis, language)
    )


def _rate_one(reference: str, hypothesis: str, language: str, *, by_sound: bool) -> float:
    import jiwer

    kind = error_kind(language)
    ref = normalize_for_scoring(reference, language)
    hyp = normalize_for_scoring(hypothesis, language)
    if not ref:
        return 0.0 if not hyp else 1.0
    if not hyp:
        return 1.0
    if kind == "cer":
        if not by_sound or ref == hyp:
            return float(jiwer.cer(ref, hyp))
        return _edit_table(_zh_tokens(ref), _zh_tokens(hyp))[-1][-1] / len(ref)
    return float(jiwer.wer(ref, hyp))


def spoken_chars(text: str, language: str) -> int:
    """How much there is to say, in the unit the speaking-rate bounds use.

    zh: Chinese characters, plus two per Latin word; en: letters and digits, plus three per Chinese
    character. Spaces and punctuation do not count (they are not spoken). The text is expected in
    spoken form (numbers already written as words by the spoken stage).
    """
    error_kind(language)
    text = unicodedata.normalize("NFKC", text or "")
    han = len(_HAN.findall(text))
    if language == "zh":
        digits = sum(ch.isdigit() for ch in text)
        return han + ZH_CHARS_PER_LATIN_WORD * len(_LATIN_WORD.findall(text)) + digits
    return len(_ALNUM.findall(text)) + EN_CHARS_PER_HAN * han
