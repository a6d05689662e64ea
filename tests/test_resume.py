"""Crashes of the driver: SIGKILL of a local run at many points; reruns resume to exactly the same
dataset (same ids, same audio bytes), with no duplicates and no torn files. The Ray executor's
crashes are in test_resume_ray.py (a file of its own, so the two run side by side)."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import time

import pytest
from faults import FAULT_ENV, fault_config, kill_mid_synthesize_then_resume, markers, reference_run

from kespeechchat.testing import assert_no_partial_files, cli_run_command, final_rows

pytestmark = [pytest.mark.slow, pytest.mark.faults]


@pytest.fixture(scope="module")
def expected(tmp_path_factory, sample_data, models_dir) -> list[tuple[str, str]]:
    """Final rows of the same config run once without interruption (in-process executor)."""
    return final_rows(reference_run(tmp_path_factory, sample_data, "local"))


def test_sigkill_mid_synthesize_then_resume(tmp_path, sample_data, expected):
    kill_mid_synthesize_then_resume(tmp_path, sample_data, expected, "local")


def test_ten_kills_at_random_points_then_identical_dataset(tmp_path, sample_data, expected):
    """One run killed again and again (after 1, 4, 7 … units, plus a random delay), resumed each time."""
    rng = random.Random(20261125)
    runs = tmp_path / "runs"
    cfg = fault_config(tmp_path, runs, "chain", sample_data)
    run_dir = runs / "chain"
    kills = 0
    for target in range(1, 32, 3):
        proc = subprocess.Popen(cli_run_command(cfg), env=FAULT_ENV, start_new_session=True)
        deadline = time.time() + 600
        while len(markers(run_dir)) < target and proc.poll() is None:
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
    subprocess.run(cli_run_command(cfg), check=True, env=FAULT_ENV, timeout=900)
    assert final_rows(run_dir) == expected
