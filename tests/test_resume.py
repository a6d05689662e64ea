"""A run killed with SIGKILL in the middle of a speech stage resumes to the same final rows."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from kespeechchat.store import TMP_PREFIX
from kespeechchat.testing import small_config

pytestmark = pytest.mark.slow


def _write_config(tmp: Path, runs: Path, name: str, shared_data: Path, executor: str) -> Path:
    cfg = small_config(
        runs,
        [
            {"path": str(shared_data / "text" / "zh_llamafactory_alpaca_zh_demo.json"), "limit": 2, "max_chars": 50, "languages": ["zh"]},
            {"path": str(shared_data / "text" / "en_llamafactory_alpaca_en_demo.json"), "limit": 2, "max_chars": 110, "languages": ["en"]},
        ],
        name=name,
        shard_size=1,
        executor=executor,
    )
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json")), encoding="utf-8")
    return path


def _cli(config: Path) -> list[str]:
    return [sys.executable, "-m", "kespeechchat.cli", "run", "--config", str(config), "--quiet"]


def _final_rows(run_dir: Path) -> list[tuple[str, str]]:
    rows = []
    for f in sorted((run_dir / "dataset" / "data").glob("train-*.parquet")):
        for r in pq.read_table(f, columns=["utterance_id", "audio"]).to_pylist():
            rows.append((r["utterance_id"], hashlib.sha256(r["audio"]["bytes"]).hexdigest()))
    return sorted(rows)


def _assert_no_partial_files(run_dir: Path) -> None:
    for p in run_dir.rglob("*.parquet"):
        if not p.name.startswith(TMP_PREFIX) and TMP_PREFIX not in str(p.parent):
            pq.read_metadata(p)  # raises on a truncated file


ENV = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"}


@pytest.fixture(scope="module")
def expected(tmp_path_factory, shared_data, models_dir) -> list[tuple[str, str]]:
    """Final rows of the same config run once without interruption (in-process executor)."""
    tmp = tmp_path_factory.mktemp("reference")
    cfg = _write_config(tmp, tmp / "runs", "reference", shared_data, "local")
    subprocess.run(_cli(cfg), check=True, env=ENV, timeout=900)
    rows = _final_rows(tmp / "runs" / "reference")
    assert rows, "the reference run produced no rows"
    return rows


@pytest.mark.parametrize("executor", ["local", "ray"])
def test_sigkill_mid_synthesize_then_resume(tmp_path, shared_data, expected, executor):
    env = ENV
    runs = tmp_path / "runs"

    cfg = _write_config(tmp_path, runs, "killed", shared_data, executor)
    proc = subprocess.Popen(_cli(cfg), env=env, start_new_session=True)
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
    _assert_no_partial_files(runs / "killed")

    subprocess.run(_cli(cfg), check=True, env=env, timeout=900)
    got = _final_rows(runs / "killed")
    assert got == expected
    assert len({u for u, _ in got}) == len(got)
    assert not list((runs / "killed").rglob(TMP_PREFIX + "*"))
