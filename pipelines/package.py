"""The package step: accepted dialogues -> one row per utterance in Hugging Face Parquet shards.

Why one row per utterance: `datasets` streams, filters and batches flat rows well, the Hub viewer
shows them, and ASR/TTS training reads them directly; `dialogue_id` + `turn_index` rebuild the
dialogue. Audio is the `Audio` feature (`struct<bytes, path>`, FLAC bytes) with the features in the
Parquet schema metadata, so `datasets.load_dataset(<dataset dir>)` decodes it as audio.

The dataset folder is built next to the old one and swapped in by rename: readers never see half.
"""

from __future__ import annotations

import json
import shutil
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from kespeechchat.config import RunConfig, stable_hash
from kespeechchat.progress import Progress
from kespeechchat.store import RunStore, write_json_atomic

PACKAGE_VERSION = "1"
LAST_SHARD_STAGE = "select"

UTTERANCE_FIELDS: list[tuple[str, pa.DataType, dict[str, Any]]] = [
    ("utterance_id", pa.string(), {"dtype": "string", "_type": "Value"}),
    ("dialogue_id", pa.string(), {"dtype": "string", "_type": "Value"}),
    ("turn_index", pa.int32(), {"dtype": "int32", "_type": "Value"}),
    ("num_turns", pa.int32(), {"dtype": "int32", "_type": "Value"}),
    ("role", pa.string(), {"dtype": "string", "_type": "Value"}),
    ("language", pa.string(), {"dtype": "string", "_type": "Value"}),
    ("text", pa.string(), {"dtype": "string", "_type": "Value"}),
    ("rewritten_text", pa.string(), {"dtype": "string", "_type": "Value"}),
    ("source_text", pa.string(), {"dtype": "string", "_type": "Value"}),
    ("voice_id", pa.string(), {"dtype": "string", "_type": "Value"}),
    ("audio", pa.struct([("bytes", pa.binary()), ("path", pa.string())]), None),  # Audio; sampling rate filled in
    ("duration_s", pa.float32(), {"dtype": "float32", "_type": "Value"}),
    ("asr_text", pa.string(), {"dtype": "string", "_type": "Value"}),
    ("error_rate", pa.float32(), {"dtype": "float32", "_type": "Value"}),
    ("error_kind", pa.string(), {"dtype": "string", "_type": "Value"}),
    ("speaker_similarity", pa.float32(), {"dtype": "float32", "_type": "Value"}),
    ("tts_attempts", pa.int32(), {"dtype": "int32", "_type": "Value"}),
    ("source_file", pa.string(), {"dtype": "string", "_type": "Value"}),
    ("source_format", pa.string(), {"dtype": "string", "_type": "Value"}),
]


def utterance_schema(sample_rate_hz: int) -> pa.Schema:
    """Arrow schema carrying the `huggingface` features metadata (what `datasets` writes itself)."""
    features = {}
    for name, _, feat in UTTERANCE_FIELDS:
        features[name] = feat if feat is not None else {"sampling_rate": int(sample_rate_hz), "_type": "Audio"}
    meta = {b"huggingface": json.dumps({"info": {"features": features}}).encode()}
    return pa.schema([pa.field(n, t) for n, t, _ in UTTERANCE_FIELDS], metadata=meta)


def flatten(row: dict[str, Any]) -> list[dict[str, Any]]:
    lang = row["language"]
    n = len(row["roles"])
    out = []
    for i in range(n):
        uid = f"{row['dialogue_id']}-{i:02d}"
        out.append(
            {
                "utterance_id": uid,
                "dialogue_id": row["dialogue_id"],
                "turn_index": i,
                "num_turns": n,
                "role": row["roles"][i],
                "language": lang,
                "text": row["spoken_texts"][i],
                "rewritten_text": row["rewritten_texts"][i],
                "source_text": row["source_texts"][i],
                "voice_id": row["voice_ids"][i],
                "audio": {"bytes": row["audio_flac"][i], "path": f"{uid}.flac"},
                "duration_s": row["durations_s"][i],
                "asr_text": row["asr_texts"][i],
                "error_rate": row["error_rates"][i],
                "error_kind": "cer" if lang == "zh" else "wer",
                "speaker_similarity": row["speaker_similarities"][i],
                "tts_attempts": row["tts_attempts"][i],
                "source_file": row["source_file"],
                "source_format": row["source_format"],
            }
        )
    return out


class _ShardWriter:
    """Cuts utterances into files of about ``target_bytes``; names are fixed once the count is known."""

    def __init__(self, folder: Path, schema: pa.Schema, target_bytes: int, row_group_rows: int):
        self.folder, self.schema = folder, schema
        self.target_bytes, self.row_group_rows = target_bytes, row_group_rows
        self.parts: list[Path] = []
        self.rows: list[dict[str, Any]] = []
        self.bytes = 0
        self.counts: list[int] = []

    def add(self, rows: list[dict[str, Any]]) -> None:
        for r in rows:
            self.rows.append(r)
            self.bytes += len(r["audio"]["bytes"]) + 256
            if self.bytes >= self.target_bytes:
                self.flush()

    def flush(self) -> None:
        if not self.rows and self.parts:
            return
        path = self.folder / f"part-{len(self.parts):05d}.parquet"
        table = pa.Table.from_pylist(self.rows, schema=self.schema)
        compression = {n: ("NONE" if n == "audio" else "SNAPPY") for n in self.schema.names}
        pq.write_table(
            table,
            path,
            row_group_size=self.row_group_rows,
            compression=compression,
            use_dictionary=[n for n in self.schema.names if n != "audio"],
            write_page_index=True,
        )
        self.parts.append(path)
        self.counts.append(len(self.rows))
        self.rows, self.bytes = [], 0

    def finish(self, split: str) -> list[Path]:
        if self.rows or not self.parts:
            self.flush()
        n = len(self.parts)
        final = []
        for i, p in enumerate(self.parts):
            dst = p.with_name(f"{split}-{i:05d}-of-{n:05d}.parquet")
            p.rename(dst)
            final.append(dst)
        return final


