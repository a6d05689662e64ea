"""End-to-end runs with the real embedded TTS/ASR/speaker models (text stages without the LLM)."""

from __future__ import annotations

import io
import json
import os
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


@pytest.fixture(scope="module")
def run_with_rejects(finished_run, tmp_path_factory):
    """A copy of the finished run whose select stage was rerun with a speaker-similarity bound
    between its dialogues' lowest similarities, so that it holds accepted dialogues and rejected
    dialogues with audio."""
    import shutil

    from kespeechchat.config import RunConfig

    cfg, _ = finished_run
    runs = tmp_path_factory.mktemp("strict-runs")
    shutil.copytree(cfg.run_dir, runs / cfg.name)
    lows = sorted(
        min(sims)
        for f in sorted((cfg.run_dir / "select" / "data").glob("*.parquet"))
        for sims in pq.read_table(f, columns=["speaker_similarities"])
        .column("speaker_similarities")
        .to_pylist()
    )
    assert len(lows) >= 2 and lows[0] < lows[-1], lows
    data = cfg.model_dump(mode="json")
    data["runs_dir"] = str(runs)
    bound = (lows[0] + lows[-1]) / 2
    data["select"].update(min_speaker_similarity=bound, min_speaker_similarity_short=bound)
    strict = RunConfig.model_validate(data)
    Pipeline(strict, quiet=True).run(only="select", executor=LocalExecutor())
    return strict


def test_report_page_plays_its_audio_and_filters_in_a_real_browser(run_with_rejects, tmp_path):
    """`kespeechchat report` on a real run, opened in headless Chromium: every player loads its
    audio (with the turn's duration), the filters hide and show what they say, a screenshot is saved."""
    import shutil as sh

    from pipelines.cli import main
    from pipelines.listen import ReportOptions, write_report

    chromium = os.environ.get("KESPEECHCHAT_CHROMIUM") or sh.which("chromium") or sh.which("chromium-browser")
    if not chromium:
        pytest.skip("needs Debian's chromium (make install puts it there when run as root)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="needs playwright (the dev extra)")

    cfg = run_with_rejects
    assert main(["report", str(cfg.run_dir)]) == 0
    page_path = cfg.run_dir / "report" / "index.html"
    assert page_path.is_file()
    accepted = sum(1 for _ in cfg.run_dir.glob("select/data/*.parquet"))
    assert accepted, "the run has select output"
    html_text = page_path.read_text(encoding="utf-8")
    assert "Rejects per stage and reason" in html_text and "select" in html_text

    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 1400, "height": 1100})
        page.goto(page_path.as_uri())
        n_audio = page.locator("audio").count()
        assert n_audio > 0
        page.wait_for_function(
            "() => [...document.querySelectorAll('audio')].every(a => a.readyState >= 1 && a.duration > 0)",
            timeout=60_000,
        )
        shown = page.eval_on_selector_all(
            "article.dlg", "els => els.map(e => ({status: e.dataset.status, lang: e.dataset.lang}))"
        )
        statuses = {s["status"] for s in shown}
        assert statuses == {"accepted", "rejected"}, statuses
        # every player's duration is its turn's, so each loads the right file
        pairs = page.eval_on_selector_all(
            ".turn", "els => els.map(t => [t.dataset.dur, t.querySelector('audio')?.duration ?? null])"
        )
        assert sum(1 for _, d in pairs if d) == n_audio
        for said, duration in pairs:
            if duration is not None:
                assert abs(duration - float(said)) < 0.1, (said, duration)

        def visible(selector: str) -> list[dict]:
            return page.eval_on_selector_all(
                selector,
                "els => els.filter(e => !e.hidden && !e.closest('[hidden]')).map(e => ({...e.dataset}))",
            )

        page.select_option("#f-status", "rejected")
        rows = visible("article.dlg")
        assert rows and all(r["status"] == "rejected" for r in rows)
        assert "dialogue(s)" in page.locator("#shown").inner_text()
        page.select_option("#f-status", "")
        lang = shown[0]["lang"]
        page.select_option("#f-lang", lang)
        assert all(r["lang"] == lang for r in visible("article.dlg"))
        page.select_option("#f-lang", "")
        everyone = visible(".turn")
        sims = sorted(float(t["sim"]) for t in everyone if t["sim"])
        cut = sims[len(sims) // 2]
        page.fill("#f-sim-min", f"{cut:.4f}")
        turns = visible(".turn")
        assert turns and len(turns) < len(everyone)
        assert all(float(t["sim"]) >= cut - 1e-4 for t in turns)
        page.fill("#f-sim-min", "")
        errs = sorted(float(t["err"]) for t in everyone if t["err"])
        page.fill("#f-err-max", f"{errs[0]:.4f}")
        turns = visible(".turn")
        assert turns and all(float(t["err"]) <= errs[0] + 1e-4 for t in turns)
        page.fill("#f-err-max", "")
        assert len(visible(".turn")) == len(everyone)
        page.check("#f-fail-only")
        fails = page.eval_on_selector_all(
            ".turn",
            "els => els.filter(e => !e.hidden && !e.closest('[hidden]')).map(e => e.classList.contains('fail'))",
        )
        assert fails and all(fails)
        page.uncheck("#f-fail-only")
        shot = tmp_path / "report.png"
        page.screenshot(path=str(shot), full_page=False)
        browser.close()
    assert shot.stat().st_size > 10_000

    # a size limit leaves dialogues out and says so; the sample is seeded
    small = write_report(cfg.run_dir, tmp_path / "small", ReportOptions(max_mb=0.05, seed=1))
    assert small.omitted_for_size > 0 and small.audio_bytes <= 50_000
    assert "left out" in (tmp_path / "small" / "index.html").read_text(encoding="utf-8")


def test_plan_from_a_real_run_uses_its_markers(finished_run):
    """`plan --from-run`: shares kept, work per dialogue and throughputs come from the run's markers."""
    from pipelines.plan import make_plan, run_measurements
    from pipelines.report import load_run_config

    cfg, _ = finished_run
    run_cfg = load_run_config(cfg.run_dir)
    plan = make_plan(run_cfg, hours=1, run_dir=cfg.run_dir)
    m = run_measurements(run_cfg, cfg.run_dir)
    syn = next(s for s in plan.stages if s.stage == "synthesize")
    assert syn.rate.value == pytest.approx(m["synthesize"]["work"] / m["synthesize"]["busy_s"])
    assert syn.rate.source.startswith(f"run {cfg.run_dir.name}")
    sel = next(s for s in plan.stages if s.stage == "select")
    assert sel.pass_rate.value == pytest.approx(m["select"]["rows_out"] / m["select"]["rows_in"])
    total_audio = sum(
        sum(d)
        for f in sorted((cfg.run_dir / "select" / "data").glob("*.parquet"))
        for d in pq.read_table(f, columns=["durations_s"]).column("durations_s").to_pylist()
    )
    assert plan.accepted_dialogues == pytest.approx(3600 / (total_audio / m["select"]["rows_out"]))
