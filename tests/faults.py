"""What the fault tests share: their run config, the uninterrupted reference run made once per
session, and the ways they kill a run (the driver's session, or one busy Ray stage actor)."""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
from conftest import made_once

from kespeechchat.store import TMP_PREFIX
from kespeechchat.testing import (
    assert_no_partial_files,
    cli_run_command,
    demo_sources,
    final_rows,
    small_config,
    write_config,
)

FAULT_ENV = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"}


def fault_config(tmp: Path, runs: Path, name: str, sample_data: Path, executor: str | dict = "local") -> Path:
    """The fault tests' run: four short real dialogues, one per shard, written as a config file."""
    cfg = small_config(runs, demo_sources(sample_data), name=name, shard_size=1, executor=executor)
    return write_config(cfg, tmp / f"{name}.yaml")


def reference_run(tmp_path_factory: pytest.TempPathFactory, sample_data: Path, executor: str) -> Path:
    """The fault tests' run made once without interruption (per executor, per session): its folder.

    The resume and disk-full tests compare what they make after their faults with its dataset.
    """

    def build(folder: Path) -> None:
        cfg = fault_config(folder, folder / "runs", "reference", sample_data, executor)
        subprocess.run(cli_run_command(cfg), check=True, env=FAULT_ENV, timeout=900)
        assert final_rows(folder / "runs" / "reference"), "the reference run produced no rows"

    return made_once(tmp_path_factory, f"reference-{executor}", build) / "runs" / "reference"


def markers(run_dir: Path) -> list[Path]:
    return [p for p in run_dir.glob("*/_markers/*.json") if not p.name.startswith(TMP_PREFIX)]


def kill_mid_synthesize_then_resume(tmp_path: Path, sample_data: Path, expected, executor: str) -> None:
    """SIGKILL the whole run one second into synthesize's second shard, rerun it, compare."""
    runs = tmp_path / "runs"
    cfg = fault_config(tmp_path, runs, "killed", sample_data, executor)
    proc = subprocess.Popen(cli_run_command(cfg), env=FAULT_ENV, start_new_session=True)
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

    subprocess.run(cli_run_command(cfg), check=True, env=FAULT_ENV, timeout=900)
    got = final_rows(runs / "killed")
    assert got == expected
    assert len({u for u, _ in got}) == len(got)
    assert not list((runs / "killed").rglob(TMP_PREFIX + "*"))


def stage_workers(session: int) -> dict[int, str]:
    """pid -> process title of every live stage actor of the run started as session leader ``session``
    (`ray::SynthesizeWorker.run` while it works). Ray's processes keep the driver's session, so a
    Ray run of another test running beside this one is never touched."""
    out = subprocess.run(["ps", "-eo", "pid,sid,args"], capture_output=True, text=True).stdout
    found = {}
    for line in out.splitlines()[1:]:
        parts = line.split(None, 2)
        if len(parts) == 3 and int(parts[1]) == session and re.match(r"ray::[A-Za-z]+Worker\b", parts[2]):
            found[int(parts[0])] = parts[2].strip()
    return found


def kill_a_busy_worker(proc: subprocess.Popen, rng: random.Random, deadline: float) -> str | None:
    """SIGKILL one stage actor that is running a unit; None when the run ends first."""
    while proc.poll() is None:
        assert time.time() < deadline, "no stage worker was seen running a unit"
        busy = {pid: t for pid, t in stage_workers(proc.pid).items() if t.split()[0].endswith(".run")}
        for pid in rng.sample(sorted(busy), len(busy)):
            try:
                os.kill(pid, signal.SIGKILL)
                return busy[pid].split()[0]
            except ProcessLookupError:  # finished and freed between ps and kill
                continue
        time.sleep(0.05)
    return None
