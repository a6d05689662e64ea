"""A pipeline of stages that only sleep: the Ray executor's scheduling and watchdog exercised on a real
Ray cluster in seconds, with no model (``tests/test_executor_scheduling.py``, and by hand with
``python -m pipelines.testing SPEC.json``).

A spec is JSON: ``{"run_dir": ..., "shards": 3, "num_cpus": 2, "executor": {...},
"stages": [{"name": "a", "cpus": 0.1, "memory_mb": 64, "sleep_s": 0.2 | {"2": 11.0}}, ...]}``;
``sleep_s`` is one number, or seconds per shard (missing shards: 0.1 s). ``"hold": {"CPU": 1.5}``
starts an actor outside the run that holds those resources, as another job on a shared cluster would.
"""

from __future__ import annotations

import functools
import json
import sys
import time
from pathlib import Path
from typing import Any

import pyarrow as pa

from kespeechchat.config import RunConfig
from kespeechchat.stage import Resources, Runtime, Stage, StageOutput
from pipelines.executors import RayExecutor
from pipelines.runner import Pipeline, RunError, Unit

_REJECTED = pa.schema(
    [("dialogue_id", pa.string()), ("reject_reason", pa.string()), ("reject_detail", pa.string())]
)


class SleepStage(Stage):
    """Passes every row on after sleeping; its name and what it asks of the cluster come from the spec."""

    def __init__(self, spec: dict[str, Any], runtime: Runtime):
        self.name = spec["name"]
        self.resources = Resources(cpus=spec.get("cpus", 0.1), memory_mb=spec.get("memory_mb", 64))
        self._sleep = spec.get("sleep_s", 0.1)
        self.runtime = runtime

    def config_section(self) -> dict[str, Any]:
        return {"sleep_s": self._sleep}

    def process(self, table: pa.Table, shard: int) -> StageOutput:
        s = self._sleep
        time.sleep(float(s.get(str(shard), 0.1)) if isinstance(s, dict) else float(s))
        return StageOutput(kept=table, rejected=_REJECTED.empty_table())


def sleep_stages(stage_specs: list[dict[str, Any]], run_dir: str) -> list[Stage]:
    runtime = Runtime(run_dir=Path(run_dir))
    return [SleepStage(s, runtime) for s in stage_specs]


class SleepPipeline(Pipeline):
    """The real planner (markers, fingerprints) over sleeping stages and a few one-row shards."""

    def __init__(self, spec: dict[str, Any]):
        run_dir = Path(spec["run_dir"]).resolve()
        cfg = RunConfig.model_validate(
            {
                "name": run_dir.name,
                "runs_dir": str(run_dir.parent),
                "input": {"sources": [{"path": str(run_dir / "none.jsonl")}]},
                "executor": {"kind": "ray", "num_cpus": spec.get("num_cpus", 2), "object_store_mb": 80}
                | spec.get("executor", {}),
            }
        )
        super().__init__(cfg, quiet=spec.get("quiet", False))
        self._specs = spec["stages"]
        self.stages = sleep_stages(self._specs, str(self.runtime.run_dir))
        self._hashes = [st.config_hash() for st in self.stages]
        self.n_shards = int(spec.get("shards", 3))

    def stage_builder(self):
        return functools.partial(sleep_stages, self._specs, str(self.runtime.run_dir))

    def write_input(self) -> list[Unit]:
        units = []
        for shard in range(self.n_shards):
            table = pa.table({"dialogue_id": [f"d{shard}"]})
            fp = self.store.write_unit("ingest", shard, table, _REJECTED.empty_table())
            u = self.plan(0, shard, fp, len(self.stages) - 1)
            if u:
                units.append(u)
        return units


class _Hog:
    def ready(self) -> bool:
        return True


def run_sleep_pipeline(spec: dict[str, Any]) -> float:
    """Run the spec on a local Ray cluster of its own; returns the wall time in seconds."""

    pipe = SleepPipeline(spec)
    t0 = time.perf_counter()
    units = pipe.write_input()
    pipe.progress.start_shards(pipe.n_shards, [s.name for s in pipe.stages])
    ex = RayExecutor(pipe.cfg)
    hold = spec.get("hold")
    if hold:
        hog = ex.ray.remote(_Hog).options(num_cpus=hold.get("CPU", 0), num_gpus=hold.get("GPU", 0)).remote()
        ex.ray.get(hog.ready.remote())
    try:
        if units:
            ex.run(pipe, units, len(pipe.stages) - 1)
    finally:
        ex.close()
    return time.perf_counter() - t0


def main(argv: list[str]) -> int:

    spec = json.loads(Path(argv[0]).read_text())
    try:
        wall = run_sleep_pipeline(spec)
    except RunError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"done in {wall:.1f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
