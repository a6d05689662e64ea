"""Helpers for tests (shipped with the library so users' tests can build tiny real runs too)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kespeechchat.config import RunConfig


def small_config(
    runs_dir: Path,
    sources: list[dict[str, Any]],
    *,
    name: str = "t",
    shard_size: int = 2,
    llm: bool = False,
    executor: str = "local",
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
        "executor": {"kind": executor, "num_cpus": 2, "object_store_mb": 128},
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
