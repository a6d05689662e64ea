"""Crashes on the Ray executor: SIGKILL of the driver mid-synthesis, and of busy stage actors (within
and beyond the retry budget); reruns resume to exactly the uninterrupted Ray run's dataset."""

from __future__ import annotations

import random
import re
import subprocess
import time

import pytest
from faults import (
    FAULT_ENV,
    fault_config,
    kill_a_busy_worker,
    kill_mid_synthesize_then_resume,
    markers,
    reference_run,
)

from kespeechchat.store import TMP_PREFIX
from kespeechchat.testing import (
    assert_no_partial_files,
    cli_run_command,
    final_rows,
)

pytestmark = [pytest.mark.slow, pytest.mark.faults, pytest.mark.ray]


@pytest.fixture(scope="module")
def expected_ray(tmp_path_factory, sample_data, models_dir) -> list[tuple[str, str]]:
    """The uninterrupted run on the Ray executor. Its workers run with one OpenMP thread, the
    in-process executor with the machine's default, and a dialogue at the edge of a threshold can
    land on either side: a resumed Ray run is compared with an uninterrupted Ray run."""
    return final_rows(reference_run(tmp_path_factory, sample_data, "ray"))


def test_sigkill_mid_synthesize_then_resume_on_ray(tmp_path, sample_data, expected_ray):
    kill_mid_synthesize_then_resume(tmp_path, sample_data, expected_ray, "ray")


@pytest.mark.ray
def test_sigkilled_ray_workers_are_replaced_and_the_run_completes(tmp_path, sample_data, expected_ray):
    """Workers killed at six points of one run (any stage, random delay): each unit is redone on a fresh
    actor, the run completes by itself, and the dataset is the uninterrupted run's."""
    rng = random.Random(7)
    runs = tmp_path / "runs"
    cfg = fault_config(tmp_path, runs, "workers", sample_data, "ray")
    proc = subprocess.Popen(
        cli_run_command(cfg), env=FAULT_ENV, start_new_session=True, stderr=subprocess.PIPE, text=True
    )
    deadline = time.time() + 600
    killed = []
    for target in (2, 6, 10, 14, 18, 22):
        while len(markers(runs / "workers")) < target and proc.poll() is None:
            assert time.time() < deadline
            time.sleep(0.05)
        time.sleep(rng.uniform(0.0, 0.5))
        title = kill_a_busy_worker(proc, rng, deadline)
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
    path = fault_config(tmp_path, runs, "budget", sample_data, {"kind": "ray", "max_unit_retries": 0})
    proc = subprocess.Popen(
        cli_run_command(path), env=FAULT_ENV, start_new_session=True, stderr=subprocess.PIPE, text=True
    )
    first = runs / "budget" / "synthesize" / "_markers" / "shard-00000.json"
    deadline = time.time() + 600
    while not first.exists():
        assert proc.poll() is None and time.time() < deadline, "synthesize never finished its first shard"
        time.sleep(0.05)
    assert kill_a_busy_worker(proc, random.Random(1), deadline), (
        "the run ended before a worker could be killed"
    )
    _, err = proc.communicate(timeout=300)
    assert proc.returncode != 0
    assert re.search(
        r"failed on shard \d+: its worker died 1 time\(s\) \(executor.max_unit_retries=0\)", err
    ), err[-3000:]
    assert_no_partial_files(runs / "budget")
    assert not (runs / "budget" / "dataset").exists()
    subprocess.run(cli_run_command(path), check=True, env=FAULT_ENV, timeout=900)
    assert final_rows(runs / "budget") == expected_ray
