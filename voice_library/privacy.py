"""Privacy: no virtual voice may sound like a real person the encoder can pick out.

References are real recordings (e.g. ``data/audio``) and, for Kokoro, the shipped base
voices, which stand for the real speakers the TTS learnt them from. A library passes when every
identity's centroid embedding has cosine ≤ ``max_cosine`` to every reference; the report names
the closest identity to each reference either way.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from voice_library.embeddings import embed_recordings

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3")
DEFAULT_MAX_COSINE = 0.85


class PrivacyError(ValueError):
    """A library voice is closer to a real reference speaker than the configured bound."""


def reference_files(path: str | Path) -> list[Path]:
    """Audio files under ``path`` (a file or a directory), sorted; an error if there are none."""
    p = Path(path)
    files = [p] if p.is_file() else sorted(f for f in p.glob("*") if f.suffix.lower() in AUDIO_SUFFIXES)
    if not files:
        raise FileNotFoundError(f"no reference recordings ({', '.join(AUDIO_SUFFIXES)}) at {p}")
    return files


def reference_embeddings(path: str | Path, encoder: Any) -> dict[str, np.ndarray]:
    """Unit embedding of each real recording under ``path``, by file name."""

    files = reference_files(path)
    vecs, names = embed_recordings(files, encoder)
    return {n: v / np.linalg.norm(v) for n, v in zip(names, vecs, strict=True)}


def privacy_report(
    centroids: np.ndarray,
    identity_ids: Sequence[str],
    references: Mapping[str, np.ndarray],
    max_cosine: float = DEFAULT_MAX_COSINE,
) -> dict[str, Any]:
    """Closest identity to each reference and every identity over the bound."""
    if not references:
        raise ValueError("privacy check needs at least one reference embedding")
    c = np.asarray(centroids, dtype=np.float64)
    c = c / np.maximum(np.linalg.norm(c, axis=1, keepdims=True), 1e-12)
    names = sorted(references)
    r = np.asarray([references[n] for n in names], dtype=np.float64)
    r = r / np.linalg.norm(r, axis=1, keepdims=True)
    s = c @ r.T  # (identities, references)
    closest = []
    for j, name in enumerate(names):
        k = int(np.argmax(s[:, j]))
        closest.append(
            {"reference": name, "closest_identity": identity_ids[k], "cosine": round(float(s[k, j]), 4)}
        )
    over = [
        {"identity_id": identity_ids[i], "reference": names[j], "cosine": round(float(s[i, j]), 4)}
        for i, j in zip(*np.nonzero(s > max_cosine), strict=True)
    ]
    return {
        "max_cosine": max_cosine,
        "identities_checked": len(identity_ids),
        "references": len(names),
        "closest": sorted(closest, key=lambda d: -d["cosine"]),
        "violations": sorted(over, key=lambda d: -d["cosine"]),
        "passed": not over,
    }


def check_library_privacy(
    voices: Sequence[Any],
    pool: Any,
    references: Mapping[str, np.ndarray],
    max_cosine: float = DEFAULT_MAX_COSINE,
) -> dict[str, Any]:
    """Privacy report over every identity of a library, using the pool's measured centroids."""
    by_id = {i.identity_id: i for i in pool.identities}
    ids = sorted({v.identity_id for v in voices})
    missing = [i for i in ids if i not in by_id or by_id[i].centroid is None]
    if missing:
        raise ValueError(
            f"{len(missing)} identities of the library have no measured centroid in the pool "
            f"(e.g. {missing[0]}); audit them instead (`voices audit --refs`)"
        )
    cents = np.asarray([by_id[i].centroid for i in ids], dtype=np.float64)
    return privacy_report(cents, ids, references, max_cosine)


def format_report(rep: Mapping[str, Any]) -> str:
    lines = [
        f"privacy: {rep['identities_checked']} identities vs {rep['references']} references, bound {rep['max_cosine']}: "
        + ("PASSED" if rep["passed"] else f"FAILED ({len(rep['violations'])} pairs over the bound)")
    ]
    for c in rep["closest"]:
        lines.append(f"  {c['reference']:<40} closest {c['closest_identity']}  cosine {c['cosine']:.3f}")
    for v in rep["violations"][:10]:
        lines.append(f"  over the bound: {v['identity_id']} ~ {v['reference']} cosine {v['cosine']:.3f}")
    return "\n".join(lines)