def run_package(cfg: RunConfig, store: RunStore, progress: Progress) -> Path:
    from kespeechchat.card import write_card

    shards = store.shards()
    fps = []
    for shard in shards:
        m = store.read_marker(LAST_SHARD_STAGE, shard)
        if not m:
            raise RuntimeError(f"package: stage {LAST_SHARD_STAGE} has not finished shard {shard}")
        fps.append(m["output_fingerprint"])
    fp = stable_hash({"v": PACKAGE_VERSION, "inputs": fps, "package": cfg.package.model_dump()})
    m = store.read_marker("package", None)
    final_dir = store.dataset_dir
    if m and m.get("input_fingerprint") == fp and final_dir.is_dir():
        progress.note(f"[package] up to date: {final_dir}")
        return final_dir

    t0 = time.perf_counter()
    tmp_dir = final_dir.with_name(f".tmp-dataset-{int(time.time() * 1000)}")
    (tmp_dir / "data").mkdir(parents=True)
    writer: _ShardWriter | None = None
    stats: dict[str, Any] = {
        "dialogues": 0,
        "utterances": 0,
        "audio_s": 0.0,
        "by_language": defaultdict(lambda: {"dialogues": 0, "utterances": 0, "audio_s": 0.0, "errors": [], "sims": []}),
        "by_role": defaultdict(lambda: {"utterances": 0, "audio_s": 0.0}),
        "voices": defaultdict(int),
    }
    sample_rate = None
    try:
        for shard in shards:
            table = store.read_table(LAST_SHARD_STAGE, shard)
            for row in table.to_pylist():
                sr = int(row["sample_rate_hz"])
                if sample_rate is None:
                    sample_rate = sr
                    writer = _ShardWriter(
                        tmp_dir / "data",
                        utterance_schema(sr),
                        int(cfg.package.target_shard_mb * 1e6),
                        cfg.package.row_group_rows,
                    )
                elif sr != sample_rate:
                    raise RuntimeError(f"package: shard {shard} has sample rate {sr}, others {sample_rate}")
                utts = flatten(row)
                writer.add(utts)
                lang = stats["by_language"][row["language"]]
                stats["dialogues"] += 1
                lang["dialogues"] += 1
                for u in utts:
                    stats["utterances"] += 1
                    stats["audio_s"] += u["duration_s"]
                    lang["utterances"] += 1
                    lang["audio_s"] += u["duration_s"]
                    lang["errors"].append(u["error_rate"])
                    lang["sims"].append(u["speaker_similarity"])
                    stats["by_role"][u["role"]]["utterances"] += 1
                    stats["by_role"][u["role"]]["audio_s"] += u["duration_s"]
                    stats["voices"][u["voice_id"]] += 1
        if writer is None:  # nothing accepted: still a valid, empty dataset
            writer = _ShardWriter(tmp_dir / "data", utterance_schema(cfg.tts.sample_rate_hz), 1, cfg.package.row_group_rows)
        files = writer.finish("train")
        summary = _summarise(stats, files, final_dir)
        write_card(tmp_dir, cfg, summary, store.root)
        old = None
        if final_dir.exists():
            old = final_dir.with_name(f".tmp-old-dataset-{int(time.time() * 1000)}")
            final_dir.rename(old)
        tmp_dir.rename(final_dir)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp_dir.exists():
            shutil.rmtree(tmp_dir, ignore_errors=True)
    write_json_atomic(store.root / "package" / "stats" / "package.json", summary)
    store.write_marker(
        "package",
        None,
        {
            "stage": "package",
            "stage_version": PACKAGE_VERSION,
            "input_fingerprint": fp,
            "rows_in": summary["dialogues"],
            "rows_out": summary["utterances"],
            "rows_rejected": 0,
            "duration_s": round(time.perf_counter() - t0, 3),
        },
    )
    progress.note(
        f"[package] {summary['dialogues']} dialogues -> {summary['utterances']} utterances in "
        f"{len(files)} file(s), {summary['audio_s']:.1f} s of audio -> {final_dir}"
    )
    return final_dir


def _summarise(stats: dict[str, Any], files: list[Path], final_dir: Path) -> dict[str, Any]:
    by_lang = {}
    for lang, d in stats["by_language"].items():
        by_lang[lang] = {
            "dialogues": d["dialogues"],
            "utterances": d["utterances"],
            "audio_s": round(d["audio_s"], 3),
            "error_kind": "cer" if lang == "zh" else "wer",
            "mean_error_rate": float(np.mean(d["errors"])) if d["errors"] else 0.0,
            "mean_speaker_similarity": float(np.mean(d["sims"])) if d["sims"] else 0.0,
        }
    return {
        "path": str(final_dir),
        "files": [f"data/{f.name}" for f in files],
        "dialogues": stats["dialogues"],
        "utterances": stats["utterances"],
        "audio_s": round(stats["audio_s"], 3),
        "audio_hours": stats["audio_s"] / 3600.0,
        "by_language": by_lang,
        "by_role": {k: dict(v) for k, v in stats["by_role"].items()},
        "voice_usage": dict(sorted(stats["voices"].items())),
    }
