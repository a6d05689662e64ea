"""Helpers for tests (shipped with the library so users' tests can build tiny real runs too)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kespeechchat.config import RunConfig
from kespeechchat.store import TMP_PREFIX, RunStore


def small_config(
    runs_dir: Path,
    sources: list[dict[str, Any]],
    *,
    name: str = "t",
    shard_size: int = 2,
    llm: bool = False,
    executor: str | dict[str, Any] = "local",
    **overrides: Any,
) -> RunConfig:
    """A fast config: text stages without the LLM unless ``llm``; real TTS, ASR and speaker models."""
    data: dict[str, Any] = {
        "name": name,
        "runs_dir": str(runs_dir),
        "input": {"sources": sources, "shard_size": shard_size},
        "rewrite": {"mode": "llm" if llm else "passthrough"},
        "filter": {"llm_judge": llm},
        "spoken": {"mode": "llm" if llm else "rules"},
        "voices": {"size": 6, "seed": 0},
        "executor": {"kind": "local", "num_cpus": 2, "object_store_mb": 128}
        | ({"kind": executor} if isinstance(executor, str) else executor),
        # Kokoro voices are synthetic; this keeps the unit tests about plumbing, not thresholds.
        "select": {"min_speaker_similarity": 0.5, "max_cer_zh": 0.2, "max_wer_en": 0.2},
    }
    for key, value in overrides.items():
        section = data.setdefault(key, {})
        if isinstance(value, dict) and isinstance(section, dict):
            section.update(value)
        else:
            data[key] = value
    return RunConfig.model_validate(data)


def demo_sources(sample_data: Path, zh: int = 2, en: int = 2) -> list[dict[str, Any]]:
    """Short real dialogues from the sample Alpaca files in data/text (deterministic sample)."""
    text = Path(sample_data) / "text"
    sources = [
        {
            "path": str(text / "zh_llamafactory_alpaca_zh_demo.json"),
            "limit": zh,
            "max_chars": 50,
            "languages": ["zh"],
        },
        {
            "path": str(text / "en_llamafactory_alpaca_en_demo.json"),
            "limit": en,
            "max_chars": 110,
            "languages": ["en"],
        },
    ]
    return [s for s in sources if s["limit"] > 0]


def write_config(cfg: RunConfig, path: Path) -> Path:
    import yaml

    Path(path).write_text(yaml.safe_dump(cfg.model_dump(mode="json"), allow_unicode=True), encoding="utf-8")
    return Path(path)


def cli_run_command(config: Path, *extra: str) -> list[str]:
    import sys

    return [sys.executable, "-m", "pipelines.cli", "run", "--config", str(config), "--quiet", *extra]


def final_rows(run_dir: Path) -> list[tuple[str, str]]:
    """(utterance_id, sha256 of the audio bytes) of a run's dataset, sorted: equal iff the datasets are."""
    import hashlib

    import pyarrow.parquet as pq

    rows = []
    for f in sorted((RunStore(run_dir).dataset_dir / "data").glob("*.parquet")):
        for r in pq.read_table(f, columns=["utterance_id", "audio"]).to_pylist():
            rows.append((r["utterance_id"], hashlib.sha256(r["audio"]["bytes"]).hexdigest()))
    return sorted(rows)


def assert_no_partial_files(run_dir: Path) -> None:
    """Every final Parquet/JSON file of a run parses (temporary files are allowed, finals never torn)."""
    import json

    import pyarrow.parquet as pq

    for p in Path(run_dir).rglob("*"):
        if not p.is_file() or any(part.startswith(TMP_PREFIX) for part in p.parts):
            continue
        if p.suffix == ".parquet":
            pq.read_metadata(p)
        elif p.suffix == ".json":
            json.loads(p.read_text(encoding="utf-8"))
