"""Peak memory of the driver and the Ray workers at 1x and 10x input, and the speed-up of two
synthesize workers over one on the same shards (a CPU-bound stage), measured in one run.

    .venv/bin/python bench/pipeline_scaling.py [--small 4] [--factor 10]

Text stages run without the LLM here (passthrough/rules) so the figure is about orchestration and
the speech stages; the LLM's own throughput is bench/llm_throughput.py.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from _common import SAMPLE_DATA, machine, report

from kespeechchat.testing import cli_run_command, small_config, write_config


def _sources(n: int) -> list[dict]:
    text = SAMPLE_DATA / "text"
    half = max(1, n // 2)
    return [
        {
            "path": str(text / "zh_llamafactory_alpaca_zh_demo.json"),
            "limit": half,
            "max_chars": 50,
            "languages": ["zh"],
        },
        {
            "path": str(text / "en_llamafactory_alpaca_en_demo.json"),
            "limit": n - half,
            "max_chars": 110,
            "languages": ["en"],
        },
    ]


class PeakRSS(threading.Thread):
    """Polls a process tree; keeps the peak RSS of the driver and of each kind of Ray stage worker."""

    def __init__(self, pid: int, interval_s: float = 0.2):
        super().__init__(daemon=True)
        self.pid, self.interval_s = pid, interval_s
        self.driver_mb = 0.0
        self.by_worker: dict[str, float] = {}
        self.stop = threading.Event()

    @property
    def worker_mb(self) -> float:
        return max(self.by_worker.values(), default=0.0)

    @property
    def largest_worker(self) -> str:
        return max(self.by_worker, key=self.by_worker.get, default="-")

    def run(self) -> None:
        import psutil

        try:
            root = psutil.Process(self.pid)
        except psutil.NoSuchProcess:
            return
        while not self.stop.is_set():
            try:
                self.driver_mb = max(self.driver_mb, root.memory_info().rss / 2**20)
                for c in root.children(recursive=True):
                    try:
                        title = c.cmdline()[0]
                        if title.startswith("ray::") and "IDLE" not in title:
                            kind = title.split()[0].removeprefix("ray::").split(".")[0]
                            mb = c.memory_info().rss / 2**20
                            self.by_worker[kind] = max(self.by_worker.get(kind, 0.0), mb)
                    except (psutil.NoSuchProcess, psutil.AccessDenied, IndexError):
                        pass
            except psutil.NoSuchProcess:
                return
            time.sleep(self.interval_s)


def run_measured(cmd: list[str]) -> tuple[float, PeakRSS]:
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd)
    mon = PeakRSS(proc.pid)
    mon.start()
    rc = proc.wait()
    mon.stop.set()
    mon.join()
    if rc != 0:
        sys.exit(f"command failed ({rc}): {' '.join(cmd)}")
    return time.perf_counter() - t0, mon


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--small", type=int, default=2, help="dialogues of the 1x run")
    ap.add_argument("--factor", type=int, default=10)
    ap.add_argument("--shard-size", type=int, default=2)
    ap.add_argument("--memory-only", action="store_true", help="skip the 1-vs-2-worker speed-up")
    args = ap.parse_args()
    print(f"machine: {machine()}")
    tmp = Path(tempfile.mkdtemp(prefix="ksc-bench-"))
    results = {}
    for label, n in (("1x", args.small), (f"{args.factor}x", args.small * args.factor)):
        cfg = small_config(
            tmp / "runs", _sources(n), name=f"scale-{label}", shard_size=args.shard_size, executor="ray"
        )
        path = write_config(cfg, tmp / f"{label}.yaml")
        wall, mon = run_measured(cli_run_command(path))
        results[label] = (wall, mon, path)
        print(
            f"{label}: {n} dialogues, {wall:.1f}s wall, driver peak {mon.driver_mb:.0f} MB, "
            f"largest worker {mon.largest_worker} {mon.worker_mb:.0f} MB"
        )
        print(
            "  peak RSS per worker: " + ", ".join(f"{k} {v:.0f} MB" for k, v in sorted(mon.by_worker.items()))
        )
    small, big = results["1x"], results[f"{args.factor}x"]
    report(
        "driver peak RSS growth at 10x input",
        big[1].driver_mb,
        "MB",
        baseline=small[1].driver_mb,
        ratio=big[1].driver_mb / small[1].driver_mb,
        goal="<= 1.2x",
    )
    report(
        "worker peak RSS growth at 10x input",
        big[1].worker_mb,
        "MB",
        baseline=small[1].worker_mb,
        ratio=big[1].worker_mb / max(small[1].worker_mb, 1e-9),
        goal="<= 1.2x",
        note=f"largest worker: {small[1].largest_worker} at 1x, {big[1].largest_worker} at {args.factor}x",
    )

    if args.memory_only:
        return
    # Same shards, synthesize alone, one worker then two.
    timings = {}
    for workers in (1, 2):
        cmd = cli_run_command(
            big[2],
            "--rerun",
            "synthesize",
            "--only",
            "synthesize",
            "--set",
            f"executor.stage_workers={{synthesize: {workers}}}",
        )
        wall, _ = run_measured(cmd)
        timings[workers] = wall
        print(f"synthesize with {workers} worker(s): {wall:.1f}s")
    report(
        "synthesize speed-up, 2 Ray workers vs 1",
        timings[1] / timings[2],
        "x",
        baseline=timings[1],
        baseline_unit="s with 1 worker",
        ratio=timings[1] / timings[2],
        goal=">= 1.6x",
        note="wall of the whole command, Ray start and model load included",
    )


if __name__ == "__main__":
    main()
