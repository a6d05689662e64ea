"""Cheap rule filters that run before the LLM: drop what cannot be spoken, with a reason.

Each rule looks at the raw turns and returns the first :class:`RuleHit` (reason + a detail that
quotes what matched), so a rejected dialogue always says why. Rules are ordered cheapest and
most certain first; language mismatch (a language-id call per turn) runs last.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from kespeechchat.langid import LANGUAGES, script_counts, turn_languages

if TYPE_CHECKING:
    from kespeechchat.config import FilterConfig

# Part of the text stages' config hash: a rule added or changed reruns them (the LLM's replies are
# cached, so only what the rules now drop or let through costs anything). 2: structured_data.
RULES_VERSION = 2

REASONS = (
    "too_many_turns",
    "language_unsupported",
    "turn_too_short",
    "turn_too_long",
    "code_block",
    "latex",
    "table",
    "url",
    "tool_call",
    "structured_data",
    "template_placeholder",
    "emoji_run",
    "language_mismatch",
)


@dataclass(frozen=True)
class RuleHit:
    """Why a dialogue was dropped: ``reason`` is a stable code, ``detail`` names the turn and the match."""

    reason: str
    detail: str


# --- code ------------------------------------------------------------------------------------
_FENCE = re.compile(r"^\s*(```|~~~)", re.MULTILINE)
_CODE_LINE = re.compile(
    r"""^\s*(?:
        (?:def|class|import|from\s+[\w.]+\s+import|return|elif|else:|try:|except\b|raise|yield|lambda\b)\b
      | \#include\b | \#define\b | package\s+\w | using\s+namespace\b
      | (?:public|private|protected|static|void|int|float|double|char|bool|const|let|var|func|fn)\s+[\w<>\[\]]+\s*[=(;{:]
      | (?:function|async\s+function)\s*\w*\s*\(
      | (?:if|for|while|switch|catch)\s*\(.*\)\s*\{?\s*$
      | (?:for|while|if|with)\s+.*:\s*$
      | print\s*\( | console\.\w+\( | System\.out\. | printf\s*\( | std::
      | (?:SELECT|INSERT\s+INTO|UPDATE|DELETE\s+FROM|CREATE\s+TABLE)\b.*\b(?:FROM|VALUES|SET|WHERE|\()
      | [{}]\s*;?\s*$
      | [\w.\[\]]+\s*(?:=|\+=|-=|==)\s*[\w"'\[({].*;\s*$
      | </?[a-z][\w-]*(?:\s+[\w-]+="[^"]*")*\s*/?>\s*$
      | \w+\(.*\)\s*;\s*$
      | [A-Za-z_][\w.]*(?:\[[^\]\n]*\])?\s*(?:=|\+=|-=)\s*(?:[\[{"']|\d|[A-Za-z_][\w.]*\().*$
      | [A-Za-z_]\w*(?:\.[A-Za-z_]\w*)+\(.*\)\s*$
    )""",
    re.VERBOSE,
)
_MIN_CODE_LINES = 3
_MIN_CODE_SHARE = 0.3

# --- formulas ----------------------------------------------------------------------------------
_LATEX_CMD = re.compile(
    r"\\(?:frac|dfrac|sqrt|sum|prod|int|oint|lim|infty|begin|end|mathbf|mathrm|mathbb|mathcal|text|"
    r"left|right|cdot|times|div|pm|leq|geq|neq|approx|partial|nabla|alpha|beta|gamma|delta|theta|"
    r"lambda|mu|pi|sigma|omega|hat|bar|vec|overline|quad|binom)(?![a-zA-Z])"
)
_DISPLAY_MATH = re.compile(r"\$\$.+?\$\$|\\\[.+?\\\]|\\\(.+?\\\)", re.DOTALL)
# $…$ math, not "$5 and $10": no space inside the dollars, no digit after the closing one, and
# the inside must look like maths (a command, ^, _, braces or =) or be a single variable.
_INLINE_MATH = re.compile(r"(?<![\w$\\])\$(?=\S)([^$\n]{1,200}?)(?<=\S)\$(?![\d$])")
_MATHY = re.compile(r"[\\^_{}=]|^[A-Za-z]$")
# A chemical equation: a formula with a digit ("H2O", "CO2") next to a reaction arrow.
_CHEM = re.compile(r"(?<![\w])(?=[A-Za-z\d]*\d)(?:[A-Z][a-z]?\d*){2,}[+-]?\s*(?:->|→|⟶|⇌|⇋|<=>)\s*\S")

# --- tables ------------------------------------------------------------------------------------
_TABLE_RULE = re.compile(r"^\s*\|?\s*:?-{3,}:?\s*(?:\|\s*:?-{3,}:?\s*)+\|?\s*$", re.MULTILINE)
_TABLE_ROW = re.compile(r"^\s*\|.*\|.*\|\s*$", re.MULTILINE)

# --- links -------------------------------------------------------------------------------------
_URL = re.compile(r"\bhttps?://\S+|\bwww\.[\w-]+(?:\.[\w-]+)+\S*", re.IGNORECASE)

# --- tool calls --------------------------------------------------------------------------------
_TOOL_MARKERS = re.compile(
    r"<tool_call>|</tool_call>|<\|python_tag\|>|<function[=_]|\"(?:tool_calls|function_call)\"\s*:",
    re.IGNORECASE,
)
_JSON_NAME = re.compile(r"[{,]\s*\"name\"\s*:\s*\"[^\"]*\"")
_JSON_ARGS = re.compile(r"[{,]\s*\"(?:arguments|parameters)\"\s*:\s*[{\"]")

# --- structured data ---------------------------------------------------------------------------
# An object literal with at least two quoted keys (JSON, a Python dict, or the same with escaped
# quotes inside a string): '{"name": "John", "age": 25}'. Read aloud it is brace-quote-colon noise,
# and no spoken rewrite of it keeps what the answer is (a data format).
_KEY = r"""\\?["'][^"'\\\n{}]{1,40}\\?["']\s*:"""
_OBJECT = re.compile(rf"""\{{\s*{_KEY}\s*[^\n{{}}]{{1,120}}?,\s*{_KEY}""")

# --- template placeholders ---------------------------------------------------------------------
_PLACEHOLDER = re.compile(
    r"\{\{\s*[^{}\n]{1,60}?\s*\}\}"  # {{var}}
    r"|<[A-Z][A-Z0-9_]*(?:[ _][A-Z0-9_]+)*>"  # <PLACEHOLDER>, <YOUR NAME>
    r"|\[(?:INSERT|YOUR|ENTER|ADD|NAME OF|PLACEHOLDER)\b[^\]\n]{0,60}\]"  # [INSERT …], [Your Name]
    r"|[\[【](?:插入|填写|在此|此处填|请填写|你的名字)[^\]】\n]{0,40}[\]】]"  # [插入…] 【填写…】
    r"|\{[a-z]+(?:_[a-z0-9]+)+\}"  # {customer_name}
    r"|[^\s_＿][ \t]*[_＿]{3,}|[_＿]{3,}[ \t]*[^\s_＿]",  # a fill-in blank "very ____." (not a "___" rule line)
    re.IGNORECASE,
)
_PLACEHOLDER_CASE = re.compile(r"<[A-Z][A-Z0-9_]*(?:[ _][A-Z0-9_]+)*>")  # needs upper case, unlike the rest

# --- emoji -------------------------------------------------------------------------------------
_PICTO = (
    "\U0001f300-\U0001f5ff\U0001f600-\U0001f64f\U0001f680-\U0001f6ff\U0001f900-\U0001f9ff"
    "\U0001fa70-\U0001faff\U0001f7e0-\U0001f7ff\u2600-\u27bf\u2b50\u2b55\u2b1b\u2b1c\u231a\u231b"
    "\u23e9-\u23fa\u2934\u2935\u3030\u303d\u3297\u3299\U0001f004\U0001f0cf\U0001f18e\U0001f191-\U0001f19a"
)
_MOD = "\ufe0f\u20e3\U0001f3fb-\U0001f3ff"
_EMOJI = rf"(?:[\U0001f1e6-\U0001f1ff]{{2}}|[{_PICTO}][{_MOD}]*(?:\u200d[{_PICTO}][{_MOD}]*)*)"
_EMOJI_RUN = re.compile(rf"{_EMOJI}(?:\s*{_EMOJI}){{2,}}")

# A turn shorter than this (letters) is not judged for language mismatch: "OK", "好的", "Yes!"
_MIN_LANGID_LATIN_WORDS = 4
_MIN_LANGID_HAN = 4


def _quote(text: str, start: int, end: int, width: int = 60) -> str:
    return repr(text[start : min(end, start + width)])


# script-like HTML elements: never speech (plain inline tags such as <b> are left to the rewrite)
_MARKUP = re.compile(r"<(?:script|style|iframe|object|embed|svg)\b[^>]*>", re.IGNORECASE)


def has_code(text: str) -> str | None:
    """Where the turn holds code: a ``` fence, a script-like HTML element, or several lines that look like code."""
    m = _FENCE.search(text)
    if m:
        return f"code fence {m.group(1)!r}"
    m = _MARKUP.search(text)
    if m:
        return f"markup {_quote(text, m.start(), m.end())}"
    lines = [ln for ln in text.splitlines() if ln.strip()]
    code = [ln for ln in lines if _CODE_LINE.match(ln)]
    if len(code) >= _MIN_CODE_LINES and len(code) >= _MIN_CODE_SHARE * len(lines):
        return f"{len(code)} of {len(lines)} lines look like code, e.g. {code[0].strip()[:60]!r}"
    return None


def has_latex(text: str) -> str | None:
    for rx in (_LATEX_CMD, _DISPLAY_MATH):
        m = rx.search(text)
        if m:
            return f"formula {_quote(text, m.start(), m.end())}"
    for m in _INLINE_MATH.finditer(text):
        if _MATHY.search(m.group(1)):
            return f"inline math {_quote(text, m.start(), m.end())}"
    m = _CHEM.search(text)
    if m:
        return f"chemical equation {_quote(text, m.start(), m.end() + 20)}"
    return None


def has_table(text: str) -> str | None:
    m = _TABLE_RULE.search(text)
    if m:
        return f"markdown table rule {_quote(text, m.start(), m.end())}"
    rows = _TABLE_ROW.findall(text)
    if len(rows) >= 3:
        return f"{len(rows)} table rows, e.g. {rows[0].strip()[:60]!r}"
    return None


def has_url(text: str) -> str | None:
    m = _URL.search(text)
    return f"link {_quote(text, m.start(), m.end())}" if m else None


def has_tool_call(text: str) -> str | None:
    m = _TOOL_MARKERS.search(text)
    if m:
        return f"tool-call marker {m.group(0)!r}"
    n, a = _JSON_NAME.search(text), _JSON_ARGS.search(text)
    if n and a:
        s = min(n.start(), a.start())
        return f"function-call JSON {_quote(text, s, s + 80)}"
    return None


def has_structured_data(text: str) -> str | None:
    m = _OBJECT.search(text)
    return f"object literal {_quote(text, m.start(), m.end())}" if m else None


def has_placeholder(text: str) -> str | None:
    for m in _PLACEHOLDER.finditer(text):
        s = m.group(0)
        if s.startswith("<") and not _PLACEHOLDER_CASE.fullmatch(s):
            continue  # <div>, <br>: html, not a placeholder (and lower case is not a placeholder)
        return f"placeholder {s[:60]!r}"
    return None


def has_emoji_run(text: str) -> str | None:
    m = _EMOJI_RUN.search(text)
    return f"emoji run {m.group(0)[:30]!r}" if m else None


CONTENT_RULES: tuple[tuple[str, Callable[[str], str | None]], ...] = (
    ("code_block", has_code),
    ("latex", has_latex),
    ("table", has_table),
    ("url", has_url),
    ("tool_call", has_tool_call),
    ("structured_data", has_structured_data),
    ("template_placeholder", has_placeholder),
    ("emoji_run", has_emoji_run),
)


def _judgeable(text: str) -> bool:
    """Long enough for language id to mean something."""
    c = script_counts(text)
    return (
        c["han"] >= _MIN_LANGID_HAN
        or c["latin_words"] >= _MIN_LANGID_LATIN_WORDS
        or c["kana"] + c["hangul"] >= 2
    )


def check_dialogue(
    roles: Sequence[str], texts: Sequence[str], language: str, cfg: FilterConfig
) -> RuleHit | None:
    """The first rule that drops this dialogue, or None when it may go on to the LLM."""
    if len(roles) != len(texts):
        raise ValueError(f"{len(roles)} roles but {len(texts)} texts")
    if len(texts) > cfg.max_turns:
        return RuleHit("too_many_turns", f"{len(texts)} turns > max_turns {cfg.max_turns}")
    if language not in LANGUAGES:
        return RuleHit(
            "language_unsupported", f"dialogue language {language!r} is not one of {'/'.join(LANGUAGES)}"
        )
    max_chars = cfg.max_turn_chars_zh if language == "zh" else cfg.max_turn_chars_en
    for i, t in enumerate(texts):
        n = len(t.strip())
        if n < cfg.min_turn_chars:
            return RuleHit(
                "turn_too_short", f"turn {i} ({roles[i]}) has {n} chars < min_turn_chars {cfg.min_turn_chars}"
            )
        if n > max_chars:
            return RuleHit(
                "turn_too_long",
                f"turn {i} ({roles[i]}) has {n} chars > max_turn_chars_{language} {max_chars}",
            )
    for reason, rule in CONTENT_RULES:
        for i, t in enumerate(texts):
            detail = rule(t)
            if detail:
                return RuleHit(reason, f"turn {i} ({roles[i]}): {detail}")
    for i, (t, lang) in enumerate(zip(texts, turn_languages(list(texts)), strict=True)):
        if lang != language and _judgeable(t):
            return RuleHit(
                "language_mismatch", f"turn {i} ({roles[i]}) is {lang!r} in a {language!r} dialogue"
            )
    return None
