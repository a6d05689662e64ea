"""Crashes: SIGKILL of the driver (local and Ray) and of a Ray worker, at many points; reruns resume
to exactly the same dataset (same ids, same audio bytes), with no duplicates and no torn files."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import time
from pathlib import Path

import pytest

from kespeechchat.store import TMP_PREFIX
from kespeechchat.testing import (
    assert_no_partial_files,
    cli_run_command,
    demo_sources,
    final_rows,
    small_config,
    write_config,
)

pytestmark = pytest.mark.slow

ENV = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"}


def _config(tmp: Path, runs: Path, name: str, shared_data: Path, executor: str) -> Path:
    cfg = small_config(runs, demo_sources(shared_data), name=name, shard_size=1, executor=executor)
    return write_config(cfg, tmp / f"{name}.yaml")


def _markers(run_dir: Path) -> list[Path]:
    return [p for p in run_dir.glob("*/_markers/*.json") if not p.name.startswith(TMP_PREFIX)]


@pytest.fixture(scope="module")
def expected(tmp_path_factory, shared_data, models_dir) -> list[tuple[str, str]]:
    """Final rows of the same config run once without interruption (in-process executor)."""
    tmp = tmp_path_factory.mktemp("reference")
    cfg = _config(tmp, tmp / "runs", "reference", shared_data, "local")
    subprocess.run(cli_run_command(cfg), check=True, env=ENV, timeout=900)
    rows = final_rows(tmp / "runs" / "reference")
    assert rows, "the reference run produced no rows"
    return rows


@pytest.mark.parametrize("executor", ["local", "ray"])
def test_sigkill_mid_synthesize_then_resume(tmp_path, shared_data, expected, executor):
    runs = tmp_path / "runs"
    cfg = _config(tmp_path, runs, "killed", shared_data, executor)
    proc = subprocess.Popen(cli_run_command(cfg), env=ENV, start_new_session=True)
    first = runs / "killed" / "synthesize" / "_markers" / "shard-00000.json"
    deadline = time.time() + 600
    while not first.exists():
        assert proc.poll() is None, "run ended before it could be killed"
        assert time.time() < deadline, "synthesize never finished its first shard"
        time.sleep(0.2)
    time.sleep(1.0)  # inside the next shard's synthesis
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    done = sorted(p.name for p in (runs / "killed" / "synthesize" / "_markers").glob("*.json"))
    assert len(done) < 4, f"the kill came too late: {done}"
    assert not (runs / "killed" / "dataset").exists()
    assert_no_partial_files(runs / "killed")

    subprocess.run(cli_run_command(cfg), check=True, env=ENV, timeout=900)
    got = final_rows(runs / "killed")
    assert got == expected
    assert len({u for u, _ in got}) == len(got)
    assert not list((runs / "killed").rglob(TMP_PREFIX + "*"))


@pytest.mark.extended
def test_ten_kills_at_random_points_then_identical_dataset(tmp_path, shared_data, expected):
    """One run killed again and again (after 1, 4, 7 … units, plus a random delay), resumed each time."""
    rng = random.Random(20261125)
    runs = tmp_path / "runs"
    cfg = _config(tmp_path, runs, "chain", shared_data, "local")
    run_dir = runs / "chain"
    kills = 0
    for target in range(1, 32, 3):
        proc = subprocess.Popen(cli_run_command(cfg), env=ENV, start_new_session=True)
        deadline = time.time() + 600
        while len(_markers(run_dir)) < target and proc.poll() is None:
            assert time.time() < deadline
            time.sleep(0.05)
        if proc.poll() is not None:
            break  # the run finished before this kill point
        time.sleep(rng.uniform(0.0, 1.5))
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        kills += 1
        assert_no_partial_files(run_dir)
    assert kills >= 10, f"only {kills} kills landed before the run finished"
    subprocess.run(cli_run_command(cfg), check=True, env=ENV, timeout=900)
    assert final_rows(run_dir) == expected


def _actor_pids() -> list[int]:
    out = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True).stdout
    return [int(line.split()[0]) for line in out.splitlines() if "ray::_Worker" in line]


@pytest.mark.extended
def test_sigkill_of_a_ray_worker_fails_cleanly_then_resumes(tmp_path, shared_data, expected):
    runs = tmp_path / "runs"
    cfg = _config(tmp_path, runs, "worker", shared_data, "ray")
    proc = subprocess.Popen(
        cli_run_command(cfg), env=ENV, start_new_session=True, stderr=subprocess.PIPE, text=True
    )
    first = runs / "worker" / "assign" / "_markers" / "shard-00001.json"
    deadline = time.time() + 600
    while not first.exists():
        assert proc.poll() is None and time.time() < deadline
        time.sleep(0.1)
    pids: list[int] = []
    while not pids:  # a stage actor shows as ray::_Worker once it has work; poll, it may be between tasks
        assert proc.poll() is None and time.time() < deadline, "the run ended before a worker could be killed"
        pids = _actor_pids()
        time.sleep(0.1)
    killed = 0
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
            killed += 1
        except ProcessLookupError:  # listed by ps, gone by now
            pass
    assert killed, f"every listed worker {pids} had already exited"
    _, err = proc.communicate(timeout=300)
    assert proc.returncode != 0
    assert "failed on shard" in err or "died" in err.lower(), err[-2000:]
    assert_no_partial_files(runs / "worker")
    subprocess.run(cli_run_command(cfg), check=True, env=ENV, timeout=900)
    assert final_rows(runs / "worker") == expected
