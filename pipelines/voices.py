"""The voice library of a run: built from the config (or read from a file) once, stored in the run.

``voices/library.parquet`` holds the user voices and the agent voices, and its metadata says how
many distinct identities it has and at which cosine bound they were measured distinct; the
dataset card counts identities from it, never recipes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kespeechchat.config import RunConfig
from kespeechchat.store import RunStore, file_sha256
from voice_library.assignment import usage_histogram
from voice_library.embeddings import backend_encoder, check_encoder
from voice_library.pool import load_pool, shipped_pool
from voice_library.recipes import (
    agent_voices,
    build_library,
    library_meta,
    library_meta_for,
    load_library,
    save_library,
)


def library_path(run_dir: Path) -> Path:
    return RunStore(run_dir).library_path


def _check_embeddings(backend: str, voices: list, encoder: str, source: str) -> None:
    """An embedding-conditioned backend gets voices from its own encoder, each of its size
    (else every turn fails in the TTS, or worse, speaks in a voice from another space)."""

    want = backend_encoder(backend)
    if want is None:
        return
    name, dim = want
    for x in voices:
        n = 0 if x.speaker_embedding is None else len(x.speaker_embedding)
        if n != dim:
            raise ValueError(
                f"{source}: voice {x.voice_id} has {n} embedding values; {backend} takes {dim} ({name})"
            )
    check_encoder(backend, encoder, dim, source)


def resolve_voices(cfg: RunConfig) -> tuple[list, dict[str, Any]]:

    v = cfg.voices
    backend = cfg.tts.backend
    if v.library:
        voices = load_library(v.library)
        wrong = sorted({x.backend for x in voices} - {backend})
        if wrong:
            raise ValueError(f"{v.library}: voices for backend(s) {wrong}, but tts.backend is {backend!r}")
        users = [x for x in voices if x.role == "user"]
        agents = [x for x in voices if x.role == "agent"]
        meta = library_meta(v.library)
        if not users:
            raise ValueError(f"{v.library}: the library has no user voices")
        if not agents:
            pool = load_pool(v.pool or shipped_pool(backend)) if (v.pool or shipped_pool(backend)) else None
            if pool is None:
                raise ValueError(
                    f"{v.library}: no agent voices in the library and no voices.pool to choose them from"
                )
            agents = agent_voices(backend, pool=pool, max_identity_cosine=v.max_identity_cosine)
        _check_embeddings(
            backend, users + agents, (meta.get("distinct") or {}).get("encoder") or "", str(v.library)
        )
        return users + agents, {**meta, "source": str(v.library)}
    if not v.pool and shipped_pool(backend) is None:
        raise ValueError(
            f"tts.backend {backend!r} needs voices.pool (a pool of sampled speaker embeddings, "
            "`kespeechchat voices sample-embeddings`) or voices.library"
        )
    pool = load_pool(v.pool or shipped_pool(backend))
    if v.max_identity_cosine is not None:
        if v.max_identity_cosine > pool.max_identity_cosine:
            raise ValueError(
                f"voices.max_identity_cosine {v.max_identity_cosine} is looser than the pool's bound "
                f"{pool.max_identity_cosine}; identities beyond the pool were never measured"
            )
        pool = pool.restrict(v.max_identity_cosine)
    users = build_library(v.size, v.seed, backend, pool=pool)
    agents = agent_voices(backend, pool=pool)
    voices = users + agents
    _check_embeddings(
        backend, voices, (pool.meta.get("measured_with") or {}).get("encoder") or "", str(v.pool)
    )
    return voices, library_meta_for(voices, pool, seed=v.seed, source="built for the run")


def prepare_run_library(cfg: RunConfig, run_dir: Path) -> Path:
    """Write ``voices/library.parquet`` (user + agent voices) unless an identical one is there."""

    path = library_path(run_dir)
    voices, meta = resolve_voices(cfg)
    if path.exists():
        old = load_library(path)
        if [v.to_dict() for v in old] == [v.to_dict() for v in voices]:
            return path
    save_library(voices, path, meta)
    return path


def load_run_library(cfg: RunConfig, run_dir: Path) -> list:

    path = library_path(run_dir)
    if not path.exists():
        prepare_run_library(cfg, run_dir)
    return load_library(path)


def library_fingerprint(cfg: RunConfig, run_dir: Path) -> str:
    path = library_path(run_dir)
    return file_sha256(path)[:16] if path.exists() else "absent"


def run_usage(run_dir: str | Path) -> dict[str, Any]:
    """The usage histogram of a run, read from the assign stage's output shards."""
    import pyarrow.parquet as pq

    run_dir = Path(run_dir)
    files = RunStore(run_dir).shard_files("assign")
    if not files:
        raise FileNotFoundError(f"{run_dir}: the assign stage has no output yet")
    voices = load_library(library_path(run_dir))
    lib = {v.voice_id: v for v in voices}
    user_ids: list[str] = []
    for f in files:
        t = pq.read_table(f, columns=["voice_ids", "roles"]).to_pylist()
        for r in t:
            ids = {vid for vid, role in zip(r["voice_ids"], r["roles"], strict=True) if role == "user"}
            user_ids += sorted(ids)
    return usage_histogram(user_ids, lib.values())
