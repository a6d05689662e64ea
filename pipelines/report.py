"""Reading a run back: per-stage accounting, rejects by reason, the dataset summary."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from kespeechchat.config import RunConfig, load_config
from kespeechchat.store import RunStore, read_json
from pipelines.stages import STAGE_NAMES


def resolve_run(arg: str, runs_dir: str | Path) -> Path:
    """A run named on the command line: a directory, or a name under ``runs_dir``."""
    for p in (Path(arg), Path(runs_dir) / arg):
        if p.is_dir():
            return p
    raise SystemExit(f"error: no run directory {arg!r} (looked in . and {runs_dir}/)")


def load_run_config(run_dir: str | Path) -> RunConfig:
    """The config a run was made with (its ``config.yaml``)."""
    store = RunStore(run_dir)
    if not store.config_path.is_file():
        raise FileNotFoundError(f"{store.root}: not a run directory (no {store.config_path.name})")
    return load_config(store.config_path)


def stage_names() -> tuple[str, ...]:

    return STAGE_NAMES


def run_summary(run_dir: str | Path) -> dict[str, Any]:
    """Counts from the markers and stats files: what `status` prints and the card quotes."""
    store = RunStore(run_dir)
    shards = store.shards()
    out: dict[str, Any] = {"run_dir": str(store.root), "stages": [], "rejected_by_reason": {}}
    reasons: Counter[str] = Counter()
    ingest = store.read_marker("ingest", None)
    ingest_stats = read_json(store.summary_path("ingest")) or {}
    if ingest:
        out["records_in"] = ingest["rows_in"]
        out["dialogues_in"] = ingest["rows_out"]
        out["stages"].append(
            {
                "stage": "ingest",
                "shards_done": 1,
                "shards_total": 1,
                "rows_in": ingest["rows_in"],
                "rows_out": ingest["rows_out"],
                "rows_rejected": ingest["rows_rejected"],
                "duration_s": 0.0,
            }
        )
        for k, v in ingest_stats.get("rejected_by_reason", {}).items():
            if k != "not_sampled":
                reasons[f"ingest:{k}"] += v
        out["not_sampled"] = ingest_stats.get("rejected_by_reason", {}).get("not_sampled", 0)
    for name in stage_names()[1:-1]:
        row = {
            "stage": name,
            "shards_done": 0,
            "shards_total": len(shards),
            "rows_in": 0,
            "rows_out": 0,
            "rows_rejected": 0,
            "duration_s": 0.0,
        }
        for shard in shards:
            m = store.read_marker(name, shard)
            if not m:
                continue
            row["shards_done"] += 1
            for k in ("rows_in", "rows_out", "rows_rejected"):
                row[k] += m[k]
            row["duration_s"] += m.get("duration_s", 0.0)
            by_reason = m.get("rejected_by_reason")
            if by_reason is None:  # a unit written before markers held it
                by_reason = (read_json(store.stats_path(name, shard)) or {}).get("rejected_by_reason", {})
            for k, v in by_reason.items():
                reasons[f"{name}:{k}"] += v
        out["stages"].append(row)
    pkg = read_json(store.summary_path("package"))
    pm = store.read_marker("package", None)
    if pkg and pm:
        out["dataset"] = pkg
        out["stages"].append(
            {
                "stage": "package",
                "shards_done": 1,
                "shards_total": 1,
                "rows_in": pm["rows_in"],
                "rows_out": pm["rows_out"],
                "rows_rejected": 0,
                "duration_s": pm.get("duration_s", 0.0),
            }
        )
    out["rejected_by_reason"] = dict(reasons)
    return out


def read_rejects(run_dir: str | Path, stage: str | None = None, reason: str | None = None) -> pa.Table:
    """All rejected rows of a run (or of one stage / reason) with where and why they were dropped."""
    store = RunStore(run_dir)
    rows: list[dict[str, Any]] = []
    for name in stage_names():
        if stage and name != stage:
            continue
        folder = store.root / name / "rejected"
        if not folder.is_dir():
            continue
        for p in sorted(folder.glob("*.parquet")):
            t = pq.read_table(p)
            for r in t.to_pylist():
                rr = {
                    "stage": name,
                    "dialogue_id": r.get("dialogue_id"),
                    "source_file": r.get("source_file"),
                    "record_index": r.get("record_index", r.get("source_index")),
                    "reason": r.get("reject_reason"),
                    "detail": r.get("reject_detail"),
                }
                if reason and rr["reason"] != reason:
                    continue
                rows.append(rr)
    schema = pa.schema(
        [
            ("stage", pa.string()),
            ("dialogue_id", pa.string()),
            ("source_file", pa.string()),
            ("record_index", pa.int64()),
            ("reason", pa.string()),
            ("detail", pa.string()),
        ]
    )
    return pa.Table.from_pylist(rows, schema=schema)
