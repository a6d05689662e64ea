"""Speaker embeddings for embedding-conditioned TTS (CosyVoice 2): fit, sample, keep private.

CosyVoice speaks in any voice given its speaker embedding (a 192-d CAM++ x-vector). Virtual
identities are embeddings *sampled* from a distribution fitted to real speakers' embeddings, so
they are plausible voices that belong to nobody:

* the direction (unit vector) is Gaussian around the mean direction with a low-rank covariance
  (the principal components of the real embeddings) plus an isotropic residual, shrunk towards
  isotropy so a few speakers do not pin the distribution to their span;
* the length follows the real embeddings' norms (the model was trained on that scale);
* a draw is kept only if its cosine to every real embedding is ≤ ``privacy_max_cosine`` and to
  every kept draw ≤ ``max_identity_cosine`` (distinct in embedding space — whether the TTS
  renders them distinct is for the audit to measure on synthesised speech).

Embeddings come from ``.npy`` (n, d), ``.npz`` (``embeddings`` [+ ``gender``, ``encoder``]) or
Parquet (``embedding`` list column [+ ``gender``, ``speaker_id``]; the encoder in the schema
metadata, as ``voices embed-recordings`` writes it); with genders, one distribution is fitted per
gender and the pool is half female, half male. A CosyVoice pool is sampled only from CAM++
embeddings (``check_encoder``): a 192-d vector from another encoder is another space.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from kespeechchat.audio import load_audio
from kespeechchat.backends import registry
from voice_library.pool import Identity, IdentityPool, identity_id_for

MAX_COMPONENTS = 16
SHRINKAGE = 0.2


@dataclass(frozen=True)
class EmbeddingSet:
    """Real speaker embeddings read from a file: (n, d) vectors and optional per-row labels."""

    vectors: np.ndarray
    genders: list[str] | None = None
    speaker_ids: list[str] | None = None
    source: str = ""
    encoder: str = ""  # the speaker encoder that made them ("" when the file does not say)


def read_embeddings(path: str | Path) -> EmbeddingSet:
    """Read embeddings from .npy / .npz / .parquet; bad input names the file and the row."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"embedding file {p} not found")
    genders = speakers = None
    encoder = ""
    suffix = p.suffix.lower()
    if suffix == ".npy":
        x = np.load(p, allow_pickle=False)
    elif suffix == ".npz":
        with np.load(p, allow_pickle=False) as z:
            if "embeddings" not in z.files:
                raise ValueError(f"{p}: an .npz needs an 'embeddings' array (has {z.files})")
            x = z["embeddings"]
            if "gender" in z.files:
                genders = [str(g) for g in z["gender"]]
            if "encoder" in z.files:
                encoder = str(z["encoder"])
    elif suffix == ".parquet":
        import pyarrow.parquet as pq

        t = pq.read_table(p)
        if "embedding" not in t.column_names:
            raise ValueError(
                f"{p}: a Parquet embedding file needs an 'embedding' list column (has {t.column_names})"
            )
        rows = t.column("embedding").to_pylist()
        lengths = {len(r) if r is not None else 0 for r in rows}
        if len(lengths) != 1 or 0 in lengths:
            bad = next(k for k, r in enumerate(rows) if r is None or len(r) != len(rows[0] or []))
            raise ValueError(f"{p}: row {bad}: embedding missing or of another length than row 0")
        x = np.asarray(rows, dtype=np.float64)
        if "gender" in t.column_names:
            genders = [str(g) for g in t.column("gender").to_pylist()]
        if "speaker_id" in t.column_names:
            speakers = [str(s) for s in t.column("speaker_id").to_pylist()]
        encoder = (t.schema.metadata or {}).get(ENCODER_META_KEY, b"").decode()
    else:
        raise ValueError(f"{p}: unsupported embedding file type {suffix!r} (use .npy, .npz or .parquet)")
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 2 or x.shape[1] < 2:
        raise ValueError(f"{p}: expected an (n ≥ 2, d ≥ 2) array of embeddings, got shape {x.shape}")
    bad_rows = np.flatnonzero(~np.isfinite(x).all(axis=1) | (np.linalg.norm(x, axis=1) == 0))
    if bad_rows.size:
        raise ValueError(f"{p}: row {int(bad_rows[0])}: embedding is zero or not finite")
    if genders is not None:
        wrong = [k for k, g in enumerate(genders) if g not in ("female", "male")]
        if wrong:
            raise ValueError(f"{p}: row {wrong[0]}: gender {genders[wrong[0]]!r} is not 'female' or 'male'")
        if len(genders) != x.shape[0]:
            raise ValueError(f"{p}: {len(genders)} genders for {x.shape[0]} embeddings")
    return EmbeddingSet(x, genders, speakers, str(p), encoder)


