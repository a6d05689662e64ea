"""What may reach the TTS: the guards of the spoken stage.

- ``drop_glosses``: a Chinese turn says a name once, not with its English spelling in brackets
  (``巴西利斯克（Basilisk）`` → ``巴西利斯克``); an English turn drops a bracketed CJK gloss. A name doubled
  around the middle dot (``纳尔逊·曼德拉·曼德拉``) is said once.
- ``markup``: list markers, markdown and HTML never reach the TTS; the first one found is the reason.
- ``drift``: the spoken-style pass must say what its input said, in other words: a sentence whose
  content is not in the input (``…我理解了你的意思！``), or an input sentence whose content is gone, is
  drift. Content is compared on characters (zh) or words (en) after both sides were normalised, so
  numbers said as words do not count as new content.

Each returns a short detail that names the turn and quotes the fragment, so a re-ask, a fallback or a
reject always says why.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from kespeechchat.langid import HAN_RANGES as _HAN
from kespeechchat.textnorm import normalize

_CJK_RE = re.compile(f"[{_HAN}\u3040-\u30ff\uac00-\ud7af]")
_LATIN_RE = re.compile(r"[A-Za-z]")

# A bracketed group: full-width or ASCII brackets, no nesting, one line.
_PAREN = re.compile(r"\s*[（(]([^（）()\n]{1,80})[）)]")
_NAME_RUN = re.compile(f"[{_HAN}]+(?:·[{_HAN}]+)+")


def _is_gloss(inner: str, language: str) -> bool:
    if language == "zh":
        return not _CJK_RE.search(inner) and bool(_LATIN_RE.search(inner))
    return bool(_CJK_RE.search(inner)) and not _LATIN_RE.search(inner)


def drop_glosses(text: str, language: str) -> tuple[str, int]:
    """``text`` without bracketed glosses in the other script and doubled ·-names; and how many were dropped."""
    n = 0

    def paren(m: re.Match) -> str:
        nonlocal n
        if _is_gloss(m.group(1), language):
            n += 1
            return ""
        return m.group(0)

    text = _PAREN.sub(paren, text)
    if language == "zh":

        def names(m: re.Match) -> str:
            nonlocal n
            parts = m.group(0).split("·")
            out = [parts[0]]
            for p in parts[1:]:
                prev = out[-1].split("·")[-1] if out else ""
                if p == prev or (len(prev) >= 2 and p.startswith(prev)):
                    n += 1
                    out[-1] = out[-1] + p[len(prev) :]  # keep what follows the repeated name
                    continue
                out.append(p)
            return "·".join(out)

        text = _NAME_RUN.sub(names, text)
    return text, n


_MARKUP_RULES: tuple[tuple[str, re.Pattern], ...] = (
    (
        "list_marker",
        re.compile(r"(?:^|\n)\s*(?:[-*•▪●◦‣]|\d{1,2}[.)、](?!\d)|[一二三四五六七八九十]{1,2}、)\s*\S"),
    ),
    ("list_marker", re.compile(r"[。！？!?.：:；;」”\"]\s*[-*•▪●◦‣]\s+\S")),
    (
        "markdown",
        re.compile(
            r"\*\*[^*\n]+\*\*|__[^_\n]+__|`[^`\n]+`|(?:^|\n)\s*#{1,6}\s|(?:^|\n)\s*>\s|\[[^\]\n]+\]\([^)\n]*\)"
        ),
    ),
    ("html", re.compile(r"</?[A-Za-z][\w-]*(?:\s[^<>]*)?>")),
    ("symbols", re.compile(r"[*#|{}\[\]\\]")),
)


def markup(text: str) -> str | None:
    """The first list marker, markdown, HTML or unspeakable symbol in ``text``, as ``kind: «fragment»``."""
    for kind, pattern in _MARKUP_RULES:
        m = pattern.search(text)
        if m:
            a, b = max(0, m.start() - 12), min(len(text), m.end() + 12)
            return f"{kind}: «{text[a:b].strip()}»"
    return None


# --- drift -------------------------------------------------------------------------------------
_SENTENCE_END = re.compile(r"(?<=[。！？!?；;])|(?<=[.])(?=\s)|\n+")
_EN_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")
# Words a spoken-style pass may add or drop freely (connectors, fillers, pronouns, function words).
_EN_FREE = frozenset(
    """a an the and or but so well actually basically really just also then now yes no oh okay ok right sure
    i you he she it we they me him her us them my your his its our their this that these those there here
    is are was were be been being am do does did have has had will would can could should may might must
    of to in on at by for with from as about into than too very quite pretty kind sort like not s ll ve re d
    what which who how when where why if because""".split()
)
_ZH_FREE = frozenset("的了是在和就都也还而且那么其实对吧呢啊呀嘛哦嗯这那个们我你他她它吗么一有不很")
MIN_SENTENCE_UNITS = 4  # shorter sentences ("好的。", "Sure.") are connectors, never drift
DRIFT_COVERAGE = 0.34  # a sentence with less than this share of its content in the other side is new / gone
# a spoken turn longer than its source by more than this share of the source's content units (and
# at least GROWTH_MIN_UNITS) restates or adds: e.g. a closing sentence made of the turn's own words
GROWTH_SHARE = 0.2
GROWTH_MIN_UNITS = 8


def _units(text: str, language: str) -> list[str]:
    if language == "zh":
        return [c for c in text if (_CJK_RE.match(c) and c not in _ZH_FREE) or c.isdigit()]
    return [w for w in _EN_WORD.findall(text.lower()) if w not in _EN_FREE]


def _sentences(text: str) -> list[str]:
    return [s.strip() for s in _SENTENCE_END.split(text) if s and s.strip()]


def _uncovered(text: str, other: str, language: str) -> list[str]:
    """Sentences of ``text`` whose content units are mostly absent from ``other``."""
    pool = set(_units(other, language))
    found = []
    for s in _sentences(text):
        units = _units(s, language)
        if len(units) < MIN_SENTENCE_UNITS:
            continue
        share = sum(1 for u in units if u in pool) / len(units)
        if share < DRIFT_COVERAGE:
            found.append(s)
    return found


def drift(source: str, spoken: str, language: str) -> str | None:
    """Why ``spoken`` does not say what ``source`` said (a sentence added or dropped), or None.

    Both texts should be normalised the same way first (numbers as words on both sides)."""
    added = _uncovered(spoken, source, language)
    if added:
        return f"added «{added[0][:60]}»"
    n_src, n_out = len(_units(source, language)), len(_units(spoken, language))
    if n_out - n_src > max(GROWTH_MIN_UNITS, GROWTH_SHARE * n_src):
        tail = _sentences(spoken)[-1] if _sentences(spoken) else spoken
        return f"longer by {n_out - n_src} content units than its source (ends «{tail[:60]}»)"
    dropped = _uncovered(source, spoken, language)
    if dropped:
        return f"dropped «{dropped[0][:60]}»"
    return None


def check_turns(
    roles: Sequence[str], sources: Sequence[str], spoken: Sequence[str], language: str
) -> tuple[str, str] | None:
    """(reason, detail) for the first assistant turn with markup or drift, or None. Texts as sent to TTS."""
    for i, (role, src, out) in enumerate(zip(roles, sources, spoken, strict=True)):
        hit = markup(out)
        if hit:
            return "spoken_markup", f"turn {i}: {hit}"
        if role != "user":
            d = drift(src, out, language)
            if d:
                return "spoken_drift", f"turn {i}: {d}"
    return None


def finish_spoken(texts: Sequence[str], language: str) -> tuple[list[str], int]:
    """Glosses dropped, then text normalisation: the texts the TTS reads; and the glosses dropped."""

    out, n = [], 0
    for t in texts:
        t, k = drop_glosses(t, language)
        n += k
        out.append(normalize(t, language).strip())
    return out, n


def guard_spoken(
    roles: Sequence[str], rewritten: Sequence[str], reply: Sequence[str], language: str
) -> tuple[list[str], str]:
    """The turns to speak and a note, for one spoken-style reply without a second ask: the reply
    finished (``finish_spoken``) when it has no markup and did not drift from the rewrite, else the
    rule-finished rewrite with ``fallback_to_rewrite: <reason>`` as the note."""
    source = finish_spoken(rewritten, language)[0]
    done = finish_spoken(reply, language)[0]
    hit = check_turns(roles, source, done, language)
    if hit:
        return source, f"fallback_to_rewrite: {hit[0]}: {hit[1]}"[:500]
    return done, ""
