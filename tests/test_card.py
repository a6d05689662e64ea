"""The dataset card of a real tiny run: front matter the Hub and `datasets` read, numbers, plots."""

from __future__ import annotations

import re
import shutil

import numpy as np
import pytest
from test_package import build_tiny_run, repackage, select_accounting

from pipelines.card import LANG_COLORS, ROLE_COLORS, collect_stats, render_body, size_category, write_card
from pipelines.package import UTTERANCE_FIELDS
from pipelines.report import run_summary

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return build_tiny_run(tmp_path_factory)


def _readme(cfg) -> str:
    return (cfg.run_dir / "dataset" / "README.md").read_text(encoding="utf-8")


def test_front_matter_parses_and_matches_the_shards(tiny):
    datasets = pytest.importorskip("datasets")
    from huggingface_hub import DatasetCard

    ds_dir = tiny.run_dir / "dataset"
    d = DatasetCard.load(ds_dir / "README.md").data.to_dict()
    _, utterances = select_accounting(tiny.run_dir)
    stats = collect_stats(ds_dir)
    assert d["license"] == tiny.package.license
    assert d["pretty_name"] == tiny.package.pretty_name
    assert sorted(d["language"]) == sorted(stats["by_language"])
    assert "automatic-speech-recognition" in d["task_categories"] and "text-to-speech" in d["task_categories"]
    assert d["size_categories"] == ["n<1K"]
    assert d["configs"] == [
        {"config_name": "default", "data_files": [{"split": "train", "path": "data/train-*"}]}
    ]
    features = {f["name"]: f["dtype"] for f in d["dataset_info"]["features"]}
    assert list(features) == [name for name, *_ in UTTERANCE_FIELDS]
    assert features["audio"] == {"audio": {"sampling_rate": 24000}}
    assert d["dataset_info"]["splits"][0]["num_examples"] == utterances
    # `datasets` takes the split sizes and features from the card
    info = datasets.load_dataset_builder(str(ds_dir)).info
    assert info.splits["train"].num_examples == utterances
    assert isinstance(info.features["audio"], datasets.Audio)


def test_summary_accounting_and_provenance_are_the_runs(tiny):
    text = _readme(tiny)
    dialogues, utterances = select_accounting(tiny.run_dir)
    assert f"| **all** | {dialogues} | {utterances} |" in text
    stats = collect_stats(tiny.run_dir / "dataset")
    for lg, d in stats["by_language"].items():
        assert f"| {lg} | {d['dialogues']} | {d['utterances']} |" in text
    rs = run_summary(tiny.run_dir)
    for st in rs["stages"]:
        if st["stage"] != "package":
            assert f"| {st['stage']} | {st['rows_in']} | {st['rows_out']} | {st['rows_rejected']} |" in text
    for reason, n in rs["rejected_by_reason"].items():
        assert f"| `{reason}` | {n} |" in text
    assert f"CER (zh) ≤ {tiny.select.max_cer_zh}, WER (en) ≤ {tiny.select.max_wer_en}" in text
    assert "`rewrite.mode: passthrough` keeps the source text" in text  # the tiny run does not use the LLM
    assert "**repair**" in text and "**package**" in text
    assert "Kokoro-82M" in text and "Whisper base" in text and "Resemblyzer" in text
    assert "| `tiny.jsonl` |" in text and "not declared" in text
    assert f"{stats['speakers']} distinct speaker identities" in text
    assert "## Intended use and limits" in text and "synthetic" in text
    assert str(tiny.runs_dir) not in text  # no local paths on a card meant for publishing


def test_plots_exist_show_data_and_are_on_the_card(tiny):
    from PIL import Image

    ds_dir = tiny.run_dir / "dataset"
    text = _readme(tiny)
    shown = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    expected = {
        f"images/{n}.png"
        for n in ("duration", "hours_by_language", "error_rate", "speaker_similarity", "voice_usage")
    }
    assert expected <= set(shown)
    for rel in [*shown, "images/overview.png"]:
        img = Image.open(ds_dir / rel)
        img.verify()

    def has_colour(rel: str, hex_colour: str) -> bool:
        px = np.asarray(Image.open(ds_dir / rel).convert("RGB")).reshape(-1, 3).astype(int)
        rgb = np.array([int(hex_colour[i : i + 2], 16) for i in (1, 3, 5)])
        return bool((np.abs(px - rgb).sum(axis=1) < 30).any())

    langs = collect_stats(ds_dir)["by_language"]
    for lg in langs:  # each language's histogram line is drawn in its colour
        assert has_colour("images/duration.png", LANG_COLORS[lg])
    assert has_colour("images/hours_by_language.png", ROLE_COLORS["user"])
    assert has_colour("images/hours_by_language.png", ROLE_COLORS["assistant"])
    assert has_colour("images/voice_usage.png", ROLE_COLORS["assistant"])


