"""Ingest: read text dialogues (Alpaca, ShareGPT, OpenAI messages) into the dialogue schema.

Every record read ends up either as one dialogue row or as one :class:`IngestReject` with a
stable snake_case reason, so the counts always add up: records = rows + rejects, per file.

Choices made here (and tested):

- Roles become "user"/"assistant". A leading system message is dropped (it is not spoken) and
  counted as ``system_dropped``; a system message anywhere else is ``bad_turn_order``.
- A dialogue must start with a user turn and alternate. A trailing user turn (a question without
  an answer) is dropped and counted as ``trailing_user_dropped``; if nothing is left, the record
  is rejected as ``no_turns``. Two turns of the same role in a row are ``bad_turn_order`` (never
  merged: merging would invent a turn nobody wrote).
- Texts are NFC-normalised, CRLF becomes LF, and leading/trailing whitespace is stripped, as are
  the button labels scraped chat logs carry at the end of a turn ("Share Prompt", "지금 번역하기")
  and Alpaca's "<noinput>" markers; an empty text is ``empty_turn``.
- ``dialogue_id`` is a content hash of the normalised turns, so the same dialogue gets the same
  id in every run and duplicates (within a file or across sources) are found by id.
- With a :class:`~kespeechchat.dedup.Deduper`, duplicates are also found after text
  normalisation, and near-duplicates by MinHash; all of them are rejected as ``duplicate`` with the
  record they repeat in the detail. This happens before sampling, so ``limit`` counts distinct
  dialogues. As with ids, a record is compared with the earlier records of its own file and with
  the rows kept from earlier sources.
"""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kespeechchat.langid import detect_dialogue_language
from kespeechchat.schema import INGEST_COLUMNS, INGEST_REJECT_SCHEMA

if TYPE_CHECKING:
    import pyarrow as pa

    from kespeechchat.config import SourceConfig
    from kespeechchat.dedup import Deduper, Signature

FORMATS = ("alpaca", "sharegpt", "openai", "firefly", "preference", "self_instruct", "mapped")
EXTENSIONS = (".json", ".jsonl", ".parquet")
# compressed files are recognised by their first bytes, whatever their name says
_MAGIC = {b"\x1f\x8b": "gzip", b"\x28\xb5\x2f\xfd": "zstd"}
_COMPRESSED_SUFFIXES = (".gz", ".zst", ".zstd")
EXCERPT_CHARS = 300

ROW_KEYS = INGEST_COLUMNS

REASONS = (
    "bad_json",
    "invalid_utf8",
    "not_an_object",
    "unknown_format",
    "missing_field",
    "wrong_type",
    "empty_turn",
    "unknown_role",
    "tool_call",
    "non_text_content",
    "bad_turn_order",
    "no_turns",
    "duplicate",
    "not_sampled",
    "unreadable_file",
)

SHAREGPT_ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "chatgpt": "assistant",
    "system": "system",
}
OPENAI_ROLES = {"user": "user", "assistant": "assistant", "system": "system"}
# turns of tool use (OpenAI, ShareGPT/LLaMA-Factory, ChatGLM): a dialogue with them is not a spoken one
TOOL_ROLES = frozenset(
    {"tool", "function", "function_call", "observation", "ipython", "tool_call", "tool_response"}
)
TEXT_PART_TYPES = frozenset({"text", "input_text", "output_text"})
MEDIA_KEYS = ("images", "videos", "audios", "image", "video", "audio")
# parts that are the model's private reasoning, not what it says: left out of the spoken turn
SILENT_PART_TYPES = frozenset({"reasoning", "thinking"})
TOOL_PART_TYPES = frozenset({"tool_call", "tool_use", "tool_result", "tool_response", "function_call"})
# Button labels that scraped chat logs (ShareGPT) carry at the end of a turn: "Share Prompt", and
# a browser translator's "지금 번역하기" ("translate now"), which made English turns look Korean.
_SCRAPE_TAIL = re.compile(r"(?:\s*(?:지금 번역하기|번역결과|Share Prompt|Copy to Clipboard))+$")
_NO_INPUT = re.compile(r"^[`'\"]*<?\s*no[\s_-]?input\s*>?[`'\"]*$", re.IGNORECASE)


