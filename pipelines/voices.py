"""The voice library of a run: built from the config (or read from a file) once, stored in the run."""

from __future__ import annotations

from pathlib import Path

from kespeechchat.config import RunConfig
from kespeechchat.store import file_sha256


def library_path(run_dir: Path) -> Path:
    return Path(run_dir) / "voices" / "library.parquet"


def prepare_run_library(cfg: RunConfig, run_dir: Path) -> Path:
    """Write ``voices/library.parquet`` (user + agent voices) unless an identical one is there."""
    from voice_library.recipes import agent_voices, build_library, load_library, save_library

    path = library_path(run_dir)
    if cfg.voices.library:
        users = [v for v in load_library(cfg.voices.library) if v.role == "user"]
    else:
        users = build_library(cfg.voices.size, cfg.voices.seed, backend=cfg.tts.backend)
    voices = users + agent_voices(backend=cfg.tts.backend)
    if path.exists():
        old = load_library(path)
        if [v.to_dict() for v in old] == [v.to_dict() for v in voices]:
            return path
    save_library(voices, path)
    return path


def load_run_library(cfg: RunConfig, run_dir: Path) -> list:
    from voice_library.recipes import load_library

    path = library_path(run_dir)
    if not path.exists():
        prepare_run_library(cfg, run_dir)
    return load_library(path)


def library_fingerprint(cfg: RunConfig, run_dir: Path) -> str:
    path = library_path(run_dir)
    return file_sha256(path)[:16] if path.exists() else "absent"
