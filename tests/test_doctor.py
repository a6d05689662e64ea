"""`kespeechchat doctor`: every check reads what a run would read, and says what is missing."""

from __future__ import annotations

import json

import pytest
from llm_fake import FakeOpenAIServer, FakeReply

from kespeechchat.testing import small_config, write_config
from pipelines.cli import main
from pipelines.doctor import check_llm, check_resources, run_checks, stage_requests


def _rows(out: str) -> dict[tuple[str, str], str]:
    return {(c["component"], c["item"]): c["ok"] for c in json.loads(out)}


def test_a_small_local_config_is_all_ready(tmp_path, models_dir, capsys):
    cfg = small_config(tmp_path / "runs", [{"path": str(tmp_path / "in.jsonl")}])
    path = write_config(cfg, tmp_path / "c.yaml")
    assert main(["doctor", "--config", str(path), "--no-probe", "--json"]) == 0
    rows = _rows(capsys.readouterr().out)
    assert all(ok is not False for ok in rows.values()), rows
    assert rows[("tts", "kokoro (embedded)")] and rows[("asr", "whisper base (embedded)")]
    assert rows[("storage", "runs_dir writable")] and ("resources", "synthesize") in rows
    assert not list((tmp_path / "runs").glob(".doctor-*"))  # the marker is gone


def test_production_paths_that_are_not_there_are_named(tmp_path, capsys):
    """The production recipe on a machine without its models, endpoints or GPUs: exit 1, and each
    missing piece on its own line."""
    cfg = small_config(
        tmp_path / "nowhere" / "runs",
        [{"path": "x.jsonl"}],
        tts={"backend": "cosyvoice", "model_dir": str(tmp_path / "CosyVoice2-0.5B")},
        asr={"backend": "funasr", "model_dir": str(tmp_path / "paraformer"), "device": "cpu"},
        speaker={"backend": "campplus", "model_dir": str(tmp_path / "CosyVoice2-0.5B")},
        voices={"pool": str(tmp_path / "pool.parquet")},
        executor={"stage_gpus": {"synthesize": 1}},
    )
    path = write_config(cfg, tmp_path / "p.yaml")
    assert main(["doctor", "--config", str(path), "--no-probe", "--json"]) == 1
    rows = _rows(capsys.readouterr().out)
    assert rows[("tts", "model directory")] is False
    assert rows[("asr", "model directory")] is False and rows[("asr (en)", "en_model_dir")] is False
    assert rows[("speaker", "campplus.onnx")] is False
    assert rows[("voices", "library")] is False
    assert rows[("storage", "runs_dir")] is False  # nowhere/ does not exist: no shared storage mounted


def test_resources_against_a_cluster(tmp_path):
    cfg = small_config(tmp_path, [{"path": "x.jsonl"}], executor={"stage_gpus": {"synthesize": 1}})
    need = dict(stage_requests(cfg))
    assert need["synthesize"]["GPU"] == 1 and need["verify"]["GPU"] == 0
    big = {"CPU": 64.0, "GPU": 8.0, "memory": 512 * 2**30}
    assert all(c.ok for c in check_resources(cfg, big))
    small = check_resources(cfg, {"CPU": 64.0, "GPU": 0.0, "memory": 512 * 2**30})
    bad = [c for c in small if not c.ok]
    assert [c.item for c in bad] == ["synthesize"] and "cluster has 0 GPU" in bad[0].detail


def test_llm_endpoints_are_probed_over_http(tmp_path):
    """A loopback OpenAI server: reachable, serving the model, and its reply to a structured request
    is JSON (ready) or not (missing); an endpoint nobody listens on is missing."""
    with FakeOpenAIServer(api_key=None) as good, FakeOpenAIServer(api_key=None) as bad:
        good.push(FakeReply.json_content({"ok": True}))
        bad.push(FakeReply(content="Sure! Here is your answer: ok"))
        cfg = small_config(
            tmp_path,
            [{"path": "x.jsonl"}],
            llm=True,
        )
        cfg.llm.backend = "openai"
        cfg.llm.model = good.model
        cfg.llm.endpoints = [good.base_url, bad.base_url, "http://127.0.0.1:9/v1"]
        checks = {(c.item): c.ok for c in check_llm(cfg, timeout_s=5)}
        req = good.chat_requests()[0].body
    assert checks[f"{good.base_url} reachable"] and checks[f"{good.base_url} structured output"]
    assert checks[f"{bad.base_url} structured output"] is False
    assert checks["http://127.0.0.1:9/v1 reachable"] is False
    assert req["response_format"]["type"] in ("json_schema", "json_object")


@pytest.mark.slow
def test_ray_cluster_sees_the_same_storage_on_every_node(tmp_path):
    """With the Ray executor the check starts (or joins) the cluster, and a task pinned to each
    node reads the file the driver wrote under runs_dir."""
    cfg = small_config(tmp_path / "runs", [{"path": "x.jsonl"}], executor="ray")
    checks = run_checks(cfg)
    same = [c for c in checks if c.item.startswith("same path on node")]
    assert same and all(c.ok for c in same)
    assert any(c.component == "ray" and c.ok for c in checks)