ENCODER_META_KEY = b"kespeechchat.encoder"


def backend_encoder(backend: str) -> tuple[str, int] | None:
    """(speaker encoder, dimension) an embedding-conditioned TTS speaks from; None for recipe voices."""
    b = registry.get("tts", backend)
    return None if b.embedding_dim is None else (b.voice_encoder, b.embedding_dim)


def check_encoder(backend: str, encoder: str, dim: int, source: str) -> None:
    """Embeddings from ``encoder`` (``dim`` values) can condition ``backend``, or ValueError saying
    what to do instead."""
    want = backend_encoder(backend)
    if want is None:
        return
    name, size = want
    if encoder != name or dim != size:
        raise ValueError(
            f"{source}: {backend} speaks from {size}-d {name} embeddings, but these are "
            f"{dim}-d from {encoder or 'an encoder the file does not name'}; embed the recordings with "
            f"`kespeechchat voices embed-recordings --encoder {name} --model-dir <CosyVoice model dir>`"
        )


@dataclass(frozen=True)
class EmbeddingModel:
    """A distribution of speaker embeddings: direction (low-rank Gaussian) and length."""

    mean_direction: np.ndarray  # (d,)
    components: np.ndarray  # (k, d) orthonormal
    component_std: np.ndarray  # (k,)
    residual_std: float
    norm_mean: float
    norm_std: float
    n_fit: int

    @property
    def dim(self) -> int:
        return int(self.mean_direction.shape[0])

    def to_dict(self) -> dict[str, Any]:
        return {
            "mean_direction": self.mean_direction.tolist(),
            "components": self.components.tolist(),
            "component_std": self.component_std.tolist(),
            "residual_std": self.residual_std,
            "norm_mean": self.norm_mean,
            "norm_std": self.norm_std,
            "n_fit": self.n_fit,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> EmbeddingModel:
        return cls(
            np.asarray(d["mean_direction"], dtype=np.float64),
            np.asarray(d["components"], dtype=np.float64).reshape(-1, len(d["mean_direction"])),
            np.asarray(d["component_std"], dtype=np.float64),
            float(d["residual_std"]),
            float(d["norm_mean"]),
            float(d["norm_std"]),
            int(d["n_fit"]),
        )


def fit_embedding_model(
    x: np.ndarray, *, max_components: int = MAX_COMPONENTS, shrinkage: float = SHRINKAGE
) -> EmbeddingModel:
    """Fit the direction and length distribution of real embeddings ``x`` (n, d)."""
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"need at least 2 embeddings to fit a distribution, got shape {x.shape}")
    if not 0 <= shrinkage <= 1:
        raise ValueError(f"shrinkage must be in [0, 1], got {shrinkage}")
    norms = np.linalg.norm(x, axis=1)
    u = x / norms[:, None]
    mean = u.mean(axis=0)
    mean_dir = mean / np.linalg.norm(mean)
    centred = u - mean
    n, d = u.shape
    _, s, vt = np.linalg.svd(centred, full_matrices=False)
    var = s**2 / max(n - 1, 1)
    total = float(var.sum())
    k = int(min(max_components, n - 1, d))
    kept = var[:k]
    residual = max(total - float(kept.sum()), 0.0) / max(d - k, 1)
    # shrink towards isotropy: a few speakers must not confine new voices to their span
    iso = total / d
    comp_var = (1 - shrinkage) * kept + shrinkage * iso
    resid_var = (1 - shrinkage) * residual + shrinkage * iso
    return EmbeddingModel(
        mean_direction=mean_dir,
        components=vt[:k],
        component_std=np.sqrt(comp_var),
        residual_std=float(np.sqrt(resid_var)),
        norm_mean=float(norms.mean()),
        norm_std=float(norms.std(ddof=1)) if n > 1 else 0.0,
        n_fit=n,
    )


