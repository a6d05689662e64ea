"""Reference audio of a voice: what speaker verification compares each utterance with.

A virtual voice has no real recording, so its reference is its own probe sentence, synthesised
once per (voice, language) and kept in the run (``voices/refs/<voice_id>-<lang>.flac``).
"""

from __future__ import annotations

from pathlib import Path

from kespeechchat.audio import encode_flac
from kespeechchat.store import RunStore, write_bytes_atomic

PROBE_TEXTS = {
    "zh": "今天天气很好，我们一起去公园散步吧。你最近工作忙不忙？",
    "en": "The weather is lovely today, so let's take a walk in the park. How has work been lately?",
}


def ref_path(run_dir: Path, voice_id: str, language: str) -> Path:
    return RunStore(run_dir).voice_ref_path(voice_id, language)


def ensure_ref(run_dir: Path, tts, recipe, language: str, seed: int = 0) -> Path:
    """Synthesise the probe for (voice, language) unless it exists; atomic, so concurrent workers are safe."""

    path = ref_path(run_dir, recipe.voice_id, language)
    if not path.exists():
        audio = tts.synthesize(PROBE_TEXTS[language], language, recipe, seed=seed)
        write_bytes_atomic(path, encode_flac(audio, tts.sample_rate_hz))
    return path
