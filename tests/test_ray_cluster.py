"""Two Ray nodes on one machine (`ray start --head` + `ray start --address` with logical GPUs):
the pipeline joins with --address, and GPU stages run only where GPUs are declared."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from faults import FAULT_ENV

from kespeechchat.testing import cli_run_command, demo_sources, final_rows, small_config, write_config

pytestmark = [pytest.mark.slow, pytest.mark.ray]
RAY = str(Path(sys.executable).with_name("ray"))
ENV = FAULT_ENV


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _nodes(address: str) -> list[dict]:
    code = (
        f"import json, ray; ray.init(address={address!r}, log_to_driver=False, logging_level='ERROR');"
        "print(json.dumps([{'id': n['NodeID'], 'gpus': n['Resources'].get('GPU', 0)} for n in ray.nodes() if n['Alive']]))"
    )
    out = subprocess.run([sys.executable, "-c", code], env=ENV, capture_output=True, text=True, timeout=120)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.fixture
def two_node_cluster():
    port = _free_port()
    address = f"127.0.0.1:{port}"
    common = [
        "--node-ip-address=127.0.0.1",
        "--object-store-memory=100000000",
        "--block",
        "--disable-usage-stats",
    ]
    procs = [
        subprocess.Popen(
            [
                RAY,
                "start",
                "--head",
                f"--port={port}",
                "--num-cpus=2",
                "--num-gpus=0",
                "--include-dashboard=false",
                *common,
            ],
            env=ENV,
            start_new_session=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    ]
    try:
        deadline = time.time() + 90
        while True:
            try:
                if _nodes(address):
                    break
            except (json.JSONDecodeError, IndexError, subprocess.TimeoutExpired):
                pass
            assert time.time() < deadline, "ray head did not come up"
            time.sleep(2)
        procs.append(
            subprocess.Popen(
                [RAY, "start", f"--address={address}", "--num-cpus=1", "--num-gpus=1", *common],
                env=ENV,
                start_new_session=True,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
        while len(_nodes(address)) < 2:
            assert time.time() < deadline + 60, "ray worker node did not join"
            time.sleep(2)
        yield address
    finally:
        for p in reversed(procs):
            try:
                os.killpg(p.pid, signal.SIGTERM)
                p.wait(timeout=30)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                os.killpg(p.pid, signal.SIGKILL)


@pytest.mark.faults
def test_gpu_stage_runs_only_on_the_gpu_node(tmp_path, two_node_cluster, sample_data, models_dir):
    nodes = _nodes(two_node_cluster)
    gpu_nodes = {n["id"] for n in nodes if n["gpus"] > 0}
    assert len(nodes) == 2 and len(gpu_nodes) == 1
    cfg = small_config(
        tmp_path / "runs",
        demo_sources(sample_data, zh=1, en=1),
        name="cluster",
        shard_size=1,
        executor={"kind": "ray", "stage_gpus": {"synthesize": 1}},
    )
    path = write_config(cfg, tmp_path / "cluster.yaml")
    subprocess.run(cli_run_command(path, "--address", two_node_cluster), check=True, env=ENV, timeout=900)
    run_dir = tmp_path / "runs" / "cluster"
    synth = [json.loads(p.read_text()) for p in (run_dir / "synthesize" / "_markers").glob("shard-*.json")]
    assert synth and all(m["worker"]["node_id"] in gpu_nodes for m in synth)
    assert all(m["worker"]["gpu_ids"] for m in synth)
    others = [json.loads(p.read_text()) for p in (run_dir / "select" / "_markers").glob("shard-*.json")]
    assert all(m["worker"]["executor"] == "ray" and not m["worker"]["gpu_ids"] for m in others)
    assert final_rows(run_dir)


def test_gpu_stage_without_gpus_fails_fast(tmp_path, sample_data, models_dir):
    cfg = small_config(
        tmp_path / "runs",
        demo_sources(sample_data, zh=1, en=0),
        name="nogpu",
        shard_size=1,
        executor={"kind": "ray", "num_cpus": 2, "stage_gpus": {"synthesize": 1}},
    )
    path = write_config(cfg, tmp_path / "nogpu.yaml")
    r = subprocess.run(cli_run_command(path), env=ENV, capture_output=True, text=True, timeout=600)
    assert r.returncode != 0
    assert re.search(r"needs 1(\.0)? GPU per actor but the Ray cluster has 0", r.stderr), r.stderr
