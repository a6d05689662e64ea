"""The ingest step: every source record becomes a dialogue row in a fixed shard, or a reject.

Duplicates are removed here, over the whole run (exact and near-duplicates after normalisation,
``input.dedup``), because no shard stage sees every dialogue. Shards are cut here once, in input
order, and never re-split; the marker records a fingerprint per shard so that later stages redo
only the shards whose input changed.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

from kespeechchat.config import RunConfig, stable_hash
from kespeechchat.dedup import Deduper, duplicate_kind
from kespeechchat.ingest import ingest_sources, rejects_table
from kespeechchat.progress import Progress
from kespeechchat.schema import INGEST_COLUMNS, table_from_rows
from kespeechchat.store import RunStore, file_sha256, write_json_atomic, write_parquet_atomic

if TYPE_CHECKING:
    from kespeechchat.dedup import Deduper

INGEST_VERSION = "2"
DIALOGUE_COLUMNS = INGEST_COLUMNS


def source_fingerprint(cfg: RunConfig) -> str:
    parts = []
    for src in cfg.input.sources:
        p = Path(src.path)
        parts.append([src.model_dump(), file_sha256(p) if p.is_file() else "missing"])
    inp = cfg.input
    return stable_hash(
        {
            "v": INGEST_VERSION,
            "sources": parts,
            "shard_size": inp.shard_size,
            "seed": inp.seed,
            "dedup": [inp.dedup, inp.near_duplicate_threshold, inp.near_duplicate_ngram],
        }
    )


def make_deduper(cfg: RunConfig) -> Deduper | None:
    """The run's duplicate index, from ``input.dedup`` (None when off)."""

    inp = cfg.input
    if inp.dedup == "off":
        return None
    return Deduper(mode=inp.dedup, threshold=inp.near_duplicate_threshold, ngram=inp.near_duplicate_ngram)


def run_ingest(cfg: RunConfig, store: RunStore, progress: Progress) -> dict[str, str]:

    fp = source_fingerprint(cfg)
    m = store.read_marker("ingest", None)
    if (
        m
        and m.get("input_fingerprint") == fp
        and all(store.data_path("ingest", int(k)).exists() for k in m["shard_fingerprints"])
    ):
        progress.note(
            f"[ingest] up to date: {m['rows_out']} dialogues in {len(m['shard_fingerprints'])} shard(s)"
        )
        return m["shard_fingerprints"]
    progress.note(f"[ingest] reading {len(cfg.input.sources)} source(s) …")
    rows, rejects, stats = ingest_sources(cfg.input.sources, cfg.input.seed, make_deduper(cfg))
    size = cfg.input.shard_size
    shard_fps: dict[str, str] = {}
    for shard, start in enumerate(range(0, len(rows), size)):
        table = table_from_rows(rows[start : start + size], DIALOGUE_COLUMNS)
        path = store.data_path("ingest", shard)
        write_parquet_atomic(path, table)
        shard_fps[str(shard)] = file_sha256(path)[:16]
    rej_table = rejects_table(rejects)
    write_parquet_atomic(store.root / "ingest" / "rejected" / "ingest.parquet", rej_table)
    reasons = Counter(r.reason for r in rejects)
    n_records = len(rows) + len(rejects)
    summary = {
        "stage": "ingest",
        "rows_in": n_records,
        "rows_out": len(rows),
        "rows_rejected": len(rejects),
        "rejected_by_reason": dict(sorted(reasons.items())),
        "languages": dict(Counter(r["language"] for r in rows)),
        "duplicates_by_kind": dict(
            sorted(Counter(duplicate_kind(r.detail) for r in rejects if r.reason == "duplicate").items())
        ),
        "sources": stats,
    }
    write_json_atomic(store.summary_path("ingest"), summary)
    write_json_atomic(store.root / "ingest" / "manifest.json", {"shards": [int(k) for k in shard_fps]})
    store.write_marker(
        "ingest",
        None,
        {
            "stage": "ingest",
            "stage_version": INGEST_VERSION,
            "input_fingerprint": fp,
            "shard_fingerprints": shard_fps,
            "rows_in": n_records,
            "rows_out": len(rows),
            "rows_rejected": len(rejects),
        },
    )
    progress.note(
        f"[ingest] {n_records} records -> {len(rows)} dialogues in {len(shard_fps)} shard(s), "
        f"{len(rejects)} rejected ({', '.join(f'{k} {v}' for k, v in reasons.most_common()) or 'none'})"
    )
    return shard_fps
