"""Crashes: SIGKILL of the driver (local and Ray) and of a Ray worker, at many points; reruns resume
to exactly the same dataset (same ids, same audio bytes), with no duplicates and no torn files."""

from __future__ import annotations

import os
import random
import re
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

pytestmark = [pytest.mark.slow, pytest.mark.faults]

ENV = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"}


def _config(tmp: Path, runs: Path, name: str, sample_data: Path, executor: str) -> Path:
    cfg = small_config(runs, demo_sources(sample_data), name=name, shard_size=1, executor=executor)
    return write_config(cfg, tmp / f"{name}.yaml")


def _markers(run_dir: Path) -> list[Path]:
    return [p for p in run_dir.glob("*/_markers/*.json") if not p.name.startswith(TMP_PREFIX)]


def _reference(tmp_path_factory, sample_data, executor: str) -> list[tuple[str, str]]:
    tmp = tmp_path_factory.mktemp(f"reference-{executor}")
    cfg = _config(tmp, tmp / "runs", "reference", sample_data, executor)
    subprocess.run(cli_run_command(cfg), check=True, env=ENV, timeout=900)
    rows = final_rows(tmp / "runs" / "reference")
    assert rows, "the reference run produced no rows"
    return rows


@pytest.fixture(scope="module")
def expected(tmp_path_factory, sample_data, models_dir) -> list[tuple[str, str]]:
    """Final rows of the same config run once without interruption (in-process executor)."""
    return _reference(tmp_path_factory, sample_data, "local")


@pytest.fixture(scope="module")
def expected_ray(tmp_path_factory, sample_data, models_dir) -> list[tuple[str, str]]:
    """The same, on the Ray executor. Its workers run with one OpenMP thread, the in-process
    executor with the machine's default, and a dialogue at the edge of a threshold can land on
    either side: a resumed Ray run is compared with an uninterrupted Ray run."""
    return _reference(tmp_path_factory, sample_data, "ray")


@pytest.mark.parametrize("executor", ["local", "ray"])
def test_sigkill_mid_synthesize_then_resume(tmp_path, sample_data, request, executor):
    expected = request.getfixturevalue("expected" if executor == "local" else "expected_ray")
    runs = tmp_path / "runs"
    cfg = _config(tmp_path, runs, "killed", sample_data, executor)
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


def test_ten_kills_at_random_points_then_identical_dataset(tmp_path, sample_data, expected):
    """One run killed again and again (after 1, 4, 7 … units, plus a random delay), resumed each time."""
    rng = random.Random(20261125)
    runs = tmp_path / "runs"
    cfg = _config(tmp_path, runs, "chain", sample_data, "local")
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


def _stage_workers() -> dict[int, str]:
    """pid -> process title of every live stage actor (`ray::SynthesizeWorker.run` while it works)."""
    out = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True).stdout
    found = {}
    for line in out.splitlines():
        pid, _, args = line.strip().partition(" ")
        if re.match(r"ray::[A-Za-z]+Worker\b", args.strip()):
            found[int(pid)] = args.strip()
    return found


def _kill_a_busy_worker(proc: subprocess.Popen, rng: random.Random, deadline: float) -> str | None:
    """SIGKILL one stage actor that is running a unit; None when the run ends first."""
    while proc.poll() is None:
        assert time.time() < deadline, "no stage worker was seen running a unit"
        busy = {pid: t for pid, t in _stage_workers().items() if t.split()[0].endswith(".run")}
        for pid in rng.sample(sorted(busy), len(busy)):
            try:
                os.kill(pid, signal.SIGKILL)
                return busy[pid].split()[0]
            except ProcessLookupError:  # finished and freed between ps and kill
                continue
        time.sleep(0.05)
    return None


@pytest.mark.ray
def test_sigkilled_ray_workers_are_replaced_and_the_run_completes(tmp_path, sample_data, expected_ray):
    """Workers killed at six points of one run (any stage, random delay): each unit is redone on a fresh
    actor, the run completes by itself, and the dataset is the uninterrupted run's."""
    rng = random.Random(7)
    runs = tmp_path / "runs"
    cfg = _config(tmp_path, runs, "workers", sample_data, "ray")
    proc = subprocess.Popen(
        cli_run_command(cfg), env=ENV, start_new_session=True, stderr=subprocess.PIPE, text=True
    )
    deadline = time.time() + 600
    killed = []
    for target in (2, 6, 10, 14, 18, 22):
        while len(_markers(runs / "workers")) < target and proc.poll() is None:
            assert time.time() < deadline
            time.sleep(0.05)
        time.sleep(rng.uniform(0.0, 0.5))
        title = _kill_a_busy_worker(proc, rng, deadline)
        if title:
            killed.append(title)
    _, err = proc.communicate(timeout=600)
    assert len(killed) >= 4, f"only {killed} were killed before the run ended"
    assert proc.returncode == 0, err[-3000:]
    assert "worker died on shard" in err, err[
        -3000:
    ]  # an idle actor killed after its last unit costs nothing
    assert "redone after their worker died" in err
    assert final_rows(runs / "workers") == expected_ray
    assert not list((runs / "workers").rglob(TMP_PREFIX + "*"))


@pytest.mark.ray
def test_worker_death_beyond_the_retry_budget_fails_cleanly_then_resumes(tmp_path, sample_data, expected_ray):
    runs = tmp_path / "runs"
    cfg = small_config(
        runs,
        demo_sources(sample_data),
        name="budget",
        shard_size=1,
        executor={"kind": "ray", "max_unit_retries": 0},
    )
    path = write_config(cfg, tmp_path / "budget.yaml")
    proc = subprocess.Popen(
        cli_run_command(path), env=ENV, start_new_session=True, stderr=subprocess.PIPE, text=True
    )
    first = runs / "budget" / "synthesize" / "_markers" / "shard-00000.json"
    deadline = time.time() + 600
    while not first.exists():
        assert proc.poll() is None and time.time() < deadline, "synthesize never finished its first shard"
        time.sleep(0.05)
    assert _kill_a_busy_worker(proc, random.Random(1), deadline), (
        "the run ended before a worker could be killed"
    )
    _, err = proc.communicate(timeout=300)
    assert proc.returncode != 0
    assert re.search(
        r"failed on shard \d+: its worker died 1 time\(s\) \(executor.max_unit_retries=0\)", err
    ), err[-3000:]
    assert_no_partial_files(runs / "budget")
    assert not (runs / "budget" / "dataset").exists()
    subprocess.run(cli_run_command(path), check=True, env=ENV, timeout=900)
    assert final_rows(runs / "budget") == expected_ray
