"""The Ray executor on a real 2-CPU Ray cluster with stages that only sleep (pipelines/testing.py):
the hang of ``make demo`` reproduced and gone, the watchdog's two stops, and no process of a
killed run left behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipelines.reaper import GRACE_S

pytestmark = pytest.mark.ray

ENV = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"}

# On 2 CPUs: stage t2's pool looked unreachable the moment t0's last shard finished (the shard waited
# in t1's queue), so it was freed; t4's actor, pending until then, took the room; t2 restarted and could
# not be placed while t3 and t4 sat idle on both CPUs. The old executor waited here forever.
DEMO_HANG = [
    {"name": "t0", "cpus": 0, "sleep_s": {"0": 0.1, "1": 0.1, "2": 12.0}},
    {"name": "t1", "cpus": 0, "sleep_s": 0.2},
    {"name": "t2", "cpus": 0.1, "sleep_s": 0.2},
    {"name": "t3", "cpus": 1.0, "sleep_s": {"0": 0.5, "1": 14.0}},
    {"name": "t4", "cpus": 1.0, "sleep_s": 1.0},
]


def _spec(tmp: Path, stages, **extra) -> Path:
    spec = {"run_dir": str(tmp / "run"), "shards": 3, "num_cpus": 2, "stages": stages} | extra
    path = tmp / "spec.json"
    path.write_text(json.dumps(spec))
    return path


def _run(spec: Path, timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pipelines.testing", str(spec)],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_the_demo_hang_on_two_cpus_now_finishes(tmp_path):
    spec = _spec(tmp_path, DEMO_HANG, executor={"stall_timeout_s": 60})
    r = _run(spec, timeout=150)  # the old executor never returned: TimeoutExpired
    assert r.returncode == 0, r.stderr[-3000:]
    markers = sorted((tmp_path / "run").glob("t*/_markers/*.json"))
    assert len(markers) == 15, [str(p) for p in markers]
    # the rule at work: idle actors gave way to a stage with waiting work
    assert "idle actor released: t4 needs its resources" in r.stderr, r.stderr[-3000:]


def test_a_stage_that_ray_cannot_place_stops_the_run_with_a_diagnosis(tmp_path):
    """1.5 of the 2 CPUs held outside the run (another job): the 1-CPU stage can never start."""
    stages = [{"name": "text", "cpus": 0.1, "sleep_s": 0.1}, {"name": "speech", "cpus": 1.0, "sleep_s": 0.1}]
    spec = _spec(tmp_path, stages, shards=1, hold={"CPU": 1.5}, executor={"stall_timeout_s": 5})
    t0 = time.monotonic()
    r = _run(spec, timeout=120)
    assert r.returncode == 1, r.stderr[-3000:]
    err = r.stderr
    assert "no progress for" in err and "work waits and nothing runs" in err, err[-3000:]
    assert "speech: 1 unit(s) waiting; one actor asks 1 CPU" in err, err[-3000:]
    assert "Ray has not found room for it" in err, err[-3000:]
    assert "free now according to Ray: " in err and "0.5 CPU" in err, err[-3000:]
    assert time.monotonic() - t0 < 90
    assert (tmp_path / "run" / "text" / "_markers" / "shard-00000.json").exists()


def test_a_unit_past_its_time_limit_stops_the_run(tmp_path):
    stages = [{"name": "stuck", "cpus": 0.5, "sleep_s": 120}]
    spec = _spec(tmp_path, stages, shards=1, executor={"unit_timeout_s": 3})
    r = _run(spec, timeout=100)
    assert r.returncode == 1, r.stderr[-3000:]
    assert "stage stuck: shard 0 has run for" in r.stderr, r.stderr[-3000:]
    assert "past executor.unit_timeout_s=3" in r.stderr, r.stderr[-3000:]


def _descendants(pid: int) -> dict[int, str]:
    """pid -> command line of every live descendant of ``pid``."""
    kids: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                stat = (d / "stat").read_text()
            except OSError:
                continue
            ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
            kids.setdefault(ppid, []).append(int(d.name))
    found: dict[int, str] = {}
    stack = list(kids.get(pid, []))
    while stack:
        p = stack.pop()
        try:
            found[p] = Path(f"/proc/{p}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
        except OSError:
            continue
        stack.extend(kids.get(p, []))
    return found


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="the reaper reads /proc (Linux)")
def test_no_process_of_a_killed_run_outlives_it(tmp_path):
    stages = [{"name": "a", "cpus": 0.5, "sleep_s": 0.2}, {"name": "b", "cpus": 1.0, "sleep_s": 60}]
    spec = _spec(tmp_path, stages, shards=2)
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipelines.testing", str(spec)],
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    marker = tmp_path / "run" / "a" / "_markers" / "shard-00000.json"
    deadline = time.time() + 120
    procs: dict[int, str] = {}
    while time.time() < deadline:
        procs = _descendants(proc.pid)
        if marker.exists() and any("ray::BWorker" in c for c in procs.values()):
            break
        assert proc.poll() is None, "the run ended before it could be killed"
        time.sleep(0.3)
    time.sleep(1.5)  # the reaper polls the process tree every 0.5 s
    procs = _descendants(proc.pid)
    names = " | ".join(procs.values())
    assert "ray::DashboardAgent" in names and "ray::RuntimeEnvAgent" in names and "raylet" in names, names
    os.kill(proc.pid, signal.SIGKILL)  # the driver alone, as a user's kill -9 does
    proc.wait(timeout=10)
    deadline = time.time() + GRACE_S + 7
    left = dict(procs)
    while left and time.time() < deadline:
        left = {p: c for p, c in left.items() if _alive(p)}
        time.sleep(0.2)
    assert not left, f"still running {GRACE_S + 7:.0f} s after the driver was killed: {left}"