def draw(model: EmbeddingModel, rng: np.random.Generator, n: int) -> np.ndarray:
    """``n`` raw draws from the model (no privacy or distinctness filter)."""
    d = model.dim
    z = rng.standard_normal((n, model.components.shape[0])) * model.component_std
    dirs = model.mean_direction + z @ model.components + rng.standard_normal((n, d)) * model.residual_std
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    lengths = np.maximum(model.norm_mean + model.norm_std * rng.standard_normal(n), 0.5 * model.norm_mean)
    return dirs * lengths[:, None]


def sample_embeddings(
    model: EmbeddingModel,
    n: int,
    seed: int,
    *,
    references: np.ndarray | None = None,
    privacy_max_cosine: float = 0.75,
    max_identity_cosine: float = 0.9,
    taken: np.ndarray | None = None,
    max_draws: int = 200_000,
) -> np.ndarray:
    """``n`` embeddings that pass the privacy and distinctness bounds, deterministic from ``seed``.

    ``taken`` are identities already in the pool: new draws must be distinct from them too.
    """
    rng = np.random.default_rng(np.random.SeedSequence([seed, 7]))
    refs = None
    if references is not None and len(references):
        refs = np.asarray(references, dtype=np.float64)
        refs = refs / np.linalg.norm(refs, axis=1, keepdims=True)
    kept: list[np.ndarray] = []
    kept_units = np.zeros((0, model.dim))
    if taken is not None and len(taken):
        t = np.asarray(taken, dtype=np.float64)
        kept_units = t / np.linalg.norm(t, axis=1, keepdims=True)
    drawn = 0
    while len(kept) < n and drawn < max_draws:
        batch = draw(model, rng, min(1024, max_draws - drawn))
        drawn += batch.shape[0]
        units = batch / np.linalg.norm(batch, axis=1, keepdims=True)
        ok = np.ones(batch.shape[0], dtype=bool)
        if refs is not None:
            ok &= (units @ refs.T).max(axis=1) <= privacy_max_cosine
        for i in np.flatnonzero(ok):
            if kept_units.shape[0] and float((kept_units @ units[i]).max()) > max_identity_cosine:
                continue
            kept.append(batch[i])
            kept_units = np.vstack([kept_units, units[i]])
            if len(kept) == n:
                break
    if len(kept) < n:
        raise ValueError(
            f"only {len(kept)} of {n} embeddings pass privacy ≤ {privacy_max_cosine} and distinctness "
            f"≤ {max_identity_cosine} after {drawn} draws; loosen a bound or fit more speakers"
        )
    return np.asarray(kept)


