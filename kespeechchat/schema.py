"""Column names and Arrow types of the dialogue table that flows between stages.

One row is one dialogue; per-turn values are parallel lists (``roles[i]``, ``source_texts[i]`` …),
so every stage adds plain columns and rejects whole dialogues with a reason.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import pyarrow as pa

COLUMN_TYPES: dict[str, pa.DataType] = {
    # ingest
    "dialogue_id": pa.string(),
    "source_file": pa.string(),
    "source_index": pa.int64(),
    "source_format": pa.string(),
    "language": pa.string(),
    "roles": pa.list_(pa.string()),
    "source_texts": pa.list_(pa.string()),
    # rewrite
    "rewritten_texts": pa.list_(pa.string()),
    # filter
    "filter_notes": pa.string(),
    # spoken
    "spoken_texts": pa.list_(pa.string()),
    "spoken_notes": pa.string(),
    # assign
    "voice_ids": pa.list_(pa.string()),
    # synthesize
    "audio_flac": pa.list_(pa.binary()),
    "sample_rate_hz": pa.int32(),
    "durations_s": pa.list_(pa.float32()),
    "tts_attempts": pa.list_(pa.int32()),
    # verify
    "asr_texts": pa.list_(pa.string()),
    "error_rates": pa.list_(pa.float32()),
    "speaker_similarities": pa.list_(pa.float32()),
    "silence_ratios": pa.list_(pa.float32()),
    "clipping_ratios": pa.list_(pa.float32()),
    "repeat_ratios": pa.list_(pa.float32()),
    "chars_per_s": pa.list_(pa.float32()),
    "dnsmos_ovrl": pa.list_(pa.float32()),
    "quality_flags": pa.list_(pa.string()),
    # rejects
    "reject_stage": pa.string(),
    "reject_reason": pa.string(),
    "reject_detail": pa.string(),
}

REJECT_COLUMNS = ("reject_stage", "reject_reason", "reject_detail")

# What ingest writes: one row per dialogue, and one per record (or whole file) it could not read.
INGEST_COLUMNS = (
    "dialogue_id",
    "source_file",
    "source_index",
    "source_format",
    "language",
    "roles",
    "source_texts",
)
INGEST_REJECT_SCHEMA = pa.schema(
    [
        ("source_file", pa.string()),
        ("record_index", pa.int64()),
        ("reject_stage", pa.string()),
        ("reject_reason", pa.string()),
        ("reject_detail", pa.string()),
        ("raw_excerpt", pa.string()),
    ]
)


def schema_for(columns: Iterable[str]) -> pa.Schema:
    """Arrow schema of the named columns, in the given order."""
    fields = []
    for name in columns:
        if name not in COLUMN_TYPES:
            raise KeyError(f"unknown column {name!r}: declare it in kespeechchat.schema.COLUMN_TYPES")
        fields.append(pa.field(name, COLUMN_TYPES[name]))
    return pa.schema(fields)


def table_from_rows(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> pa.Table:
    """Build a table with exactly ``columns`` (missing keys become nulls, extra keys are an error)."""
    schema = schema_for(columns)
    for r in rows:
        extra = set(r) - set(columns)
        if extra:
            raise KeyError(f"row {r.get('dialogue_id')!r} has undeclared columns {sorted(extra)}")
    return pa.Table.from_pylist(list(rows), schema=schema)


def rejected_table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> pa.Table:
    cols = [c for c in columns if c not in REJECT_COLUMNS] + list(REJECT_COLUMNS)
    return table_from_rows(rows, cols)