class RecordError(ValueError):
    """A record that cannot become a dialogue; ``reason`` is one of :data:`REASONS`."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class IngestReject:
    """One record (or one whole file) that did not become a dialogue, and why."""

    source_file: str
    record_index: int | None
    reason: str
    detail: str
    raw_excerpt: str

    def to_row(self) -> dict[str, Any]:
        """Row for the ingest ``rejected/`` table (reason and detail named like the schema's reject columns)."""
        return {
            "source_file": self.source_file,
            "record_index": self.record_index,
            "reject_stage": "ingest",
            "reject_reason": self.reason,
            "reject_detail": self.detail,
            "raw_excerpt": self.raw_excerpt,
        }


def rejects_table(rejects: Sequence[IngestReject]) -> pa.Table:
    """Arrow table of :meth:`IngestReject.to_row` rows, as ingest writes them (``INGEST_REJECT_SCHEMA``)."""
    import pyarrow as pa

    return pa.Table.from_pylist([r.to_row() for r in rejects], schema=INGEST_REJECT_SCHEMA)


@dataclass
class ParsedRecord:
    """A valid record: its format, turns, and what normalisation dropped."""

    format: str
    roles: list[str]
    texts: list[str]
    system_dropped: bool = False
    trailing_user_dropped: bool = False


# ---------------------------------------------------------------------------------------------
# reading files


def excerpt(raw: Any, limit: int = EXCERPT_CHARS) -> str:
    """First ``limit`` characters of a parsed record as JSON; never raises."""
    try:
        text = json.dumps(raw, ensure_ascii=False, default=str)
    except (TypeError, ValueError, RecursionError):
        try:
            text = repr(raw)
        except RecursionError:
            text = f"<{type(raw).__name__} nested too deeply>"
    return _valid_utf8(text[:limit])


def _valid_utf8(text: str) -> str:
    """Lone surrogates (from JSON escapes like \\ud800) cannot be written to Parquet."""
    return text.encode("utf-8", errors="replace").decode("utf-8")


def _raw_excerpt(data: bytes | str, limit: int = EXCERPT_CHARS) -> str:
    """First ``limit`` characters of text that did not parse (undecodable bytes replaced)."""
    if isinstance(data, bytes):
        data = data[: limit * 4].decode("utf-8", errors="replace")
    return _valid_utf8(data.strip()[:limit])


def read_records(path: str | Path) -> Iterator[tuple[int, Any] | IngestReject]:
    """Yield ``(record_index, raw)`` per record, or an :class:`IngestReject` for what cannot be read.

    ``record_index`` is the 0-based position in its file: array index for a JSON array, line - 1
    for JSON Lines (blank lines are not records), row number for Parquet. A file that cannot be
    read at all (missing, unknown extension, broken JSON array, broken Parquet) yields one reject
    with ``record_index=None`` and nothing else. See :func:`iter_source` for what is sniffed.
    """
    for _, item in iter_source(path):
        yield item


def iter_source(path: str | Path) -> Iterator[tuple[str, tuple[int, Any] | IngestReject]]:
    """``(file label, record or reject)`` of a source: a file, or a folder of files read as one
    source in name order (the Hugging Face layout ``data/train-00000-of-00002.parquet``; the label
    is the path inside the folder).

    The content decides, not the name: gzip and zstd files are recognised by their first bytes and
    read as what their inner name says (``x.jsonl.gz``); a JSON file is an array, one object or
    JSON Lines, whichever it holds; a UTF-8 byte-order mark is skipped.
    """
    path = Path(path)
    if path.is_dir():
        files = sorted(f for f in path.rglob("*") if f.is_file() and _inner_suffix(f.name) in EXTENSIONS)
        if not files:
            reason = f"folder {path} holds no {'/'.join(EXTENSIONS)} file (compressed or not)"
            yield path.name, IngestReject(path.name, None, "unreadable_file", reason, "")
        for f in files:
            label = f.relative_to(path).as_posix()
            for item in _read_file(f, label):
                yield label, item
        return
    for item in _read_file(path, path.name):
        yield path.name, item


def _inner_suffix(name: str) -> str:
    """``.jsonl`` for ``x.jsonl.gz`` and ``x.jsonl``: the suffix under any compression suffix."""
    suffixes = [x.lower() for x in Path(name).suffixes]
    if suffixes and suffixes[-1] in _COMPRESSED_SUFFIXES:
        suffixes = suffixes[:-1]
    return suffixes[-1] if suffixes else ""


def _read_file(path: Path, name: str) -> Iterator[tuple[int, Any] | IngestReject]:
    suffix = _inner_suffix(path.name)
    if not path.is_file():
        yield IngestReject(name, None, "unreadable_file", f"{path} does not exist or is not a file", "")
        return
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError as e:
        yield IngestReject(name, None, "unreadable_file", f"cannot open: {e}", "")
        return
    compression = next((c for m, c in _MAGIC.items() if head.startswith(m)), None)
    if compression is None and suffix not in EXTENSIONS and head != b"PAR1":
        detail = f"unknown extension {path.suffix.lower()!r}; expected one of {', '.join(EXTENSIONS)} (or .gz/.zst)"
        yield IngestReject(name, None, "unreadable_file", detail, "")
        return
    if compression is not None:
        try:
            data = _decompress(path, compression)
        except Exception as e:  # a truncated or corrupt stream
            yield IngestReject(name, None, "unreadable_file", f"{compression}: {type(e).__name__}: {e}", "")
            return
        if data.startswith(b"PAR1"):
            import pyarrow as pa

            yield from _read_parquet(pa.BufferReader(data), name)
        else:
            yield from _records_from_bytes(data, name, lines_first=suffix == ".jsonl")
    elif head == b"PAR1":
        yield from _read_parquet(path, name)
    elif suffix == ".parquet":
        yield IngestReject(name, None, "unreadable_file", "not a Parquet file (no PAR1 magic)", "")
    elif suffix == ".jsonl" and head.lstrip(b"\xef\xbb\xbf \t\r\n")[:1] == b"{":
        yield from _read_jsonl(path, name)  # streamed: JSON Lines files can be large
    else:
        try:
            data = path.read_bytes()
        except OSError as e:
            yield IngestReject(name, None, "unreadable_file", f"cannot read: {e}", "")
            return
        yield from _records_from_bytes(data, name, lines_first=suffix == ".jsonl")


def _decompress(path: Path, compression: str) -> bytes:
    if compression == "gzip":
        import gzip

        with gzip.open(path, "rb") as f:
            return f.read()
    import pyarrow as pa

    with pa.input_stream(str(path), compression="zstd") as f:
        return f.read()


def _read_jsonl(path: Path, name: str) -> Iterator[tuple[int, Any] | IngestReject]:
    try:
        f = open(path, "rb")  # noqa: SIM115 - closed below; a generator keeps it open between records
    except OSError as e:
        yield IngestReject(name, None, "unreadable_file", f"cannot open: {e}", "")
        return
    with f:
        yield from _records_from_lines(f, name)


def _records_from_lines(lines: Iterable[bytes], name: str) -> Iterator[tuple[int, Any] | IngestReject]:
    for lineno, line in enumerate(lines):
        if lineno == 0 and line.startswith(b"\xef\xbb\xbf"):
            line = line[3:]
        if not line.strip():
            continue
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as e:
            yield IngestReject(name, lineno, "invalid_utf8", f"line {lineno + 1}: {e}", _raw_excerpt(line))
            continue
        try:
            yield lineno, json.loads(text)
        except json.JSONDecodeError as e:
            yield IngestReject(name, lineno, "bad_json", f"line {lineno + 1}: {e}", _raw_excerpt(text))
        except RecursionError:
            yield IngestReject(
                name, lineno, "bad_json", f"line {lineno + 1}: nested too deeply", _raw_excerpt(text)
            )


def _records_from_bytes(
    data: bytes, name: str, *, lines_first: bool
) -> Iterator[tuple[int, Any] | IngestReject]:
    """A JSON array, one JSON object, or JSON Lines, whichever ``data`` holds."""
    body = data[3:] if data.startswith(b"\xef\xbb\xbf") else data
    first = body.lstrip()[:1]
    if lines_first and first != b"[":
        yield from _records_from_lines(body.splitlines(keepends=True), name)
        return
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as e:
        yield IngestReject(name, None, "invalid_utf8", f"whole file: {e}", _raw_excerpt(body))
        return
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        if first == b"{" and e.msg == "Extra data":  # one object per line in a file named .json
            yield from _records_from_lines(body.splitlines(keepends=True), name)
            return
        yield IngestReject(name, None, "bad_json", f"whole file: {e}", _raw_excerpt(text))
        return
    except RecursionError:
        yield IngestReject(name, None, "bad_json", "whole file: nested too deeply", _raw_excerpt(text))
        return
    if isinstance(obj, list):
        yield from enumerate(obj)
    elif isinstance(obj, dict):
        yield 0, obj
    else:
        detail = f"top level is {type(obj).__name__}; expected an array of records or one object"
        yield IngestReject(name, None, "not_an_object", detail, excerpt(obj))


def _read_parquet(source: Any, name: str) -> Iterator[tuple[int, Any] | IngestReject]:
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(source)
    except Exception as e:  # pyarrow raises several types for a broken file
        yield IngestReject(
            name, None, "unreadable_file", f"not a readable Parquet file: {type(e).__name__}: {e}", ""
        )
        return
    index = 0
    try:
        for batch in pf.iter_batches(batch_size=1024):
            for row in batch.to_pylist():
                yield index, row
                index += 1
    except Exception as e:
        # Rows already yielded stay counted; the unreadable rest is one reject.
        yield IngestReject(
            name, None, "unreadable_file", f"read failed after {index} rows: {type(e).__name__}: {e}", ""
        )


# ---------------------------------------------------------------------------------------------
# normalising one record


@dataclass(frozen=True)
class ParseOptions:
    """How a source's records are read beyond their layout: which answer of preference data is the
    dialogue, and the column mapping of a layout the reader does not know (``SourceConfig.columns``)."""

    preference: str = "chosen"
    columns: Any = None  # kespeechchat.config.ColumnMapping

    @classmethod
    def of(cls, source: SourceConfig) -> ParseOptions:
        return cls(preference=source.preference, columns=source.columns)


def detect_format(raw: dict[str, Any]) -> str:
    """Layout of one record from its keys: preference data (``chosen``) first, then ``messages``
    (OpenAI), ``conversations`` (ShareGPT), ``conversation`` (Firefly/MOSS), ``instances``
    (self-instruct seed tasks), ``instruction`` (Alpaca)."""
    if raw.get("chosen") is not None or raw.get("chosen_messages") is not None:
        return "preference"
    if raw.get("messages") is not None:
        return "openai"
    if raw.get("conversations") is not None:
        return "sharegpt"
    if raw.get("conversation") is not None:
        return "firefly"
    if "instruction" in raw and raw.get("instances") is not None:
        return "self_instruct"
    if "instruction" in raw:
        return "alpaca"
    keys = ", ".join(repr(k) for k in list(raw)[:10]) or "none"
    raise RecordError(
        "unknown_format",
        f"no 'messages', 'conversations', 'conversation', 'chosen' or 'instruction' key (keys: {keys}); "
        "map the layout with the source's `columns`",
    )


def clean_text(text: str) -> str:
    """NFC, LF line ends, no surrounding whitespace: the form that is hashed and kept."""
    return unicodedata.normalize("NFC", text.replace("\r\n", "\n").replace("\r", "\n")).strip()


def _text(value: Any, where: str) -> str:
    if value is None:
        raise RecordError("missing_field", f"{where} is missing")
    if not isinstance(value, str):
        raise RecordError("wrong_type", f"{where} is {type(value).__name__}, expected str")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        raise RecordError("invalid_utf8", f"{where} has a lone surrogate at position {e.start}") from None
    text = _SCRAPE_TAIL.sub("", clean_text(value))
    if not text:
        raise RecordError("empty_turn", f"{where} is empty")
    return text


def _type_name(value: Any) -> str:
    return type(value).__name__


def _parse_alpaca(raw: dict[str, Any]) -> tuple[list[str], list[str], bool]:
    turns: list[tuple[str, str]] = []
    history = raw.get("history")
    if history is not None:
        if not isinstance(history, list):
            raise RecordError(
                "wrong_type", f"history is {_type_name(history)}, expected a list of [question, answer] pairs"
            )
        for i, pair in enumerate(history):
            if not isinstance(pair, list | tuple) or len(pair) != 2:
                raise RecordError("wrong_type", f"history[{i}] is not a [question, answer] pair")
            turns.append(("user", _text(pair[0], f"history[{i}][0]")))
            turns.append(("assistant", _text(pair[1], f"history[{i}][1]")))
    instruction = _text(raw.get("instruction"), "instruction")
    extra = raw.get("input")
    if extra is not None and not isinstance(extra, str):
        raise RecordError("wrong_type", f"input is {_type_name(extra)}, expected str")
    extra = clean_text(extra or "")
    if _NO_INPUT.match(extra):
        extra = ""  # Alpaca's marker for "no input" ("<noinput>", "`<noinput>`", "< noinput >")
    turns.append(("user", f"{instruction}\n{extra}" if extra else instruction))
    if raw.get("output") is None:
        raise RecordError("missing_field", "output is missing")
    turns.append(("assistant", _text(raw.get("output"), "output")))
    system = raw.get("system")
    if system is not None and not isinstance(system, str):
        raise RecordError("wrong_type", f"system is {_type_name(system)}, expected str")
    return [r for r, _ in turns], [t for _, t in turns], bool(system and system.strip())


def _message_list(raw: dict[str, Any], key: str) -> list[Any]:
    msgs = raw.get(key)
    if msgs is None:
        raise RecordError("missing_field", f"{key} is missing")
    if not isinstance(msgs, list):
        raise RecordError("wrong_type", f"{key} is {_type_name(msgs)}, expected a list")
    if not msgs:
        raise RecordError("no_turns", f"{key} is an empty list")
    return msgs


def _content(value: Any, where: str) -> Any:
    """Plain string content, or the text parts of a typed content list joined by newlines
    (``{"type": "text", "text": …}``, or ``"value"`` for the text); any other part (an image, audio)
    cannot be spoken and rejects the record."""
    if isinstance(value, dict):
        value = [value]
    if not isinstance(value, list):
        return value
    parts = []
    for j, part in enumerate(value):
        pw = f"{where}[{j}]"
        if isinstance(part, str):
            parts.append(part)
            continue
        if not isinstance(part, dict):
            raise RecordError("wrong_type", f"{pw} is {_type_name(part)}, expected an object")
        kind = part.get("type", "text")
        if kind in SILENT_PART_TYPES:
            continue
        if kind in TOOL_PART_TYPES:
            raise RecordError("tool_call", f"{pw}.type={kind!r}: a tool call is not a spoken dialogue")
        if kind not in TEXT_PART_TYPES:
            raise RecordError("non_text_content", f"{pw}.type={kind!r}: only text can be spoken")
        text = part.get("text", part.get("value"))
        if not isinstance(text, str):
            raise RecordError(
                "wrong_type" if text is not None else "missing_field", f"{pw}.text is not a string"
            )
        parts.append(text)
    return "\n".join(p.strip() for p in parts if p.strip())


def _messages(
    msgs: list[Any],
    where: str,
    role_keys: tuple[str, ...],
    content_keys: tuple[str, ...],
    roles: dict[str, str],
) -> tuple[list[str], list[str]]:
    """(roles, texts) of a message list; each message an object with a role under one of
    ``role_keys`` (mapped through ``roles``) and its content under one of ``content_keys``."""
    out_roles: list[str] = []
    texts: list[str] = []
    for i, m in enumerate(msgs):
        w = f"{where}[{i}]"
        if not isinstance(m, dict):
            raise RecordError("wrong_type", f"{w} is {_type_name(m)}, expected an object")
        rk = next((k for k in role_keys if m.get(k) is not None), role_keys[0])
        role = m.get(rk)
        if role is None:
            raise RecordError("missing_field", f"{w}.{rk} is missing")
        if not isinstance(role, str):
            raise RecordError("wrong_type", f"{w}.{rk} is {_type_name(role)}, expected str")
        key = role.strip().lower()
        if key in TOOL_ROLES or m.get("tool_calls") or m.get("function_call"):
            raise RecordError(
                "tool_call", f"{w} is a tool call or its result ({rk}={role!r}): not a spoken dialogue"
            )
        norm = roles.get(key)
        if norm is None:
            raise RecordError("unknown_role", f"{w}.{rk}={role!r} is not one of {'/'.join(roles)}")
        ck = next((k for k in content_keys if k in m), content_keys[0])
        out_roles.append(norm)
        texts.append(_text(_content(m.get(ck), f"{w}.{ck}"), f"{w}.{ck}"))
    return out_roles, texts


def _system(raw: dict[str, Any], key: str = "system") -> bool:
    system = raw.get(key)
    if system is not None and not isinstance(system, str):
        raise RecordError("wrong_type", f"{key} is {_type_name(system)}, expected str")
    return bool(system and system.strip())


def _parse_sharegpt(raw: dict[str, Any]) -> tuple[list[str], list[str], bool]:
    msgs = _message_list(raw, "conversations")
    roles, texts = _messages(msgs, "conversations", ("from", "role"), ("value", "content"), SHAREGPT_ROLES)
    return roles, texts, _system(raw)


def _parse_openai(raw: dict[str, Any], key: str = "messages") -> tuple[list[str], list[str], bool]:
    msgs = _message_list(raw, key)
    roles, texts = _messages(msgs, key, ("role",), ("content",), OPENAI_ROLES)
    return roles, texts, False


def _parse_firefly(raw: dict[str, Any]) -> tuple[list[str], list[str], bool]:
    """Firefly / MOSS: ``{"conversation": [{"human": …, "assistant": …}, …]}``, one exchange per item."""
    roles: list[str] = []
    texts: list[str] = []
    for i, pair in enumerate(_message_list(raw, "conversation")):
        w = f"conversation[{i}]"
        if not isinstance(pair, dict):
            raise RecordError("wrong_type", f"{w} is {_type_name(pair)}, expected an object")
        roles += ["user", "assistant"]
        texts += [_text(pair.get("human"), f"{w}.human"), _text(pair.get("assistant"), f"{w}.assistant")]
    return roles, texts, _system(raw)


_HH_TURN = re.compile(r"(?:^|\n\n)(Human|Assistant):\s*")


def _transcript(text: str, where: str) -> tuple[list[str], list[str]]:
    """An Anthropic-HH transcript string (``\\n\\nHuman: … \\n\\nAssistant: …``) as turns."""
    parts = _HH_TURN.split(text)
    if len(parts) < 3:
        raise RecordError("missing_field", f"{where} is a string with no 'Human:' / 'Assistant:' turns")
    roles = ["user" if who == "Human" else "assistant" for who in parts[1::2]]
    return roles, [_text(t, f"{where} turn {i}") for i, t in enumerate(parts[2::2])]


def _answer(value: Any, where: str) -> tuple[list[str], list[str]]:
    """The answer of preference data: a string, one message, or a list of messages."""
    if isinstance(value, str):
        if _HH_TURN.search(value):
            return _transcript(value, where)
        return ["assistant"], [_text(value, where)]
    if isinstance(value, dict):
        value = [value]
    if not isinstance(value, list) or not value:
        raise RecordError("wrong_type", f"{where} is {_type_name(value)}, expected a string or messages")
    return _messages(value, where, ("role", "from"), ("content", "value"), {**SHAREGPT_ROLES, **OPENAI_ROLES})


def _parse_preference(raw: dict[str, Any], side: str) -> tuple[list[str], list[str], bool]:
    """Preference data (DPO/KTO/RLHF): the prompt turns, then the ``chosen`` answer (or the
    ``rejected`` one, ``preference: rejected``). The prompt is ``messages`` / ``conversations`` (a
    message list) or ``prompt`` (a string or a message list); an answer that repeats the whole
    dialogue (TRL's implicit prompt, HH transcripts) is the dialogue."""
    key = side if raw.get(side) is not None else f"{side}_messages"  # LLaMA-Factory v1: chosen_messages
    if raw.get(key) is None:
        raise RecordError("missing_field", f"{side} is missing (preference data; `preference: {side}`)")
    a_roles, a_texts = _answer(raw[key], key)
    if a_roles[0] == "system":  # a full dialogue with its system prompt
        return a_roles, a_texts, _system(raw)
    if a_roles[0] == "user":  # the answer holds the whole dialogue
        return a_roles, a_texts, _system(raw)
    prompt = raw.get("prompt")
    if raw.get("messages") is not None:
        roles, texts, system = _parse_openai(raw)
    elif raw.get("conversations") is not None:
        roles, texts, system = _parse_sharegpt(raw)
    elif isinstance(prompt, str):
        roles, texts, system = ["user"], [_text(prompt, "prompt")], False
    elif isinstance(prompt, list):
        roles, texts, system = _parse_openai(raw, "prompt")
    else:
        raise RecordError(
            "missing_field", "preference data without a prompt (messages, conversations or prompt)"
        )
    return roles + a_roles, texts + a_texts, system or _system(raw)


def _parse_self_instruct(raw: dict[str, Any]) -> tuple[list[str], list[str], bool]:
    """A self-instruct seed task: ``instruction`` and ``instances: [{input, output}, …]``; the
    first instance is the dialogue (as Alpaca reads instruction, input and output)."""
    instances = raw.get("instances")
    if not isinstance(instances, list):
        raise RecordError("wrong_type", f"instances is {_type_name(instances)}, expected a list")
    if not instances:
        raise RecordError("no_turns", "instances is an empty list")
    first = instances[0]
    if not isinstance(first, dict):
        raise RecordError("wrong_type", f"instances[0] is {_type_name(first)}, expected an object")
    return _parse_alpaca(
        {"instruction": raw.get("instruction"), "input": first.get("input"), "output": first.get("output")}
    )


def _parse_mapped(raw: dict[str, Any], columns: Any) -> tuple[list[str], list[str], bool]:
    """A layout named by the source's column mapping (LLaMA-Factory's dataset_info style)."""
    msgs = raw.get(columns.messages)
    if msgs is None:
        keys = ", ".join(repr(k) for k in list(raw)[:10]) or "none"
        raise RecordError(
            "missing_field", f"columns.messages={columns.messages!r} is not in the record (keys: {keys})"
        )
    if not isinstance(msgs, list):
        raise RecordError("wrong_type", f"{columns.messages} is {_type_name(msgs)}, expected a list")
    tags = {
        columns.user_tag.lower(): "user",
        columns.assistant_tag.lower(): "assistant",
        columns.system_tag.lower(): "system",
    }
    roles, texts = _messages(msgs, columns.messages, (columns.role,), (columns.content,), tags)
    return roles, texts, _system(raw, columns.system) if columns.system else False


def _check_order(roles: list[str], texts: list[str], system_dropped: bool, fmt: str) -> ParsedRecord:
    if roles and roles[0] == "system":
        roles, texts, system_dropped = roles[1:], texts[1:], True
    for i, r in enumerate(roles):
        if r == "system":
            raise RecordError("bad_turn_order", f"turn {i} is a system message after the dialogue started")
    if not roles:
        raise RecordError("no_turns", "no user or assistant turns")
    if roles[0] != "user":
        raise RecordError("bad_turn_order", "turn 0 is 'assistant'; a dialogue must start with 'user'")
    for i in range(1, len(roles)):
        if roles[i] == roles[i - 1]:
            raise RecordError(
                "bad_turn_order", f"turns {i - 1} and {i} are both {roles[i]!r}; turns must alternate"
            )
    trailing = False
    if roles[-1] == "user":
        roles, texts, trailing = roles[:-1], texts[:-1], True
        if not roles:
            raise RecordError("no_turns", "only a user turn without an answer")
    return ParsedRecord(fmt, list(roles), list(texts), system_dropped, trailing)


def parse_record(raw: Any, fmt: str = "auto", options: ParseOptions | None = None) -> ParsedRecord:
    """Like :func:`normalize_record`, but also says whether a system or trailing user turn was dropped."""
    opts = options or ParseOptions()
    if not isinstance(raw, dict):
        raise RecordError("not_an_object", f"record is {_type_name(raw)}, expected an object")
    for key in MEDIA_KEYS:  # LLaMA-Factory / LLaVA multimodal records: the text points at the media
        if raw.get(key):
            raise RecordError(
                "non_text_content", f"record has {key!r}: its turns refer to media that cannot be spoken"
            )
    if opts.columns is not None:
        fmt = "mapped"
    elif fmt == "auto":
        fmt = detect_format(raw)
    elif fmt not in FORMATS or fmt == "mapped":
        raise ValueError(f"unknown format {fmt!r}; expected auto or one of {', '.join(FORMATS[:-1])}")
    if fmt == "alpaca" and "instruction" not in raw:
        raise RecordError("missing_field", "instruction is missing")
    parsers = {
        "alpaca": _parse_alpaca,
        "sharegpt": _parse_sharegpt,
        "openai": _parse_openai,
        "firefly": _parse_firefly,
        "self_instruct": _parse_self_instruct,
        "preference": lambda r: _parse_preference(r, opts.preference),
        "mapped": lambda r: _parse_mapped(r, opts.columns),
    }
    roles, texts, system = parsers[fmt](raw)
    return _check_order(roles, texts, system, fmt)


def normalize_record(
    raw: Any, fmt: str = "auto", options: ParseOptions | None = None
) -> tuple[str, list[str], list[str]]:
    """``(format, roles, texts)`` of one raw record; raises :class:`RecordError` with a reason."""
    p = parse_record(raw, fmt, options)
    return p.format, p.roles, p.texts


def dialogue_id(roles: list[str], texts: list[str]) -> str:
    """Content hash of the normalised turns: same dialogue, same id, in every run."""
    if len(roles) != len(texts):
        raise ValueError(f"{len(roles)} roles but {len(texts)} texts")
    blob = json.dumps(
        [[r, t] for r, t in zip(roles, texts, strict=True)], ensure_ascii=False, separators=(",", ":")
    )
    return "d-" + hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16]


