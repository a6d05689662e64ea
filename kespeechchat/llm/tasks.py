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

Prompts live in ``configs/prompts/{name}_{language}.txt``: ``# `` header lines (the first one is
``# version: N``), the system prompt, a ``--- user ---`` line, the user message template.
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

PROMPTS_ENV = "KESPEECHCHAT_PROMPTS_DIR"
TASKS = ("rewrite", "judge", "spoken")
LANGUAGES = ("zh", "en")
ROLES = ("user", "assistant")
DATA_OPEN = "<dialogue>"
DATA_CLOSE = "</dialogue>"
USER_MARKER = "--- user ---"
JUDGE_LABELS = ("ok", "unsafe", "unclear", "not_speakable")
JUDGE_MAX_TOKENS = 128
JUDGE_NOTE_MAX_CHARS = 160


@dataclass(frozen=True)
class Prompt:
    """A prompt file: system text, user message template and a content hash as version."""

    text: str
    version: str
    user_template: str = "{dialogue}"
    name: str = ""
    language: str = ""


def prompts_dir() -> Path:
    """``$KESPEECHCHAT_PROMPTS_DIR``, else ``<repo>/configs/prompts`` (source checkout or editable install)."""
    env = os.environ.get(PROMPTS_ENV)
    d = Path(env).expanduser() if env else REPO_ROOT / "configs" / "prompts"
    if not d.is_dir():
        raise FileNotFoundError(f"prompt directory {d} not found; set {PROMPTS_ENV} to a copy of configs/prompts")
    return d


def load_prompt(name: str, language: str) -> Prompt:
    """Read ``{name}_{language}.txt`` from ``prompts_dir()``."""
    if name not in TASKS:
        raise ValueError(f"unknown prompt {name!r}; expected one of {TASKS}")
    _check_language(language)
    return _load_prompt_file(str(prompts_dir() / f"{name}_{language}.txt"), name, language)


@functools.lru_cache(maxsize=64)
def _load_prompt_file(path: str, name: str, language: str) -> Prompt:
    raw = Path(path).read_text(encoding="utf-8")
    lines = raw.splitlines()
    if not lines or not re.match(r"#\s*version:\s*\S+", lines[0]):
        raise ValueError(f"{path}: the first line must be '# version: N'")
    while lines and lines[0].startswith("#"):
        lines.pop(0)
    body = "\n".join(lines)
    system, sep, user = body.partition("\n" + USER_MARKER + "\n")
    if not sep:
        raise ValueError(f"{path}: missing the '{USER_MARKER}' line before the user message template")
    if "{dialogue}" not in user:
        raise ValueError(f"{path}: the user message template has no {{dialogue}} placeholder")
    version = hashlib.sha256(raw.encode("utf-8")).hexdigest()[:12]
    return Prompt(text=system.strip(), version=version, user_template=user.strip(), name=name, language=language)


def prompt_versions(language: str) -> dict[str, str]:
    """Versions of all task prompts of a language (for a stage's config hash)."""
    return {name: load_prompt(name, language).version for name in TASKS}


# --- the data block ----------------------------------------------------------------------------


def dialogue_block(roles: Sequence[str], texts: Sequence[str]) -> str:
    """The dialogue as JSON between delimiters; '<' and '>' escaped so the block cannot be closed early."""
    data = json.dumps({"turns": [{"role": r, "text": t} for r, t in zip(roles, texts)]}, ensure_ascii=False)
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


def _messages(name: str, roles: Sequence[str], texts: Sequence[str], language: str,
              values: dict[str, Any]) -> list[dict]:
    _check_dialogue(roles, texts)
    prompt = load_prompt(name, language)
    values = {**values, "n_turns": len(roles)}
    system = _render(prompt.text, values)
    user = _render(prompt.user_template, {**values, "dialogue": "\0"}).replace("\0", dialogue_block(roles, texts))
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