def test_card_command_rewrites_the_same_card(tiny, tmp_path):
    from pipelines.cli import main

    run = tmp_path / tiny.name
    shutil.copytree(tiny.run_dir, run)
    before = (run / "dataset" / "README.md").read_text(encoding="utf-8")
    shutil.rmtree(run / "dataset" / "images")
    (run / "dataset" / "README.md").unlink()
    assert main(["card", str(run)]) == 0
    assert (run / "dataset" / "README.md").read_text(encoding="utf-8") == before
    assert (run / "dataset" / "images" / "voice_usage.png").exists()


def test_card_with_splits_and_declared_licences(tiny, tmp_path):
    datasets = pytest.importorskip("datasets")
    from huggingface_hub import DatasetCard

    shares = {"train": 0.5, "validation": 0.25, "test": 0.25}
    cfg, ds_dir = repackage(tiny, tmp_path, splits=shares, source_licenses={"tiny.jsonl": "CC-BY-4.0"})
    d = DatasetCard.load(ds_dir / "README.md").data.to_dict()
    stats = collect_stats(ds_dir)
    splits = [e["split"] for e in d["configs"][0]["data_files"]]
    assert splits == [s for s in shares if s in stats["splits"]]
    text = (ds_dir / "README.md").read_text(encoding="utf-8")
    for s, v in stats["splits"].items():
        assert f"| {s} | {v['dialogues']} | {v['utterances']} |" in text
    assert "| `tiny.jsonl` | " in text and "| CC-BY-4.0 |" in text
    builder = datasets.load_dataset_builder(str(ds_dir))
    assert {k: v.num_examples for k, v in builder.info.splits.items()} == {
        s: v["utterances"] for s, v in stats["splits"].items()
    }


def test_body_names_llm_models_prompts_and_gates(tiny):
    cfg = tiny.model_copy(deep=True)
    cfg.rewrite.mode = "llm"
    cfg.filter.llm_judge = True
    cfg.select.min_dnsmos_ovrl = 3.0
    stats = collect_stats(tiny.run_dir / "dataset")
    prompts = {"rewrite": {"zh": "aaa111", "en": "bbb222"}, "judge": {"zh": "ccc333", "en": "ddd444"}}
    body = render_body(
        cfg, stats, {}, run_summary(tiny.run_dir), {"prompts": prompts, "empty_splits": []}, "org/name"
    )
    assert "Qwen2.5-Coder-1.5B-Instruct" in body and "passthrough" not in body
    assert "rewrite: zh `aaa111`, en `bbb222`; judge: zh `ccc333`, en `ddd444`" in body
    assert "DNSMOS OVRL ≥ 3.0" in body
    assert 'load_dataset("org/name"' in body
    cfg.llm.backend = "openai"
    cfg.llm.model = "qwen2.5-72b-instruct"
    body = render_body(cfg, stats, {}, run_summary(tiny.run_dir), None, None)
    assert "qwen2.5-72b-instruct (OpenAI-compatible server" in body and "not recorded" in body


def test_write_card_refuses_shards_without_features(tiny, tmp_path):
    import pyarrow.parquet as pq

    ds = tmp_path / "ds"
    (ds / "data").mkdir(parents=True)
    src = next((tiny.run_dir / "dataset" / "data").glob("*.parquet"))
    pq.write_table(
        pq.read_table(src).replace_schema_metadata(None), ds / "data" / "train-00000-of-00001.parquet"
    )
    with pytest.raises(ValueError, match="no `huggingface` features in the Parquet metadata"):
        write_card(ds, tiny, tiny.run_dir)


def test_size_categories():
    assert [size_category(n) for n in (0, 999, 1000, 9_999, 10_000, 999_999, 1_000_000, 7_000_000, 20_000_000)] == [
        "n<1K", "n<1K", "1K<n<10K", "1K<n<10K", "10K<n<100K", "100K<n<1M", "1M<n<10M", "1M<n<10M", "10M<n<100M",
    ]  # fmt: skip