def sample_pool(
    embeddings: EmbeddingSet,
    n_identities: int,
    seed: int,
    *,
    privacy_max_cosine: float = 0.75,
    max_identity_cosine: float = 0.9,
    backend: str = "cosyvoice",
    log: Callable[[str], None] | None = None,
) -> Any:
    """An identity pool of sampled embeddings (half female, half male when genders are known)."""

    x = embeddings.vectors
    check_encoder(backend, embeddings.encoder, int(x.shape[1]), embeddings.source)
    if embeddings.genders is None:
        groups: dict[str, np.ndarray] = {"female": x}
        quota = {"female": n_identities}
    else:
        gs = np.asarray(embeddings.genders)
        groups = {g: x[gs == g] for g in ("female", "male") if (gs == g).sum() >= 2}
        if len(groups) < 2:
            raise ValueError(
                f"{embeddings.source}: need ≥ 2 embeddings of each gender to fit one model per gender"
            )
        quota = {"female": n_identities - n_identities // 2, "male": n_identities // 2}
    identities = []
    models = {}
    all_units = np.zeros((0, x.shape[1]))
    for gi, (g, xs) in enumerate(sorted(groups.items())):
        model = fit_embedding_model(xs)
        models[g] = model.to_dict()
        sampled = sample_embeddings(
            model,
            quota[g],
            seed + 1000 * gi,
            references=x,
            privacy_max_cosine=privacy_max_cosine,
            max_identity_cosine=max_identity_cosine,
            taken=all_units,  # both genders' draws stay apart from each other too
        )
        units = sampled / np.linalg.norm(sampled, axis=1, keepdims=True)
        all_units = np.vstack([all_units, units])
        for vec in sampled:
            emb = [round(float(v), 6) for v in vec]
            cond = {
                "backend": backend,
                "base_weights": {"embedding": 1.0},
                "prosody_weights": None,
                "style_offsets": None,
                "pitch_ratio": 1.0,
                "formant_ratio": 1.0,
                "speaker_embedding": emb,
            }
            identities.append(
                Identity(
                    identity_id=identity_id_for(cond),
                    backend=backend,
                    family="sampled_embedding",
                    base_weights={"embedding": 1.0},
                    pitch_ratio=1.0,
                    formant_ratio=1.0,
                    f0_median_hz=float("nan"),
                    gender=g if embeddings.genders is not None else "female",
                    age_band="adult",
                    speaker_embedding=emb,
                    centroid=[float(v) for v in vec / np.linalg.norm(vec)],
                )
            )
        if log:
            log(f"{g}: fitted on {xs.shape[0]} embeddings, sampled {len(sampled)}")
    unit_refs = x / np.linalg.norm(x, axis=1, keepdims=True)
    closest = (all_units @ unit_refs.T).max(axis=1) if all_units.size else np.zeros(0)
    meta = {
        "version": 1,
        "backend": backend,
        "max_identity_cosine": max_identity_cosine,
        "privacy_max_cosine": privacy_max_cosine,
        "identities": len(identities),
        "measured": "speaker-embedding space (sampled, not synthesised)",
        "measured_with": {"encoder": embeddings.encoder or "unnamed", "dim": int(x.shape[1])},
        "fitted_on": {"source": embeddings.source, "embeddings": int(x.shape[0])},
        "closest_reference_cosine": float(closest.max()) if closest.size else None,
        "models": json.dumps(models),
        "seed": seed,
    }
    return IdentityPool(identities, meta)


def embed_recordings(
    paths: Sequence[str | Path], encoder: Any, *, segment_s: float | None = None
) -> tuple[np.ndarray, list[str]]:
    """Embeddings of real recordings (one per file, or one per ``segment_s`` piece), and their names."""

    vecs, names = [], []
    for path in paths:
        x, sr = load_audio(path)
        if x.size == 0:
            raise ValueError(f"{path}: empty audio")
        pieces = [x]
        if segment_s:
            step = int(segment_s * sr)
            pieces = [x[i : i + step] for i in range(0, x.size - step // 2, step)] or [x]
        for k, piece in enumerate(pieces):
            vecs.append(np.asarray(encoder.embed(piece, sr), dtype=np.float64))
            names.append(Path(path).name if len(pieces) == 1 else f"{Path(path).name}#{k}")
    return np.asarray(vecs), names