def turns_schema(n_turns: int) -> dict:
    """{"turns": [{"role", "text"}, ...]} with exactly ``n_turns`` items (enforced by grammar where supported)."""
    return {
        "type": "object",
        "properties": {
            "turns": {
                "type": "array",
                "minItems": n_turns,
                "maxItems": n_turns,
                "items": {
                    "type": "object",
                    "properties": {"role": {"type": "string", "enum": list(ROLES)}, "text": {"type": "string"}},
                    "required": ["role", "text"],
                    "additionalProperties": False,
                },
            }
        },
        "required": ["turns"],
        "additionalProperties": False,
    }


def judge_schema() -> dict:
    return {
        "type": "object",
        "properties": {
            "note": {"type": "string", "maxLength": JUDGE_NOTE_MAX_CHARS},
            "label": {"type": "string", "enum": list(JUDGE_LABELS)},
        },
        "required": ["note", "label"],
        "additionalProperties": False,
    }


# --- requests ----------------------------------------------------------------------------------


def rewrite_request(roles: Sequence[str], texts: Sequence[str], language: str, cfg: RewriteConfig) -> dict:
    """Rewrite a dialogue into natural spoken requests and answers of bounded length."""
    limits = {"max_chars": cfg.max_answer_chars_zh, "max_words": cfg.max_answer_words_en}
    return {
        "messages": _messages("rewrite", roles, texts, language, limits),
        "schema": turns_schema(len(roles)),
        "max_tokens": cfg.max_tokens,
    }


def judge_request(roles: Sequence[str], texts: Sequence[str], language: str) -> dict:
    """Ask whether the dialogue is safe, clear and speakable; reply {"note", "label"}."""
    return {
        "messages": _messages("judge", roles, texts, language, {}),
        "schema": judge_schema(),
        "max_tokens": JUDGE_MAX_TOKENS,
    }


def spoken_request(roles: Sequence[str], texts: Sequence[str], language: str, cfg: SpokenConfig) -> dict:
    """Spoken-style pass: assistant turns become conversational; user turns are to be copied unchanged."""
    return {
        "messages": _messages("spoken", roles, texts, language, {}),
        "schema": turns_schema(len(roles)),
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
]
_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
_LATIN = re.compile(r"[A-Za-z]")


def markdown_left(text: str) -> str | None:
    """The kind of written-only markup left in ``text`` (code, lists, URLs, …), or None."""
    for what, pattern in _MARKDOWN:
        if pattern.search(text):
            return what
    return None


def clean_text(text: str) -> str:
    """Drop emphasis markers (not spoken, lossless to remove) and fold line breaks into one line."""
    text = re.sub(r"\*\*|__", "", text)
    return re.sub(r"\s*\n\s*", " ", text).strip()


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
    for i, (turn, role) in enumerate(zip(turns, roles)):
        if not isinstance(turn, dict) or not isinstance(turn.get("text"), str):
            raise ValueError(f"turn {i}: not an object with a text")
        if turn.get("role") != role:
            raise ValueError(f"turn {i}: role {turn.get('role')!r}, expected {role!r}")
        text = clean_text(turn["text"])
        if not text:
            raise ValueError(f"turn {i}: empty text")
        what = markdown_left(turn["text"])
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


def parse_spoken(value: dict, roles: Sequence[str], *, language: str | None = None) -> list[str]:
    """One text per turn (user turns as the model copied them); same checks as ``parse_rewrite``."""
    return _parse_turns(value, roles, language)


def parse_judge(value: dict) -> tuple[bool, str]:
    """(keep, reason code): keep only when the label is "ok"; reason is the label."""
    label = value.get("label") if isinstance(value, dict) else None
    if label not in JUDGE_LABELS:
        raise ValueError(f"judge label {label!r} is not one of {JUDGE_LABELS}")
    return label == "ok", label


# --- checks ------------------------------------------------------------------------------------


def _check_language(language: str) -> None:
    if language not in LANGUAGES:
        raise ValueError(f"language {language!r}: expected one of {LANGUAGES}")


def _check_dialogue(roles: Sequence[str], texts: Sequence[str]) -> None:
    if len(roles) != len(texts) or not roles:
        raise ValueError(f"a dialogue needs as many roles as texts, at least one ({len(roles)} vs {len(texts)})")
    bad = sorted({r for r in roles if r not in ROLES})
    if bad:
        raise ValueError(f"roles {bad}: expected {ROLES}")
