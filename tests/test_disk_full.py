"""Disk full while writing shards: the run stops with a clear error, leaves no torn file, and
resumes to the same dataset once there is space again (a small tmpfs stands in for the disk)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from faults import FAULT_ENV, fault_config, reference_run

from kespeechchat.testing import assert_no_partial_files, cli_run_command, final_rows

pytestmark = [pytest.mark.slow, pytest.mark.faults]


def _du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


@pytest.fixture
def tmpfs(tmp_path):
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("needs root to mount a tmpfs")
    r = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(mnt)], capture_output=True, text=True
    )
    if r.returncode != 0:
        pytest.skip(f"cannot mount tmpfs here: {r.stderr.strip()}")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_disk_full_fails_cleanly_and_resumes(tmp_path, tmp_path_factory, tmpfs, sample_data, models_dir):
    # the uninterrupted run of the same config is the resume tests' (made once per session)
    ref = reference_run(tmp_path_factory, sample_data, "local")
    expected = final_rows(ref)
    need = _du(ref)

    size_kb = max(64, need // 2 // 1024)
    subprocess.run(["mount", "-o", f"remount,size={size_kb}k", str(tmpfs)], check=True)
    cfg = fault_config(tmp_path, tmpfs, "full", sample_data)
    r = subprocess.run(cli_run_command(cfg), env=FAULT_ENV, capture_output=True, text=True, timeout=900)
    assert r.returncode != 0, "the run should have failed on a full disk"
    assert "No space left on device" in r.stderr, r.stderr[-2000:]
    run_dir = tmpfs / "full"
    assert_no_partial_files(run_dir)
    assert not (run_dir / "dataset").exists()
    done_before = len(list(run_dir.glob("*/_markers/*.json")))
    assert done_before > 0, "nothing was committed before the disk filled"

    subprocess.run(["mount", "-o", f"remount,size={need * 4 // 1024 + 4096}k", str(tmpfs)], check=True)
    subprocess.run(cli_run_command(cfg), check=True, env=FAULT_ENV, timeout=900)
    assert final_rows(run_dir) == expected
