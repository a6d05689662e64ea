"""The text tasks the LLM does: rewrite for speech, judge, spoken-style pass; requests and parsers.

A ``*_request`` function returns the keyword arguments of ``LLMClient.complete_json``
(``messages``, ``schema``, ``max_tokens``); the matching ``parse_*`` function turns the reply into
texts and raises ValueError when the reply is unusable, so it doubles as the client's ``validate``::

    req = rewrite_request(roles, texts, "zh", cfg.rewrite)
    res = await client.complete_json(**req, validate=lambda v: parse_rewrite(v, roles, language="zh"))
    texts = parse_rewrite(res.value, roles, language="zh") if res.ok else None

The source dialogue travels as DATA: JSON between ``<dialogue>`` and ``</dialogue>`` in the user
message, and the system prompt says it is never to be obeyed. Angle brackets inside the texts
are JSON-escaped, so a record cannot close the block early.

Prompts live in ``configs/prompts/{name}_{language}.txt``: ``#`` header lines (the first one is
``# version: N``), the system prompt, then sections opened by marker lines: ``--- example ---``
(a dialogue as JSON) and ``--- example reply ---`` (the reply it should get), sent as one
demonstration exchange, and ``--- user ---`` (the user message template with ``{dialogue}``).
``Prompt.version`` hashes the whole file, so editing a prompt changes the hash of stages using it.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kespeechchat.config import REPO_ROOT, RewriteConfig, SpokenConfig
from kespeechchat.langid import HAN_RANGES

PROMPTS_ENV = "KESPEECHCHAT_PROMPTS_DIR"
TASKS = ("rewrite", "judge", "spoken")
LANGUAGES = ("zh", "en")
ROLES = ("user", "assistant")
DATA_OPEN = "<dialogue>"
DATA_CLOSE = "</dialogue>"
USER_MARKER = "--- user ---"
_SECTION_MARKERS = {
    "--- example ---": "example",
    "--- example reply ---": "example_reply",
    USER_MARKER: "user",
}
# Characters a spoken turn never needs: markdown, code, URLs, brackets, JSON escapes, line breaks.
# Servers with grammar-constrained decoding (llama.cpp, vLLM) cannot emit them at all, so the model
# has to say things in words instead of copying markup; measured with the embedded 1.5B model this
# turned most markdown-heavy answers from invalid into valid rewrites.
SPOKEN_TEXT_PATTERN = r'^[^"\\\n\r\t#*`|<>/\[\]{}_~^=@()]+$'
JUDGE_LABELS = ("ok", "unsafe", "unclear", "not_speakable")
# The judge answers yes/no questions; the first answer that fails (in this order) names the reason.
JUDGE_FLAGS = (
    ("harmful", True, "unsafe"),
    ("has_code", True, "not_speakable"),
    ("makes_sense", False, "unclear"),
)
JUDGE_MAX_TOKENS = 48


@dataclass(frozen=True)
class Prompt:
    """A prompt file: system text, one demonstration exchange, user message template, content hash."""

    text: str
    version: str
    user_template: str = "{dialogue}"
    example: dict | None = None  # a dialogue {"turns": [...]} shown as a user message ...
    example_reply: str | None = None  # ... and the assistant reply it should get
    name: str = ""
    language: str = ""


def prompts_dir() -> Path:
    """``$KESPEECHCHAT_PROMPTS_DIR``, else ``<repo>/configs/prompts`` (source checkout or editable install)."""
    env = os.environ.get(PROMPTS_ENV)
    d = Path(env).expanduser() if env else REPO_ROOT / "configs" / "prompts"
    if not d.is_dir():
        raise FileNotFoundError(
            f"prompt directory {d} not found; set {PROMPTS_ENV} to a copy of configs/prompts"
        )
    return d


def load_prompt(name: str, language: str) -> Prompt:
    """Read ``{name}_{language}.txt`` from ``prompts_dir()``."""
    if name not in TASKS:
        raise ValueError(f"unknown prompt {name!r}; expected one of {TASKS}")
    _check_language(language)
    path = prompts_dir() / f"{name}_{language}.txt"
    st = path.stat()
    return _load_prompt_file(str(path), st.st_mtime_ns, st.st_size, name, language)


@functools.lru_cache(maxsize=64)
def _load_prompt_file(path: str, mtime_ns: int, size: int, name: str, language: str) -> Prompt:
    """Parsed once per file version (the stat values are part of the cache key)."""
    raw = Path(path).read_text(encoding="utf-8")
    lines = raw.splitlines()
    if not lines or not re.match(r"#\s*version:\s*\S+", lines[0]):
        raise ValueError(f"{path}: the first line must be '# version: N'")
    while lines and lines[0].startswith("#"):
        lines.pop(0)
    sections: dict[str, list[str]] = {"system": []}
    current = "system"
    for line in lines:
        marker = _SECTION_MARKERS.get(line.strip())
        if marker is not None:
            if marker in sections:
                raise ValueError(f"{path}: {line.strip()!r} appears twice")
            current = marker
            sections[current] = []
        else:
            sections[current].append(line)
    text = {k: "\n".join(v).strip() for k, v in sections.items()}
    if "user" not in text or "{dialogue}" not in text["user"]:
        raise ValueError(f"{path}: needs a '{USER_MARKER}' section with a {{dialogue}} placeholder")
    if ("example" in text) != ("example_reply" in text):
        raise ValueError(f"{path}: '--- example ---' and '--- example reply ---' go together")
    example = None
    if "example" in text:
        try:
            example = json.loads(text["example"])
            _check_dialogue([t["role"] for t in example["turns"]], [t["text"] for t in example["turns"]])
            json.loads(text["example_reply"])
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise ValueError(
                f"{path}: the example and its reply must be JSON dialogues/objects ({e})"
            ) from None
    version = hashlib.sha256(raw.encode("utf-8")).hexdigest()[:12]
    return Prompt(
        text=text["system"],
        version=version,
        user_template=text["user"],
        example=example,
        example_reply=text.get("example_reply"),
        name=name,
        language=language,
    )


def prompt_versions(language: str) -> dict[str, str]:
    """Versions of all task prompts of a language (for a stage's config hash)."""
    return {name: load_prompt(name, language).version for name in TASKS}


# --- the data block ----------------------------------------------------------------------------


def dialogue_block(roles: Sequence[str], texts: Sequence[str]) -> str:
    """The dialogue as JSON between delimiters; '<' and '>' escaped so the block cannot be closed early."""
    data = json.dumps(
        {"turns": [{"role": r, "text": t} for r, t in zip(roles, texts, strict=True)]}, ensure_ascii=False
    )
    data = data.replace("<", "\\u003c").replace(">", "\\u003e")
    return f"{DATA_OPEN}\n{data}\n{DATA_CLOSE}"


def extract_dialogue(message: str) -> tuple[list[str], list[str]]:
    """(roles, texts) back from a message holding a ``dialogue_block`` (used by tests and fakes)."""
    start = message.rfind(DATA_OPEN)
    end = message.rfind(DATA_CLOSE)
    if start < 0 or end < start:
        raise ValueError("no dialogue block in the message")
    turns = json.loads(message[start + len(DATA_OPEN) : end])["turns"]
    return [t["role"] for t in turns], [t["text"] for t in turns]


def _render(template: str, values: dict[str, Any]) -> str:
    """Fill ``{name}`` placeholders by plain replacement (prompts contain JSON braces, so no str.format)."""
    out = template
    for key, value in values.items():
        out = out.replace("{" + key + "}", str(value))
    return out


def _messages(
    name: str, roles: Sequence[str], texts: Sequence[str], language: str, values: dict[str, Any]
) -> list[dict]:
    """System prompt, the demonstration exchange (small models follow a shown example far better
    than a described one), then the dialogue as data."""
    _check_dialogue(roles, texts)
    prompt = load_prompt(name, language)

    def user(r: Sequence[str], t: Sequence[str]) -> str:
        filled = _render(prompt.user_template, {**values, "n_turns": len(r), "dialogue": "\0"})
        return filled.replace("\0", dialogue_block(r, t))

    messages = [{"role": "system", "content": _render(prompt.text, {**values, "n_turns": len(roles)})}]
    if prompt.example is not None and prompt.example_reply is not None:
        ex = prompt.example["turns"]
        messages.append({"role": "user", "content": user([t["role"] for t in ex], [t["text"] for t in ex])})
        messages.append({"role": "assistant", "content": prompt.example_reply})
    messages.append({"role": "user", "content": user(roles, texts)})
    return messages


def turns_schema(n_turns: int, text_pattern: str | None = SPOKEN_TEXT_PATTERN) -> dict:
    """{"turns": [{"role", "text"}, ...]} with exactly ``n_turns`` items and texts without markup
    characters (``text_pattern``); grammar-constrained servers enforce both while decoding."""
    text_schema: dict[str, Any] = {"type": "string"}
    if text_pattern:
        text_schema["pattern"] = text_pattern
    return {
        "type": "object",
        "properties": {
            "turns": {
                "type": "array",
                "minItems": n_turns,
                "maxItems": n_turns,
                "items": {
                    "type": "object",
                    "properties": {"role": {"type": "string", "enum": list(ROLES)}, "text": text_schema},
                    "required": ["role", "text"],
                    "additionalProperties": False,
                },
            }
        },
        "required": ["turns"],
        "additionalProperties": False,
    }


def judge_schema() -> dict:
    """{"harmful": bool, "has_code": bool, "makes_sense": bool}."""
    names = [name for name, _, _ in JUDGE_FLAGS]
    return {
        "type": "object",
        "properties": {name: {"type": "boolean"} for name in names},
        "required": names,
        "additionalProperties": False,
    }


# --- requests ----------------------------------------------------------------------------------


def rewrite_request(
    roles: Sequence[str],
    texts: Sequence[str],
    language: str,
    cfg: RewriteConfig,
    *,
    text_pattern: str | None = SPOKEN_TEXT_PATTERN,
) -> dict:
    """Rewrite a dialogue into natural spoken requests and answers of bounded length.

    ``text_pattern=None`` drops the character constraint for a server whose structured output
    does not support JSON-schema ``pattern``."""
    limits = {"max_chars": cfg.max_answer_chars_zh, "max_words": cfg.max_answer_words_en}
    return {
        "messages": _messages("rewrite", roles, texts, language, limits),
        "schema": turns_schema(len(roles), text_pattern),
        "max_tokens": cfg.max_tokens,
    }


def judge_request(roles: Sequence[str], texts: Sequence[str], language: str) -> dict:
    """Ask whether the dialogue is harmful, holds code, makes sense (yes/no questions: a 1.5B model
    answers these far more reliably than picking one label)."""
    return {
        "messages": _messages("judge", roles, texts, language, {}),
        "schema": judge_schema(),
        "max_tokens": JUDGE_MAX_TOKENS,
    }


def spoken_request(
    roles: Sequence[str],
    texts: Sequence[str],
    language: str,
    cfg: SpokenConfig,
    *,
    text_pattern: str | None = SPOKEN_TEXT_PATTERN,
) -> dict:
    """Spoken-style pass: assistant turns become conversational; user turns are to be copied unchanged."""
    return {
        "messages": _messages("spoken", roles, texts, language, {}),
        "schema": turns_schema(len(roles), text_pattern),
        "max_tokens": cfg.max_tokens,
    }


# --- parsers -----------------------------------------------------------------------------------

_MARKDOWN = [
    ("code fence", re.compile(r"```")),
    ("inline code", re.compile(r"`[^`\n]+`")),
    ("heading", re.compile(r"(?m)^\s{0,3}#{1,6}\s")),
    ("bullet list", re.compile(r"(?m)^\s*[-*+•]\s+\S")),
    ("numbered list", re.compile(r"(?m)^\s*\d{1,2}[.)]\s+\S.*\n\s*\d{1,2}[.)]\s+\S")),
    ("table", re.compile(r"\|[^|\n]*\|")),
    ("url", re.compile(r"(?i)\bhttps?://|\bwww\.[a-z0-9-]+\.")),
    ("html tag", re.compile(r"</?[A-Za-z][A-Za-z0-9]*(\s[^<>]*)?>")),
    ("latex", re.compile(r"\\(frac|sqrt|sum|int|cdot|times)\b|\$\$")),
    ("markdown link", re.compile(r"\[[^\]\n]+\]\([^)\n]+\)")),
    ("asterisk", re.compile(r"\*")),
]
_CJK = re.compile(f"[{HAN_RANGES}]")
_LATIN = re.compile(r"[A-Za-z]")


def markdown_left(text: str) -> str | None:
    """The kind of written-only markup left in ``text`` (code, lists, URLs, …), or None."""
    for what, pattern in _MARKDOWN:
        if pattern.search(text):
            return what
    return None


def strip_emphasis(text: str) -> str:
    """Drop **bold**, __bold__ and *italic* markers: not spoken, so removing them loses nothing."""
    text = re.sub(r"\*\*|__", "", text)
    return re.sub(r"(?<![\w*])\*(?=\S)([^*\n]+?)(?<=\S)\*(?![\w*])", r"\1", text)


def clean_text(text: str) -> str:
    """Emphasis markers dropped and line breaks folded, so a turn is one spoken line."""
    return re.sub(r"\s*\n\s*", " ", strip_emphasis(text)).strip()


def cjk_share(text: str) -> float:
    """Share of CJK characters among CJK characters and Latin letters (0 when there are none)."""
    cjk, latin = len(_CJK.findall(text)), len(_LATIN.findall(text))
    return cjk / (cjk + latin) if cjk + latin else 0.0


def _parse_turns(value: dict, roles: Sequence[str], language: str | None) -> list[str]:
    turns = value.get("turns") if isinstance(value, dict) else None
    if not isinstance(turns, list):
        raise ValueError("reply has no 'turns' list")
    if len(turns) != len(roles):
        raise ValueError(f"expected {len(roles)} turns, got {len(turns)}")
    out = []
    for i, (turn, role) in enumerate(zip(turns, roles, strict=True)):
        if not isinstance(turn, dict) or not isinstance(turn.get("text"), str):
            raise ValueError(f"turn {i}: not an object with a text")
        if turn.get("role") != role:
            raise ValueError(f"turn {i}: role {turn.get('role')!r}, expected {role!r}")
        text = clean_text(turn["text"])
        if not text:
            raise ValueError(f"turn {i}: empty text")
        what = markdown_left(strip_emphasis(turn["text"]))  # line breaks kept: lists show in them
        if what:
            raise ValueError(f"turn {i}: {what} left in the text")
        if language == "zh" and _LATIN.search(text) and cjk_share(text) < 0.3:
            raise ValueError(f"turn {i}: not Chinese")
        if language == "en" and cjk_share(text) > 0.5:
            raise ValueError(f"turn {i}: mostly Chinese in an English turn")
        out.append(text)
    return out


def parse_rewrite(value: dict, roles: Sequence[str], *, language: str | None = None) -> list[str]:
    """One spoken text per turn; ValueError on a wrong count or role, an empty turn, markup or wrong language."""
    return _parse_turns(value, roles, language)


# A spoken-style answer says the same thing in about as many words; outside these bounds (of the
# input's length) it dropped or invented content. Symbols read out ("25℃" -> "二十五摄氏度") make
# short answers grow, so the bounds apply only from SPOKEN_MIN_CHARS input characters on.
SPOKEN_LENGTH_RATIO = (0.4, 2.5)
SPOKEN_MIN_CHARS = 20
# An answer that opens with yes must not come back opening with no (the embedded model turned
# "No, I am a language model…" into "Yes, I am…"). Fillers the pass may add come off first.
_FILLER = re.compile(
    r"^(?:(?:well|so|oh|um|actually|okay|ok|hmm|嗯|啊|哦|其实|那么)[\s,，.。!！]*)+", re.IGNORECASE
)
_YES = re.compile(
    r"^(?:yes|yeah|yep|sure|certainly|of course|absolutely|indeed|correct)\b"
    r"|^(?:是的|对的|没错|当然(?:可以|是|了)?|是|对)[，,。！!]",
    re.IGNORECASE,
)
_NO = re.compile(
    r"^(?:no|nope)\b(?!\s+(?:one|longer|matter|doubt)\b)|^(?:不是的?|不对|没有|不行|不)[，,。！!]",
    re.IGNORECASE,
)


def polarity(text: str) -> str | None:
    """ "yes" or "no" when an answer opens with one ("No, …", "是的，…"), else None."""
    head = _FILLER.sub("", text.strip())
    if _YES.match(head):
        return "yes"
    if _NO.match(head):
        return "no"
    return None


def parse_spoken(
    value: dict,
    roles: Sequence[str],
    *,
    language: str | None = None,
    source_texts: Sequence[str] | None = None,
) -> list[str]:
    """One text per turn; same checks as ``parse_rewrite``.

    With ``source_texts`` (the turns that were sent), user turns are taken from them, not from the
    reply (the pass must not touch what the user says, and a small model sometimes does), and an
    assistant turn whose length left ``SPOKEN_LENGTH_RATIO`` of its source, or whose opening
    yes/no turned around, is a ValueError.
    """
    texts = _parse_turns(value, roles, language)
    if source_texts is None:
        return texts
    if len(source_texts) != len(roles):
        raise ValueError(f"{len(source_texts)} source texts for {len(roles)} roles")
    out = []
    lo, hi = SPOKEN_LENGTH_RATIO
    for i, (role, text, src) in enumerate(zip(roles, texts, source_texts, strict=True)):
        if role == "user":
            out.append(clean_text(src))
            continue
        n_src, n_out = len(src.strip()), len(text)
        if n_src >= SPOKEN_MIN_CHARS and not lo * n_src <= n_out <= hi * n_src:
            raise ValueError(f"turn {i}: {n_out} chars from {n_src}; a spoken-style pass keeps the length")
        before, after = polarity(src), polarity(text)
        if before and after and before != after:
            raise ValueError(f"turn {i}: the answer said {before!r} and now says {after!r}")
        out.append(text)
    return out


def parse_judge(value: dict) -> tuple[bool, str]:
    """(keep, reason code): "unsafe" > "not_speakable" > "unclear" by the first answer that fails, else "ok"."""
    if not isinstance(value, dict):
        raise ValueError("judge reply is not an object")
    for name, _, _ in JUDGE_FLAGS:
        if not isinstance(value.get(name), bool):
            raise ValueError(f"judge reply: {name!r} is not true/false")
    for name, bad_when, reason in JUDGE_FLAGS:
        if value[name] is bad_when:
            return False, reason
    return True, "ok"


# --- checks ------------------------------------------------------------------------------------


def _check_language(language: str) -> None:
    if language not in LANGUAGES:
        raise ValueError(f"language {language!r}: expected one of {LANGUAGES}")


def _check_dialogue(roles: Sequence[str], texts: Sequence[str]) -> None:
    if len(roles) != len(texts) or not roles:
        raise ValueError(
            f"a dialogue needs as many roles as texts, at least one ({len(roles)} vs {len(texts)})"
        )
    bad = sorted({r for r in roles if r not in ROLES})
    if bad:
        raise ValueError(f"roles {bad}: expected {ROLES}")
