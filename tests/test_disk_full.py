"""Disk full while writing shards: the run stops with a clear error, leaves no torn file, and
resumes to the same dataset once there is space again (a small tmpfs stands in for the disk)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

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


def test_disk_full_fails_cleanly_and_resumes(tmp_path, tmpfs, sample_data, models_dir):
    ref_cfg = small_config(tmp_path / "ref", demo_sources(sample_data), name="ref", shard_size=1)
    subprocess.run(
        cli_run_command(write_config(ref_cfg, tmp_path / "ref.yaml")), check=True, env=ENV, timeout=900
    )
    expected = final_rows(tmp_path / "ref" / "ref")
    need = _du(tmp_path / "ref" / "ref")

    size_kb = max(64, need // 2 // 1024)
    subprocess.run(["mount", "-o", f"remount,size={size_kb}k", str(tmpfs)], check=True)
    cfg = write_config(
        small_config(tmpfs, demo_sources(sample_data), name="full", shard_size=1), tmp_path / "full.yaml"
    )
    r = subprocess.run(cli_run_command(cfg), env=ENV, capture_output=True, text=True, timeout=900)
    assert r.returncode != 0, "the run should have failed on a full disk"
    assert "No space left on device" in r.stderr, r.stderr[-2000:]
    run_dir = tmpfs / "full"
    assert_no_partial_files(run_dir)
    assert not (run_dir / "dataset").exists()
    done_before = len(list(run_dir.glob("*/_markers/*.json")))
    assert done_before > 0, "nothing was committed before the disk filled"

    subprocess.run(["mount", "-o", f"remount,size={need * 4 // 1024 + 4096}k", str(tmpfs)], check=True)
    subprocess.run(cli_run_command(cfg), check=True, env=ENV, timeout=900)
    assert final_rows(run_dir) == expected
