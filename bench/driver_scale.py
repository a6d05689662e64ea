"""The driver at the paper's scale, simulated: the real planner, run store and Ray executor over
N one-row shards with a stage that does nothing, so that only the bookkeeping is measured.

Per N (each in a fresh process, so that peak RSS is the driver's for that N alone):
  write_s      writing the N input shards and their fingerprints (what ingest does at the end)
  dispatch     units run through RayExecutor per second (one no-op stage)
  rss_mb       the driver's peak RSS
  plan_s       planning a resume of the finished run (every unit found done from its marker)
  files        files the run store holds afterwards, and files per unit

Then the growth from the smallest to the largest N (1.0 = linear) and the projection to the
paper's 7 M dialogues: 110,000 shards of 64 through 8 stages = 880,000 units.

    python bench/driver_scale.py                 # N = 1,000 and 10,000
    python bench/driver_scale.py --shards 1000 10000 100000
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import report  # noqa: E402

PAPER_SHARDS = 110_000
PAPER_STAGES = 8


def _rss_mb() -> float:
    """The process's resident memory now (not the peak)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def child(n: int, run_dir: Path) -> dict:
    from pipelines.executors import RayExecutor
    from pipelines.testing import SleepPipeline

    spec = {
        "run_dir": str(run_dir),
        "shards": n,
        "num_cpus": 2,
        "quiet": True,
        "executor": {"stage_workers": {"noop": 4}},
        "stages": [{"name": "noop", "cpus": 0.25, "memory_mb": 64, "sleep_s": 0}],
    }
    pipe = SleepPipeline(spec)
    rss = {"start": _rss_mb()}
    t0 = time.perf_counter()
    units = pipe.write_input()
    write_s = time.perf_counter() - t0
    rss["after_write"] = _rss_mb()
    input_files = sum(len(f) for _, _, f in os.walk(run_dir))
    fps = {u.shard: u.input_fingerprint for u in units}  # what the ingest marker holds in a real run
    ex = RayExecutor(pipe.cfg)
    try:
        rss["after_ray_init"] = _rss_mb()
        c1, t1 = _cpu_s(), time.perf_counter()
        ex.run(pipe, units, len(pipe.stages) - 1)
        run_s, driver_cpu_s = time.perf_counter() - t1, _cpu_s() - c1
        rss["after_run"] = _rss_mb()
    finally:
        ex.close()
    # resume: a fresh planner over the finished run finds every unit done, as Pipeline._run_shards does
    again = SleepPipeline(spec)
    t2 = time.perf_counter()
    todo = sum(1 for shard in range(n) if again.plan(0, shard, fps[shard], 0) is not None)
    plan_s = time.perf_counter() - t2
    rss["after_plan"] = _rss_mb()
    peak_driver = _peak_mb()  # before this script's own walk over the run's files below
    files = sum(len(f) for _, _, f in os.walk(run_dir))
    size = sum(p.stat().st_size for p in run_dir.rglob("*") if p.is_file())
    return {
        "shards": n,
        "units": len(units),
        "write_s": write_s,
        "run_s": run_s,
        "units_per_s": len(units) / run_s,
        "driver_cpu_ms_per_unit": 1000 * driver_cpu_s / len(units),
        "rss_mb": peak_driver,
        "rss_phases_mb": rss,
        "peak_with_file_walk_mb": _peak_mb(),
        "plan_s": plan_s,
        "left_to_do": todo,
        "files": files,
        "files_per_unit": files / max(n, 1),
        "input_files_per_shard": input_files / max(n, 1),
        "stage_files_per_unit": (files - input_files) / max(len(units), 1),
        "bytes": size,
    }


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shards", type=int, nargs="+", default=[1000, 10000])
    ap.add_argument("--child", type=int)
    ap.add_argument("--dir")
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child, Path(args.dir))))
        return 0
    rows = []
    for n in args.shards:
        with tempfile.TemporaryDirectory(prefix="kesc-scale-") as d:
            out = subprocess.run(
                [sys.executable, __file__, "--child", str(n), "--dir", str(Path(d) / "run")],
                capture_output=True,
                text=True,
                check=True,
            )
            row = json.loads(out.stdout.strip().splitlines()[-1])
            rows.append(row)
            print(
                f"{n:>7} shards: write {row['write_s']:.1f} s, {row['units_per_s']:.0f} units/s "
                f"(driver CPU {row['driver_cpu_ms_per_unit']:.1f} ms per unit), "
                f"driver peak RSS {row['rss_mb']:.0f} MB (now: "
                + ", ".join(f"{k} {v:.0f}" for k, v in row["rss_phases_mb"].items())
                + f"; the bench's own file walk after it: {row['peak_with_file_walk_mb']:.0f}), "
                f"resume plan {row['plan_s']:.2f} s "
                f"({row['left_to_do']} left to do), {row['files']} files ({row['files_per_unit']:.1f} per unit)",
                flush=True,
            )
    lo, hi = rows[0], rows[-1]
    k = hi["shards"] / lo["shards"]
    for key, what, unit in (
        ("run_s", "dispatch time", "s"),
        ("plan_s", "resume planning time", "s"),
        ("files", "files written", "files"),
        ("write_s", "input write time", "s"),
    ):
        report(
            f"{what} at {hi['shards']} vs {lo['shards']} shards, growth per shard (1.0 = linear)",
            hi[key],
            unit,
            baseline=lo[key],
            ratio=(hi[key] / lo[key]) / k if lo[key] else None,
            goal="<= 1.2",
        )
    report(f"units dispatched per second at {hi['shards']} shards", hi["units_per_s"], "units/s")
    report(
        f"driver CPU per unit at {hi['shards']} vs {lo['shards']} shards",
        hi["driver_cpu_ms_per_unit"],
        "ms",
        baseline=lo["driver_cpu_ms_per_unit"],
        ratio=hi["driver_cpu_ms_per_unit"] / lo["driver_cpu_ms_per_unit"],
        goal="<= 1.2",
    )
    report(
        f"driver peak RSS at {hi['shards']} vs {lo['shards']} shards",
        hi["rss_mb"],
        "MB",
        baseline=lo["rss_mb"],
        ratio=hi["rss_mb"] / lo["rss_mb"],
    )
    units = PAPER_SHARDS * PAPER_STAGES
    ph = hi["rss_phases_mb"]
    run_kb = (ph["after_run"] - ph["after_ray_init"]) * 1024 / hi["units"]
    per_unit_plan = hi["plan_s"] / hi["units"]
    print(
        f"\nprojection to 7 M dialogues ({PAPER_SHARDS} shards x {PAPER_STAGES} stages = {units} units), "
        f"from {hi['shards']} shards on this machine:\n"
        f"  driver CPU at {hi['driver_cpu_ms_per_unit']:.1f} ms per unit: "
        f"{hi['driver_cpu_ms_per_unit'] * units / 1000 / 3600:.2f} h over the run "
        f"(dispatch here {hi['units_per_s']:.0f} units/s, bound by 2 cores running the no-op workers too)\n"
        f"  resume planning: {per_unit_plan * units:.0f} s\n"
        f"  files: {(hi['input_files_per_shard'] * PAPER_SHARDS + hi['stage_files_per_unit'] * units) / 1e6:.2f} M "
        f"({hi['input_files_per_shard']:.1f} per input shard, {hi['stage_files_per_unit']:.1f} per unit)\n"
        f"  driver memory: {run_kb:.2f} KB per unit while units run ({hi['rss_phases_mb']['after_run']:.0f} MB "
        f"after {hi['units']} units), so about {hi['rss_phases_mb']['after_ray_init'] + run_kb * units / 1024:.0f} MB "
        f"at {units} units"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