# ---------------------------------------------------------------------------------------------
# sources -> rows


@dataclass
class _Candidate:
    index: int
    row: dict[str, Any]
    raw_excerpt: str
    chars: int
    signature: Signature | None = None


@dataclass
class _SourceStats:
    source_file: str
    path: str
    records: int = 0
    kept: int = 0
    rejected: Counter = field(default_factory=Counter)
    system_dropped: int = 0
    trailing_user_dropped: int = 0
    formats: Counter = field(default_factory=Counter)
    languages: Counter = field(default_factory=Counter)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["rejected"] = dict(sorted(self.rejected.items()))
        d["formats"] = dict(sorted(self.formats.items()))
        d["languages"] = dict(sorted(self.languages.items()))
        return d


def _sample_key(seed: int, did: str) -> str:
    return hashlib.sha256(f"{seed}:{did}".encode()).hexdigest()


def _sample(
    source: SourceConfig, seed: int, candidates: list[_Candidate], rejects: list[IngestReject]
) -> list[_Candidate]:
    """The candidates a source keeps: all of them, or with ``limit`` a deterministic sample of those
    within ``max_chars`` and ``languages``; every other one is a ``not_sampled`` reject with its why."""
    if source.limit is None:
        return candidates
    pool: list[_Candidate] = []
    for c in candidates:
        if source.max_chars is not None and c.chars > source.max_chars:
            why = f"{c.chars} chars > max_chars {source.max_chars}"
        elif source.languages is not None and c.row["language"] not in source.languages:
            why = f"language {c.row['language']!r} not in {list(source.languages)}"
        else:
            pool.append(c)
            continue
        rejects.append(IngestReject(c.row["source_file"], c.index, "not_sampled", why, c.raw_excerpt))
    pool.sort(key=lambda c: _sample_key(seed, c.row["dialogue_id"]))
    chosen = {id(c) for c in pool[: source.limit]}
    for c in pool[source.limit :]:
        why = f"not among the {source.limit} sampled with seed {seed}"
        rejects.append(IngestReject(c.row["source_file"], c.index, "not_sampled", why, c.raw_excerpt))
    return [c for c in candidates if id(c) in chosen]


