"""End-to-end runs with the real embedded TTS/ASR/speaker models (text stages without the LLM)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from kespeechchat.testing import small_config
from pipelines.executors import LocalExecutor
from pipelines.report import read_rejects, run_summary
from pipelines.runner import Pipeline

pytestmark = pytest.mark.slow

BAD_RECORDS = [
    '{"instruction": "你好吗？", "input": "", "output": "我很好，谢谢你。"}',  # valid zh
    '{"instruction": "Say hello.", "input": "", "output": "Hello there, nice to meet you."}',  # valid en
    '{"instruction": "broken", "output": ',  # bad JSON
    '{"conversations": [{"from": "human"}]}',  # missing field (value)
    '{"messages": [{"role": "user", "content": "   "}, {"role": "assistant", "content": "ok"}]}',  # empty turn
    '{"messages": [{"role": "user", "content": "hi"}, {"role": "tool", "content": "{}"}]}',  # a tool call
    '{"instruction": "What is the weather like today?", "input": "", "output": "It is sunny and warm today."}',  # valid en
]


@pytest.fixture(scope="module")
def sources(tmp_path_factory, sample_data) -> list[dict]:
    d = tmp_path_factory.mktemp("src")
    bad = d / "mixed.jsonl"
    bad.write_text("\n".join(BAD_RECORDS) + "\n", encoding="utf-8")
    return [
        {"path": str(bad)},
        {
            "path": str(sample_data / "text" / "zh_llamafactory_alpaca_zh_demo.json"),
            "limit": 1,
            "max_chars": 40,
            "languages": ["zh"],
        },
    ]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, sources, models_dir):
    runs = tmp_path_factory.mktemp("runs")
    cfg = small_config(runs, sources, name="e2e", shard_size=2)
    result = Pipeline(cfg, quiet=True).run(executor=LocalExecutor())
    return cfg, result


def _dataset_rows(dataset_dir: Path) -> list[dict]:
    rows = []
    for f in sorted((dataset_dir / "data").glob("train-*.parquet")):
        rows += pq.read_table(
            f, columns=["utterance_id", "dialogue_id", "turn_index", "duration_s"]
        ).to_pylist()
    return rows


def test_malformed_records_rejected_with_reasons_and_the_rest_go_through(finished_run):
    cfg, result = finished_run
    rej = read_rejects(cfg.run_dir, stage="ingest").to_pylist()
    by_index = {r["record_index"]: r for r in rej if r["source_file"] == "mixed.jsonl"}
    assert by_index[2]["reason"] == "bad_json"
    assert by_index[3]["reason"] == "missing_field"
    assert by_index[4]["reason"] == "empty_turn"
    assert by_index[5]["reason"] == "tool_call"
    assert "tool" in by_index[5]["detail"]
    assert set(by_index) == {2, 3, 4, 5}
    s = result.summary
    zh_file = Path(cfg.input.sources[1].path)
    assert s["records_in"] == 7 + len(json.loads(zh_file.read_text(encoding="utf-8")))
    assert s["dialogues_in"] == 4  # 3 valid from mixed.jsonl + 1 sampled from the zh file


def test_accounting_in_equals_out_plus_rejected(finished_run):
    cfg, result = finished_run
    prev_out = result.summary["dialogues_in"]
    for st in result.summary["stages"][1:-1]:
        assert st["shards_done"] == st["shards_total"]
        assert st["rows_in"] == prev_out, st
        assert st["rows_in"] == st["rows_out"] + st["rows_rejected"], st
        prev_out = st["rows_out"]


def test_dataset_loads_with_audio(finished_run):
    datasets = pytest.importorskip("datasets")
    import soundfile as sf

    cfg, result = finished_run
    ds = datasets.load_dataset(str(result.dataset_dir), split="train")
    assert isinstance(ds.features["audio"], datasets.Audio)
    ds = ds.cast_column("audio", datasets.Audio(decode=False))
    assert len(ds) == result.summary["dataset"]["utterances"] > 0
    ex = ds[0]
    x, sr = sf.read(io.BytesIO(ex["audio"]["bytes"]))
    assert sr == 24000 and len(x) / sr == pytest.approx(ex["duration_s"], rel=1e-3)
    select_out = sum(st["rows_out"] for st in result.summary["stages"] if st["stage"] == "select")
    assert len(set(ds["dialogue_id"])) == select_out


def test_rerun_filter_redoes_filter_and_later_only(finished_run, tmp_path):
    cfg, _ = finished_run
    run_dir = cfg.run_dir

    def markers() -> dict[str, str]:
        out = {}
        for p in run_dir.glob("*/_markers/*.json"):
            out[f"{p.parent.parent.name}/{p.name}"] = json.loads(p.read_text()).get("finished_at", "") + str(
                p.stat().st_mtime_ns
            )
        return out

    before = markers()
    Pipeline(cfg, quiet=True).run(rerun="filter", executor=LocalExecutor())
    after = markers()
    assert before.keys() == after.keys()
    for key in before:
        stage = key.split("/")[0]
        if stage in ("ingest", "rewrite"):
            assert before[key] == after[key], f"{key} was redone"
        else:
            assert before[key] != after[key], f"{key} was not redone"


def test_second_run_skips_everything(finished_run):
    cfg, _ = finished_run
    pipe = Pipeline(cfg, quiet=True)
    seen = []
    pipe.progress.unit_done = lambda stage, shard, marker: seen.append((stage, shard))  # type: ignore[method-assign]
    pipe.run(executor=LocalExecutor())
    assert seen == []


def test_status_numbers_match(finished_run):
    cfg, result = finished_run
    s = run_summary(cfg.run_dir)
    assert s["dataset"]["utterances"] == result.summary["dataset"]["utterances"]


def test_run_with_no_readable_source_fails_with_a_clear_error(tmp_path):
    """Missing source files are rejected per file; when nothing at all could be read, the run says
    so and exits non-zero instead of reporting an empty dataset as success."""
    import subprocess

    from kespeechchat.testing import cli_run_command, write_config

    cfg = small_config(tmp_path / "runs", [{"path": str(tmp_path / "nope.jsonl")}], name="empty")
    res = subprocess.run(
        cli_run_command(write_config(cfg, tmp_path / "c.yaml"), "--executor", "local"),
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert res.returncode == 1, res.stderr[-2000:]
    assert "no dialogue could be read" in res.stderr and "unreadable_file 1" in res.stderr
    rejects = read_rejects(tmp_path / "runs" / "empty").to_pylist()
    assert [r["reason"] for r in rejects] == ["unreadable_file"] and "nope.jsonl" in rejects[0]["detail"]


def test_export_of_a_real_run_loads_and_matches_its_accounting(finished_run, tmp_path):
    """The Hub export folder of a run made by the real models: what `datasets` loads is what the run
    counted (dialogues, utterances, audio seconds), and every clip's length is its duration_s."""
    import soundfile as sf

    from pipelines.hub import export_folder

    datasets = pytest.importorskip("datasets")
    cfg, _ = finished_run
    report = export_folder(cfg.run_dir, "kespeechchat/e2e", tmp_path / "export")
    ds = datasets.load_dataset(str(tmp_path / "export"), split="train")
    summary = run_summary(cfg.run_dir)
    kept = next(st["rows_out"] for st in summary["stages"] if st["stage"] == "select")
    assert kept >= 1
    assert len(set(ds["dialogue_id"])) == kept == summary["dataset"]["dialogues"]
    assert (
        len(ds)
        == report["rows"]
        == summary["dataset"]["utterances"]
        == sum(n for _, n in {(d, n) for d, n in zip(ds["dialogue_id"], ds["num_turns"], strict=True)})
    )
    raw = ds.cast_column("audio", datasets.Audio(decode=False))
    total_s = 0.0
    for ex in raw:
        x, sr = sf.read(io.BytesIO(ex["audio"]["bytes"]))
        assert len(x) / sr == pytest.approx(ex["duration_s"], rel=1e-3)
        total_s += len(x) / sr
    assert total_s == pytest.approx(summary["dataset"]["audio_s"], rel=1e-3)
