"""A unit of a run, (stage, shard): how it is built and executed, for the runner and every executor.

``execute_unit`` runs one stage on one shard and commits it: data, rejects, stats, then the marker
(last), so a unit either left a valid marker or is redone.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

from kespeechchat.config import RunConfig
from kespeechchat.stage import Runtime, Stage, StageOutput
from kespeechchat.store import RunStore
from pipelines.stages import SHARD_STAGES


class RunError(RuntimeError):
    """A systemic failure: the run stops with a clear message (no marker is written for the unit)."""


@dataclass
class Unit:
    stage_index: int
    shard: int
    input_fingerprint: str


def make_stages(cfg: RunConfig, runtime: Runtime) -> list[Stage]:
    return [cls(cfg, runtime) for cls in SHARD_STAGES]


def build_stages(cfg_json: dict[str, Any], runtime: Runtime) -> list[Stage]:
    """The stages of a run, rebuilt from its config in a worker process."""
    return make_stages(RunConfig.model_validate(cfg_json), runtime)


def execute_unit(
    stage: Stage,
    store: RunStore,
    input_stage: str,
    shard: int,
    input_fp: str,
    worker: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Run one stage on one shard and commit it: data, rejects, stats, then the marker (last)."""
    t0 = time.perf_counter()
    table = store.read_table(input_stage, shard)
    out: StageOutput = stage.process(table, shard)
    n_in, n_out, n_rej = table.num_rows, out.kept.num_rows, out.rejected.num_rows
    ids_in = set(table.column("dialogue_id").to_pylist())
    ids_out = out.kept.column("dialogue_id").to_pylist() + out.rejected.column("dialogue_id").to_pylist()
    if n_in != n_out + n_rej or ids_in != set(ids_out) or len(ids_out) != len(set(ids_out)):
        raise RunError(
            f"stage {stage.name} shard {shard}: accounting broken: in={n_in} out={n_out} rejected={n_rej}"
        )
    reasons = Counter(out.rejected.column("reject_reason").to_pylist())
    duration_s = time.perf_counter() - t0
    out_fp = store.write_unit(stage.name, shard, out.kept, out.rejected, input_table=table)
    marker = {
        "stage": stage.name,
        "shard": shard,
        "stage_version": stage.version,
        "config_hash": stage.config_hash(),
        "input_fingerprint": input_fp,
        "output_fingerprint": out_fp,
        "rows_in": n_in,
        "rows_out": n_out,
        "rows_rejected": n_rej,
        "rejected_by_reason": dict(sorted(reasons.items())),
        "duration_s": round(duration_s, 3),
        "metrics": out.metrics,
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "worker": worker or {"pid": os.getpid()},
    }
    store.write_marker(stage.name, shard, marker)
    return marker