def ingest_source(
    source: SourceConfig, seed: int, seen_ids: dict[str, str], dedup: Deduper | None = None
) -> tuple[list[dict[str, Any]], list[IngestReject], dict[str, Any]]:
    """One source file -> (rows, rejects, stats); ``seen_ids`` maps kept ids to where they came from.

    ``dedup`` holds the rows kept from earlier sources; the rows kept here are added to it.
    """
    path = Path(source.path)
    name = path.name
    st = _SourceStats(source_file=name, path=str(path))
    rejects: list[IngestReject] = []
    candidates: list[_Candidate] = []
    first_in_file: dict[str, str] = {}
    local = dedup.empty_like() if dedup is not None else None

    options = ParseOptions.of(source)
    for label, item in iter_source(path):
        st.records += 1
        if isinstance(item, IngestReject):
            rejects.append(item)
            continue
        index, raw = item
        try:
            p = parse_record(raw, source.format, options)
        except RecordError as e:
            rejects.append(IngestReject(label, index, e.reason, e.detail, excerpt(raw)))
            continue
        except RecursionError:
            rejects.append(
                IngestReject(label, index, "wrong_type", "record is nested too deeply", excerpt(raw))
            )
            continue
        did = dialogue_id(p.roles, p.texts)
        earlier = seen_ids.get(did) or first_in_file.get(did)
        if earlier is not None:
            rejects.append(
                IngestReject(label, index, "duplicate", f"same turns as {earlier} ({did})", excerpt(raw))
            )
            continue
        sig = None
        if dedup is not None and local is not None:
            sig = dedup.signature(p.roles, p.texts)
            match = dedup.find(sig) or local.find(sig)
            if match is not None:
                rejects.append(IngestReject(label, index, "duplicate", match.describe(), excerpt(raw)))
                continue
            local.add(f"{label}#{index}", sig)
        first_in_file[did] = f"{label}#{index}"
        st.formats[p.format] += 1
        st.system_dropped += int(p.system_dropped)
        st.trailing_user_dropped += int(p.trailing_user_dropped)
        row = {
            "dialogue_id": did,
            "source_file": label,
            "source_index": index,
            "source_format": p.format,
            "language": detect_dialogue_language(p.texts),
            "roles": p.roles,
            "source_texts": p.texts,
        }
        candidates.append(_Candidate(index, row, excerpt(raw), sum(len(t) for t in p.texts), sig))

    kept = _sample(source, seed, candidates, rejects)
    rows = [c.row for c in kept]
    for c in kept:
        seen_ids[c.row["dialogue_id"]] = f"{c.row['source_file']}#{c.index}"
        st.languages[c.row["language"]] += 1
        if dedup is not None and c.signature is not None:
            dedup.add(f"{c.row['source_file']}#{c.index}", c.signature)
    rejects.sort(key=lambda r: (r.source_file, -1 if r.record_index is None else r.record_index))
    for r in rejects:
        st.rejected[r.reason] += 1
    st.kept = len(rows)
    if source.columns is not None and not candidates and st.records:
        first = next((r for r in rejects if r.record_index is not None), rejects[0])
        raise ValueError(
            f"{path}: the column mapping fits none of its {st.records} records; the first, "
            f"{first.source_file}#{first.record_index}: {first.reason}: {first.detail}"
        )
    return rows, rejects, st.to_dict()


