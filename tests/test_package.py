"""Packaging: HF Parquet shards from a real tiny run (embedded TTS/ASR/speaker models), splits, sizes.

The tiny run is made once per session (``tiny_run``; the other dataset test modules reuse it) and
copied when a test repackages it with other settings.
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from conftest import made_once

from kespeechchat.config import PackageConfig, RunConfig
from kespeechchat.testing import small_config
from pipelines.executors import LocalExecutor
from pipelines.package import (
    DATA_FILE_RE,
    dataset_files,
    flatten,
    read_utterances,
    split_of,
)
from pipelines.report import run_summary
from pipelines.runner import Pipeline

pytestmark = pytest.mark.slow

TINY_RECORDS = [
    {"instruction": "你好吗？", "input": "", "output": "我很好，谢谢你。"},
    {"instruction": "Say hello.", "input": "", "output": "Hello there, nice to meet you."},
    {
        "conversations": [
            {"from": "human", "value": "Who are you?"},
            {"from": "gpt", "value": "I am a helpful assistant."},
            {"from": "human", "value": "Have a nice day!"},
            {"from": "gpt", "value": "You too!"},
        ]
    },
    {"instruction": "今天天气怎么样？", "input": "", "output": "今天天气很好，阳光明媚。"},
]


def build_tiny_run(tmp_path_factory: pytest.TempPathFactory) -> RunConfig:
    """A real run of four short zh/en dialogues, made once per test session (``made_once``: the
    worker that asks first builds it, the others wait and read the finished run)."""
    from kespeechchat.models import default_models_dir, prepare_embedded

    def config(base: Path) -> RunConfig:
        src = base / "tiny.jsonl"
        return small_config(base / "runs", [{"path": str(src)}], name="tiny", shard_size=2)

    def build(base: Path) -> None:
        prepare_embedded(default_models_dir(), log=lambda s: None)
        (base / "tiny.jsonl").write_text(
            "\n".join(json.dumps(r, ensure_ascii=False) for r in TINY_RECORDS) + "\n", encoding="utf-8"
        )
        Pipeline(config(base), quiet=True).run(executor=LocalExecutor())

    return config(made_once(tmp_path_factory, "kespeechchat-tiny-run", build))


def repackage(cfg: RunConfig, dest: Path, **package: object) -> tuple[RunConfig, Path]:
    """Copy the run to ``dest`` and package it again with other package settings."""
    shutil.copytree(cfg.run_dir, dest / cfg.name)
    data = cfg.model_dump(mode="json")
    data["runs_dir"] = str(dest)
    data["package"].update(package)
    new = RunConfig.model_validate(data)
    result = Pipeline(new, quiet=True).run(only="package")
    assert result.dataset_dir is not None
    return new, result.dataset_dir


def select_accounting(run_dir: Path) -> tuple[int, int]:
    """(dialogues, utterances) that the select stage kept, from its own outputs."""
    dialogues = utterances = 0
    for p in sorted((run_dir / "select" / "data").glob("shard-*.parquet")):
        t = pq.read_table(p, columns=["roles"])
        dialogues += t.num_rows
        utterances += sum(len(r) for r in t.column("roles").to_pylist())
    return dialogues, utterances


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> RunConfig:
    return build_tiny_run(tmp_path_factory)


def test_shards_are_named_and_counted_like_the_run(tiny):
    ds = tiny.run_dir / "dataset"
    names = sorted(p.name for p in (ds / "data").iterdir())
    assert names == ["train-00000-of-00001.parquet"]
    dialogues, utterances = select_accounting(tiny.run_dir)
    assert dialogues >= 2, "the tiny run should keep most of its dialogues"
    summary = run_summary(tiny.run_dir)["dataset"]
    assert (summary["dialogues"], summary["utterances"]) == (dialogues, utterances)
    assert summary["splits"]["train"]["utterances"] == utterances
    assert sum(pq.ParquetFile(ds / "data" / n).metadata.num_rows for n in names) == utterances


def test_parquet_layout_features_metadata_and_row_groups(tiny):
    path = tiny.run_dir / "dataset" / "data" / "train-00000-of-00001.parquet"
    pf = pq.ParquetFile(path)
    meta = json.loads(pf.schema_arrow.metadata[b"huggingface"])
    assert meta["info"]["features"]["audio"] == {"sampling_rate": 24000, "_type": "Audio"}
    assert str(pf.schema_arrow.field("audio").type) == "struct<bytes: binary, path: string>"
    rg = pf.metadata.row_group(0)
    cols = {rg.column(i).path_in_schema: rg.column(i) for i in range(rg.num_columns)}
    assert cols["audio.bytes"].compression == "UNCOMPRESSED"
    assert "PLAIN" in cols["audio.bytes"].encodings and "RLE_DICTIONARY" not in cols["audio.bytes"].encodings
    assert cols["text"].compression == "SNAPPY"
    rows = pf.read(
        columns=["dialogue_id", "turn_index", "num_turns", "utterance_id", "speaker_id"]
    ).to_pylist()
    # a dialogue's rows are contiguous and in turn order
    seen: list[str] = []
    for r in rows:
        if not seen or seen[-1] != r["dialogue_id"]:
            assert r["dialogue_id"] not in seen
            seen.append(r["dialogue_id"])
        assert r["utterance_id"] == f"{r['dialogue_id']}-{r['turn_index']:02d}"
        assert r["speaker_id"].startswith("i-")
    for d in seen:
        mine = [r for r in rows if r["dialogue_id"] == d]
        assert [r["turn_index"] for r in mine] == list(range(mine[0]["num_turns"]))


def test_load_dataset_reads_audio_and_counts_match(tiny):
    datasets = pytest.importorskip("datasets")
    import soundfile as sf

    ds_dir = tiny.run_dir / "dataset"
    _, utterances = select_accounting(tiny.run_dir)
    ds = datasets.load_dataset(str(ds_dir), split="train")
    assert isinstance(ds.features["audio"], datasets.Audio)
    assert ds.features["audio"].sampling_rate == 24000
    assert len(ds) == utterances
    raw = ds.cast_column("audio", datasets.Audio(decode=False))
    for ex in raw:
        x, sr = sf.read(io.BytesIO(ex["audio"]["bytes"]))
        assert sr == ex["sample_rate_hz"] == 24000
        assert len(x) / sr == pytest.approx(ex["duration_s"], rel=1e-3)
        assert abs(x).max() > 0.01  # speech, not silence


def test_streaming_reads_every_row_and_the_audio_bytes(tiny):
    datasets = pytest.importorskip("datasets")
    import soundfile as sf

    _, utterances = select_accounting(tiny.run_dir)
    stream = datasets.load_dataset(str(tiny.run_dir / "dataset"), split="train", streaming=True)
    stream = stream.cast_column("audio", datasets.Audio(decode=False))
    n = 0
    for ex in stream:
        x, sr = sf.read(io.BytesIO(ex["audio"]["bytes"]))
        assert len(x) / sr == pytest.approx(ex["duration_s"], rel=1e-3)
        n += 1
    assert n == utterances


def test_audio_decodes_with_torchcodec_normal_and_streaming(tiny):
    datasets = pytest.importorskip("datasets")
    pytest.importorskip(
        "torchcodec", reason="datasets decodes audio with torchcodec (dev extra, needs FFmpeg)"
    )
    ds_dir = str(tiny.run_dir / "dataset")
    ds = datasets.load_dataset(ds_dir, split="train")
    ex = ds[0]
    a = ex["audio"]
    assert a["sampling_rate"] == 24000
    assert len(a["array"]) / 24000 == pytest.approx(ex["duration_s"], abs=0.03)
    first = next(iter(datasets.load_dataset(ds_dir, split="train", streaming=True)))
    assert first["utterance_id"] == ex["utterance_id"]
    assert len(first["audio"]["array"]) == len(a["array"])


def test_splits_are_by_dialogue_deterministic_and_load_as_splits(tiny, tmp_path):
    datasets = pytest.importorskip("datasets")
    shares = {"train": 0.5, "validation": 0.25, "test": 0.25}
    cfg, ds_dir = repackage(tiny, tmp_path / "a", splits=shares)
    files = dataset_files(ds_dir)
    rows = read_utterances(ds_dir, ["dialogue_id", "split"]).to_pylist()
    for r in rows:
        assert r["split"] == split_of(r["dialogue_id"], cfg.seed, shares)
    assert set(files) == {r["split"] for r in rows}
    _, utterances = select_accounting(cfg.run_dir)
    assert len(rows) == utterances
    loaded = datasets.load_dataset(str(ds_dir))
    assert set(loaded) == set(files)
    assert sum(len(v) for v in loaded.values()) == utterances
    summary = run_summary(cfg.run_dir)["dataset"]
    assert summary["empty_splits"] == [s for s in shares if s not in files]
    # the same inputs and settings give byte-identical shards
    _, again = repackage(tiny, tmp_path / "b", splits=shares)
    for split, paths in files.items():
        assert [sha(p) for p in paths] == [sha(p) for p in dataset_files(again)[split]]


def test_small_target_cuts_shards_between_dialogues(tiny, tmp_path):
    datasets = pytest.importorskip("datasets")
    cfg, ds_dir = repackage(tiny, tmp_path, target_shard_mb=0.05, row_group_rows=1)
    paths = dataset_files(ds_dir)["train"]
    assert len(paths) >= 2
    for i, p in enumerate(paths):
        mt = DATA_FILE_RE.match(p.name)
        assert mt and int(mt["index"]) == i and int(mt["count"]) == len(paths)
    owner: dict[str, str] = {}
    for p in paths:
        pf = pq.ParquetFile(p)
        assert all(pf.metadata.row_group(i).num_rows == 1 for i in range(pf.metadata.num_row_groups))
        for d in set(pf.read(columns=["dialogue_id"]).column("dialogue_id").to_pylist()):
            assert d not in owner, f"dialogue {d} spans {owner.get(d)} and {p.name}"
            owner[d] = p.name
    _, utterances = select_accounting(cfg.run_dir)
    assert len(datasets.load_dataset(str(ds_dir), split="train")) == utterances


def test_package_skips_when_unchanged_and_rewrites_only_the_card(tiny, tmp_path):
    cfg, ds_dir = repackage(tiny, tmp_path)
    shard = dataset_files(ds_dir)["train"][0]
    before = (shard.stat().st_ino, shard.stat().st_mtime_ns)
    Pipeline(cfg, quiet=True).run(only="package")
    assert (shard.stat().st_ino, shard.stat().st_mtime_ns) == before
    renamed = cfg.model_copy(deep=True)
    renamed.package.pretty_name = "Renamed tiny set"
    Pipeline(renamed, quiet=True).run(only="package")
    assert (shard.stat().st_ino, shard.stat().st_mtime_ns) == before
    assert "# Renamed tiny set" in (ds_dir / "README.md").read_text(encoding="utf-8")
    resized = renamed.model_copy(deep=True)
    resized.package.row_group_rows = 2
    Pipeline(resized, quiet=True).run(only="package")
    new_shard = dataset_files(ds_dir)["train"][0]
    assert (new_shard.stat().st_ino, new_shard.stat().st_mtime_ns) != before


def test_nothing_accepted_gives_an_empty_dataset_that_export_refuses(tiny, tmp_path):
    from pipelines.hub import export_folder

    shutil.copytree(tiny.run_dir, tmp_path / tiny.name)
    data = tiny.model_dump(mode="json")
    data["runs_dir"] = str(tmp_path)
    for key in (
        "min_speaker_similarity",
        "min_speaker_similarity_short",
    ):  # no utterance equals its reference
        if key in data["select"]:
            data["select"][key] = 1.0
    cfg = RunConfig.model_validate(data)
    result = Pipeline(cfg, quiet=True).run(rerun="select", executor=LocalExecutor())
    assert result.summary["dataset"]["utterances"] == 0
    assert result.summary["rejected_by_reason"].get("select:speaker_mismatch", 0) > 0
    (path,) = dataset_files(result.dataset_dir)["train"]
    pf = pq.ParquetFile(path)
    assert pf.metadata.num_rows == 0 and b"huggingface" in pf.schema_arrow.metadata
    assert "| **all** | 0 | 0 |" in (result.dataset_dir / "README.md").read_text(encoding="utf-8")
    # `datasets` cannot load a split without rows, so there is nothing to publish
    with pytest.raises(ValueError, match="no rows: nothing to publish"):
        export_folder(cfg.run_dir, "org/empty")


def test_incomplete_shard_sets_are_refused(tiny, tmp_path):
    _, ds_dir = repackage(tiny, tmp_path, target_shard_mb=0.05)
    paths = dataset_files(ds_dir)["train"]
    paths[-1].unlink()
    with pytest.raises(ValueError, match="split 'train' is incomplete"):
        dataset_files(ds_dir)
    (ds_dir / "data" / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match="notes.txt: not a dataset shard name"):
        dataset_files(ds_dir)


def test_split_assignment_follows_the_shares_and_is_stable():
    shares = {"train": 0.8, "validation": 0.1, "test": 0.1}
    ids = [f"d-{i:016x}" for i in range(20000)]
    first = {d: split_of(d, 0, shares) for d in ids}
    for name, share in shares.items():
        assert sum(1 for v in first.values() if v == name) / len(ids) == pytest.approx(share, abs=0.01)
    assert {d: split_of(d, 0, shares) for d in ids[:500]} == {d: first[d] for d in ids[:500]}
    other_seed = sum(1 for d in ids if split_of(d, 1, shares) != first[d])
    assert other_seed > 0.2 * len(ids)
    assert split_of("x", 0, {"train": 1.0}) == "train"


def test_split_config_is_checked():
    PackageConfig(splits={"train": 0.9, "test": 0.1})
    with pytest.raises(ValueError, match="sum to 1"):
        PackageConfig(splits={"train": 0.5})
    with pytest.raises(ValueError, match="split name"):
        PackageConfig(splits={"train/x": 1.0})
    with pytest.raises(ValueError, match="share must be > 0"):
        PackageConfig(splits={"train": 1.0, "test": 0.0})


def test_flatten_names_the_dialogue_and_column_of_bad_rows():
    row = {
        "dialogue_id": "d-1",
        "language": "en",
        "roles": ["user", "assistant"],
        "spoken_texts": ["a", "b"],
        "rewritten_texts": ["a", "b"],
        "source_texts": ["a", "b"],
        "voice_ids": ["v-1", "v-2"],
        "audio_flac": [b"x", b"y"],
        "sample_rate_hz": 24000,
        "durations_s": [1.0],
        "asr_texts": ["a", "b"],
        "error_rates": [0.0, 0.0],
        "speaker_similarities": [0.9, 0.9],
        "tts_attempts": [1, 1],
        "source_file": "s.jsonl",
        "source_format": "alpaca",
    }
    with pytest.raises(ValueError, match="dialogue d-1: column durations_s has 1 values for 2 turns"):
        flatten(row)
    row["durations_s"] = [1.0, 2.0]
    with pytest.raises(
        ValueError, match="dialogue d-1 turn 1: voice 'v-2' is not in the run's voice library"
    ):
        flatten(row, {"v-1": ("i-1", "female")})
    utts = flatten(row, {"v-1": ("i-1", "female"), "v-2": ("i-2", "male")})
    assert [u["utterance_id"] for u in utts] == ["d-1-00", "d-1-01"]
    assert [u["speaker_id"] for u in utts] == ["i-1", "i-2"] and utts[1]["error_kind"] == "wer"