def ingest_sources(
    sources: list[SourceConfig], seed: int, dedup: Deduper | None = None
) -> tuple[list[dict[str, Any]], list[IngestReject], dict[str, Any]]:
    """All sources in order -> (dialogue rows, rejects, stats).

    Duplicates are found by ``dialogue_id`` (and, given a ``dedup`` index, after normalisation
    and by similarity) against the rows kept from earlier sources and the earlier valid records
    of the same file. ``stats["sources"]`` has one entry per source:
    records (items read; a whole-file reject counts as one), kept, rejected by reason, and over
    the valid records before sampling: system_dropped, trailing_user_dropped, formats; plus the
    languages of the kept rows. ``stats["totals"]`` sums them.
    """
    seen: dict[str, str] = {}
    rows: list[dict[str, Any]] = []
    rejects: list[IngestReject] = []
    per_source: list[dict[str, Any]] = []
    for src in sources:
        r, j, s = ingest_source(src, seed, seen, dedup)
        rows.extend(r)
        rejects.extend(j)
        per_source.append(s)
    totals: dict[str, Any] = {"records": 0, "kept": 0, "system_dropped": 0, "trailing_user_dropped": 0}
    rejected: Counter = Counter()
    languages: Counter = Counter()
    for s in per_source:
        for k in ("records", "kept", "system_dropped", "trailing_user_dropped"):
            totals[k] += s[k]
        rejected.update(s["rejected"])
        languages.update(s["languages"])
    totals["rejected"] = dict(sorted(rejected.items()))
    totals["languages"] = dict(sorted(languages.items()))
    return rows, rejects, {"sources": per_source, "totals": totals}
