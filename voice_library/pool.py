"""The identity pool: voices the speaker encoder measured as distinct, each a timbre to vary.

An identity is accepted only if its centroid embedding (search probes, zh + en) has cosine
≤ ``max_identity_cosine`` to every other accepted identity, it stays below the privacy bound to
every reference speaker (the TTS's shipped voices, which stand for the real people it was
trained on, and any real recordings given), its median F0 is plausible, its probes are voiced
speech (≥ ``min_voiced_share`` of the audible frames: no whisper or creak) and ASR understands
them (CER/WER ≤ ``max_error``). Acceptance is greedy; by default the candidate with the
fewest too-close neighbours goes first (a maximal-independent-set heuristic), which fits more
identities under the same bound than a random order; both counts are recorded.

The pool is a small Parquet file (one row per identity, with its centroid) and metadata saying
how it was measured. What the search accepted ships as
``voice_library/data/kokoro_searched_identities.parquet``; ``voice_library.clarity`` measures
those identities again on held-out sentences and refines them into the default pool
``voice_library/data/kokoro_identities.parquet`` (identities clear first and distinct second,
each with the languages it serves), so ``voices build`` takes seconds. Libraries are identities ×
prosodic variants built from it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from kespeechchat.audio import decode_audio
from kespeechchat.backends.world import analyse_f0
from kespeechchat.config import stable_hash
from kespeechchat.metrics import error_rate
from kespeechchat.store import write_parquet_atomic
from voice_library.bounds import MALE_F0_THRESHOLD_HZ
from voice_library.search import SEARCH_PROBES, centroids, load_candidate_audio, load_candidates

POOL_META_KEY = b"kespeechchat.identity_pool"
DEFAULT_POOL_PATH = Path(__file__).resolve().parent / "data" / "kokoro_identities.parquet"
# what the identity search accepted, before the clarity measurement refined it into the default
SEARCHED_POOL_PATH = Path(__file__).resolve().parent / "data" / "kokoro_searched_identities.parquet"
# the identity pools shipped with the package, per TTS backend (others bring theirs: voices.pool)
SHIPPED_POOLS = {"kokoro": DEFAULT_POOL_PATH}


def shipped_pool(backend: str) -> Path | None:
    """The measured identity pool shipped for ``backend``, or None when a run must bring its own."""
    return SHIPPED_POOLS.get(backend)


F0_RANGE_HZ = (85.0, 330.0)
MAX_PROBE_ERROR = 0.10
# Shipped Kokoro voices are voiced in 79-93 % of their audible frames; some extreme styles fall
# to 10-30 % (whisper, creak) while ASR still reads them.
MIN_VOICED_SHARE = 0.5
POOL_VERSION = 1


@dataclass(frozen=True)
class Identity:
    """A measured timbre: conditioning + WORLD transform, with what the measurement found."""

    identity_id: str
    backend: str
    family: str
    base_weights: dict[str, float]
    pitch_ratio: float
    formant_ratio: float
    f0_median_hz: float
    gender: str
    age_band: str
    prosody_weights: dict[str, float] | None = None
    style_offsets: list[float] | None = None
    speaker_embedding: list[float] | None = None
    error_zh: float = float("nan")
    error_en: float = float("nan")
    voiced_share: float = float("nan")
    nearest_identity_cosine: float = float("nan")
    nearest_reference: str = ""
    nearest_reference_cosine: float = float("nan")
    candidate_id: int = -1
    centroid: list[float] | None = field(default=None, compare=False, repr=False)
    # the languages it speaks clearly (None: not measured, both); see voice_library.clarity
    languages: list[str] | None = None
    warp_scale: float = 1.0  # how much of the searched warp it keeps (clarity.soften)

    def serves(self, language: str) -> bool:
        return self.languages is None or language in self.languages

    def conditioning(self) -> dict[str, Any]:
        """The fields that define the timbre (hashed into ``identity_id``)."""
        return {
            "backend": self.backend,
            "base_weights": dict(sorted(self.base_weights.items())),
            "prosody_weights": None
            if not self.prosody_weights
            else dict(sorted(self.prosody_weights.items())),
            "style_offsets": None if not self.style_offsets else [float(x) for x in self.style_offsets],
            "pitch_ratio": float(self.pitch_ratio),
            "formant_ratio": float(self.formant_ratio),
            "speaker_embedding": self.speaker_embedding,
        }


def identity_id_for(conditioning: Mapping[str, Any]) -> str:

    return "i-" + stable_hash(dict(conditioning))[:12]


@dataclass
class IdentityPool:
    identities: list[Identity]
    meta: dict[str, Any]

    @property
    def max_identity_cosine(self) -> float:
        return float(self.meta["max_identity_cosine"])

    def centroids(self) -> np.ndarray:
        if any(i.centroid is None for i in self.identities):
            raise ValueError("this pool has no centroid embeddings")
        c = np.asarray([i.centroid for i in self.identities], dtype=np.float64)
        return c / np.maximum(np.linalg.norm(c, axis=1, keepdims=True), 1e-12)

    def restrict(
        self, max_identity_cosine: float, *, order: str = "min_degree", seed: int = 0
    ) -> IdentityPool:
        """The identities that stay distinct under a stricter bound (greedy on the pool's centroids)."""
        if max_identity_cosine >= self.max_identity_cosine:
            return self
        keep = greedy_accept(self.centroids(), max_identity_cosine, order=order, seed=seed)
        meta = {
            **self.meta,
            "max_identity_cosine": max_identity_cosine,
            "restricted_from": self.max_identity_cosine,
        }
        meta["identities"] = len(keep)
        return IdentityPool([self.identities[i] for i in sorted(keep)], meta)

    def sha(self) -> str:

        return stable_hash([i.conditioning() for i in self.identities])


# --- acceptance ---------------------------------------------------------------------------------


def greedy_accept(
    centroids: np.ndarray,
    max_cosine: float,
    *,
    eligible: np.ndarray | None = None,
    order: str = "min_degree",
    seed: int = 0,
) -> list[int]:
    """Indices of a set whose pairwise centroid cosines are all ≤ ``max_cosine``.

    ``order="random"``: candidates in a seeded random order, each kept if it is far enough from
    those kept so far. ``order="min_degree"``: repeatedly keep the remaining candidate with the
    fewest too-close remaining neighbours (ties in seeded random order), then drop its neighbours.
    """
    c = np.asarray(centroids, dtype=np.float64)
    n = c.shape[0]
    ok = np.ones(n, dtype=bool) if eligible is None else np.asarray(eligible, dtype=bool).copy()
    rank = np.random.default_rng(seed).permutation(n)
    if order == "random":
        kept: list[int] = []
        for i in sorted(np.flatnonzero(ok), key=lambda i: rank[i]):
            if not kept or float(np.max(c[kept] @ c[i])) <= max_cosine:
                kept.append(int(i))
        return kept
    if order != "min_degree":
        raise ValueError(f"unknown order {order!r}; expected 'min_degree' or 'random'")
    idx = np.flatnonzero(ok)
    close = (c[idx] @ c[idx].T) > max_cosine
    np.fill_diagonal(close, False)
    alive = np.ones(idx.size, dtype=bool)
    degree = close.sum(axis=1).astype(np.int64)
    kept = []
    while alive.any():
        cand = np.flatnonzero(alive)
        best = cand[np.lexsort((rank[idx[cand]], degree[cand]))[0]]
        kept.append(int(idx[best]))
        gone = np.flatnonzero(close[best] & alive)
        alive[best] = False
        alive[gone] = False
        if gone.size:
            degree -= close[:, gone].sum(axis=1)
    return kept


def voiced_share(x: np.ndarray, sr: int, frame_s: float = 0.005, rel_level: float = 0.02) -> float:
    """Share of the audible frames (RMS above ``rel_level`` × the loudest frame) that WORLD finds
    voiced. Speech is mostly voiced; some extreme styles whisper or creak, which ASR still reads
    but nobody would call a normal voice."""

    x = np.asarray(x, dtype=np.float64)
    f0 = analyse_f0(x, sr)
    hop = int(round(sr * frame_s))
    n = min(f0.size, int(np.ceil(x.size / hop)))
    if n == 0:
        return 0.0
    pad = np.zeros(n * hop)
    m = min(x.size, n * hop)
    pad[:m] = x[:m]
    rms = np.sqrt(np.mean(pad.reshape(n, hop) ** 2, axis=1))
    active = rms > rel_level * max(float(rms.max()), 1e-12)
    return float((f0[:n][active] > 0).mean()) if active.any() else 0.0


def gender_from_f0(f0_hz: float) -> str:

    return "male" if f0_hz < MALE_F0_THRESHOLD_HZ else "female"


def age_band_from(formant_ratio: float, f0_hz: float, gender: str) -> str:
    """A heuristic label (nobody listened): short vocal tract + high pitch reads young, the reverse senior."""
    young_f0, senior_f0 = (125.0, 105.0) if gender == "male" else (250.0, 200.0)
    if formant_ratio >= 1.08 and f0_hz >= young_f0:
        return "young"
    if formant_ratio <= 0.93 and f0_hz <= senior_f0:
        return "senior"
    return "adult"


def _pairs(v: Any) -> dict[str, float] | None:
    if v is None:
        return None
    items = v.items() if isinstance(v, Mapping) else v
    return {str(k): float(x) for k, x in items}


def probe_errors(
    asr: Any, audio: Mapping[int, Mapping[str, bytes]], texts: Mapping[str, str]
) -> dict[int, dict[str, float]]:
    """CER (zh) / WER (en) of each candidate's stored probe audio against the probe texts.

    One ASR call per candidate: packing many clips of the *same* sentence into one Whisper window
    made it drop or misplace repeats (CER up to 1.0 on clips it reads perfectly alone).
    """

    out: dict[int, dict[str, float]] = {}
    for cid in sorted(audio):
        langs = sorted(audio[cid])
        batch = [(*decode_audio(audio[cid][lang]), lang) for lang in langs]
        hyps = asr.transcribe(batch)
        out[cid] = {
            lang: round(float(error_rate(texts[lang], hyp, lang)), 4)
            for lang, hyp in zip(langs, hyps, strict=True)
        }
    return out


class ProbeCache:
    """Per-candidate probe measurements (zh, en) kept next to the search, so that repeated
    selections pay once: ``probe_errors.parquet`` (CER/WER), ``probe_voicing.parquet``."""

    def __init__(self, path: Path, prefix: str):
        self.path = Path(path)
        self.prefix = prefix
        self.data: dict[int, dict[str, float]] = {}
        if self.path.exists():
            for r in pq.read_table(self.path).to_pylist():
                self.data[int(r["candidate_id"])] = {"zh": r[f"{prefix}_zh"], "en": r[f"{prefix}_en"]}

    def save(self) -> None:

        rows = [
            {"candidate_id": k, f"{self.prefix}_zh": v["zh"], f"{self.prefix}_en": v["en"]}
            for k, v in sorted(self.data.items())
        ]
        schema = pa.schema(
            [
                ("candidate_id", pa.int64()),
                (f"{self.prefix}_zh", pa.float64()),
                (f"{self.prefix}_en", pa.float64()),
            ]
        )
        write_parquet_atomic(self.path, pa.Table.from_pylist(rows, schema=schema))


def probe_voicing(audio: Mapping[int, Mapping[str, bytes]]) -> dict[int, dict[str, float]]:
    """Voiced share (see ``voiced_share``) of each candidate's stored probe audio."""

    out: dict[int, dict[str, float]] = {}
    for cid in sorted(audio):
        out[cid] = {}
        for lang, blob in audio[cid].items():
            x, sr = decode_audio(blob)
            out[cid][lang] = round(voiced_share(x, sr), 4)
    return out


def select_identities(
    search_dir: str | Path,
    max_identity_cosine: float,
    *,
    asr: Any,
    references: Mapping[str, np.ndarray],
    privacy_max_cosine: float,
    max_error: float = MAX_PROBE_ERROR,
    min_voiced_share: float = MIN_VOICED_SHARE,
    f0_range_hz: tuple[float, float] = F0_RANGE_HZ,
    order: str = "min_degree",
    seed: int = 0,
    families: Sequence[str] | None = None,
    log: Callable[[str], None] = print,
) -> IdentityPool:
    """Accept identities from a finished search (see the module docstring); ASR runs only on
    candidates the greedy step wants (after the voicing gate), and failures are excluded and the
    step repeated."""
    search_dir = Path(search_dir)
    table = load_candidates(search_dir)
    rows = table.drop(["emb_zh", "emb_en"]).to_pylist()
    c = centroids(table)
    ref_names = sorted(references)
    ok, ref_cos, counts = _eligible(rows, c, references, ref_names, privacy_max_cosine, f0_range_hz, families)
    gate = _AcceptanceGate(search_dir, rows, asr, max_error, min_voiced_share, log)
    while True:
        kept = greedy_accept(c, max_identity_cosine, eligible=ok, order=order, seed=seed)
        bad = gate.rejects(kept)
        if not bad:
            break
        ok[bad] = False
    counts["unvoiced_rejected"] = len(gate.unvoiced)
    counts["unintelligible_rejected"] = len(gate.failed)
    counts["accepted"] = len(kept)
    counts["accepted_random_order"] = len(
        greedy_accept(c, max_identity_cosine, eligible=ok, order="random", seed=seed)
    )
    acc = c[kept]
    sims = acc @ acc.T
    np.fill_diagonal(sims, -1.0)
    identities = []
    for j, i in enumerate(kept):
        nearest = round(float(sims[j].max()), 4) if len(kept) > 1 else float("nan")
        ref = (
            (ref_names[int(np.argmax(ref_cos[i]))], round(float(ref_cos[i].max()), 4)) if ref_names else None
        )
        identities.append(_searched_identity(rows[i], c[i], gate, nearest, ref))
    search_meta = json.loads((search_dir / "search.json").read_text(encoding="utf-8"))
    meta = {
        "version": POOL_VERSION,
        "backend": "kokoro",
        "max_identity_cosine": max_identity_cosine,
        "privacy_max_cosine": privacy_max_cosine,
        "max_probe_error": max_error if asr is not None else None,
        "min_voiced_share": min_voiced_share,
        "f0_range_hz": list(f0_range_hz),
        "order": order,
        "seed": seed,
        "identities": len(identities),
        "counts": counts,
        "references": ref_names,
        "measured_with": {
            "encoder": search_meta.get("encoder"),
            "tts": search_meta.get("tts"),
            "asr": getattr(asr, "name", type(asr).__name__),
            "probes": search_meta.get("probes"),
        },
        "search": {
            k: search_meta.get(k) for k in ("seed", "n_blends", "world_per_blend", "families", "version")
        },
    }
    return IdentityPool(identities, meta)


def _eligible(
    rows: list[dict[str, Any]],
    c: np.ndarray,
    references: Mapping[str, np.ndarray],
    ref_names: list[str],
    privacy_max_cosine: float,
    f0_range_hz: tuple[float, float],
    families: Sequence[str] | None,
) -> tuple[np.ndarray, np.ndarray, dict[str, int]]:
    """(candidates that may be accepted, their cosines to the references, counts of the exclusions):
    an F0 in range, a family asked for, and no closer to a real recording than the privacy bound."""
    f0 = np.asarray([r["f0_median_hz"] for r in rows], dtype=np.float64)
    ok = np.isfinite(f0) & (f0 >= f0_range_hz[0]) & (f0 <= f0_range_hz[1])
    if families is not None:
        ok &= np.asarray([r["family"] in families for r in rows])
    if ref_names:
        r = np.asarray([references[n] for n in ref_names], dtype=np.float64)
        r = r / np.linalg.norm(r, axis=1, keepdims=True)
        ref_cos = c @ r.T
    else:
        ref_cos = np.zeros((len(rows), 0))
    too_close = (ref_cos > privacy_max_cosine).any(axis=1) if ref_names else np.zeros(len(rows), dtype=bool)
    counts = {
        "candidates": len(rows),
        "f0_out_of_range": int((~np.isfinite(f0) | (f0 < f0_range_hz[0]) | (f0 > f0_range_hz[1])).sum()),
        "too_close_to_reference": int((too_close & ok).sum()),
    }
    return ok & ~too_close, ref_cos, counts


class _AcceptanceGate:
    """The voicing and intelligibility gates, measured only on candidates the greedy step wants and
    cached in the search directory (a rerun measures nothing twice)."""

    def __init__(self, search_dir: Path, rows: list[dict[str, Any]], asr: Any, max_error: float,
                 min_voiced_share: float, log: Callable[[str], None]):  # fmt: skip
        self.search_dir, self.rows, self.asr, self.log = search_dir, rows, asr, log
        self.max_error, self.min_voiced_share = max_error, min_voiced_share
        self.errors = ProbeCache(search_dir / "probe_errors.parquet", "error")
        self.voicing = ProbeCache(search_dir / "probe_voicing.parquet", "voiced")
        self.unvoiced: set[int] = set()
        self.failed: set[int] = set()

    def _cid(self, i: int) -> Any:
        return self.rows[i]["candidate_id"]

    def rejects(self, kept: list[int]) -> list[int]:
        """The kept candidates that fail a gate (they are excluded and the greedy step repeated)."""
        todo = [self._cid(i) for i in kept if self._cid(i) not in self.voicing.data]
        if todo:
            self.voicing.data.update(probe_voicing(load_candidate_audio(self.search_dir, todo)))
            self.voicing.save()
        bad = [i for i in kept if min(self.voicing.data[self._cid(i)].values()) < self.min_voiced_share]
        self.unvoiced.update(bad)
        if self.asr is None:  # without an ASR backend there is no intelligibility gate (recorded)
            return bad
        todo = [self._cid(i) for i in kept if i not in self.unvoiced and self._cid(i) not in self.errors.data]
        for start in range(0, len(todo), 16):
            part = todo[start : start + 16]
            self.log(
                f"ASR gate: transcribing probes of candidates {start + 1}-{start + len(part)} of {len(todo)} …"
            )
            self.errors.data.update(
                probe_errors(self.asr, load_candidate_audio(self.search_dir, part), SEARCH_PROBES)
            )
            self.errors.save()
        unheard = [
            i
            for i in kept
            if i not in self.unvoiced and max(self.errors.data[self._cid(i)].values()) > self.max_error
        ]
        self.failed.update(unheard)
        return bad + unheard


def _searched_identity(
    r: dict[str, Any],
    centroid: np.ndarray,
    gate: _AcceptanceGate,
    nearest: float,
    ref: tuple[str, float] | None,
) -> Identity:
    """The pool identity of an accepted search candidate."""
    err = gate.errors.data.get(r["candidate_id"], {"zh": float("nan"), "en": float("nan")})
    g = gender_from_f0(r["f0_median_hz"])
    ident = dict(
        backend="kokoro",
        family=r["family"],
        base_weights=_pairs(r["base_weights"]) or {},
        prosody_weights=_pairs(r["prosody_weights"]),
        style_offsets=None if r["style_offsets"] is None else [float(x) for x in r["style_offsets"]],
        pitch_ratio=float(r["pitch_ratio"]),
        formant_ratio=float(r["formant_ratio"]),
        f0_median_hz=float(r["f0_median_hz"]),
        gender=g,
        age_band=age_band_from(float(r["formant_ratio"]), float(r["f0_median_hz"]), g),
        error_zh=float(err["zh"]),
        error_en=float(err["en"]),
        voiced_share=float(min(gate.voicing.data[r["candidate_id"]].values())),
        nearest_identity_cosine=nearest,
        nearest_reference=ref[0] if ref else "",
        nearest_reference_cosine=ref[1] if ref else float("nan"),
        candidate_id=int(r["candidate_id"]),
        centroid=[float(x) for x in centroid.astype(np.float32)],
    )
    probe = Identity(identity_id="", **ident)
    return Identity(**{**ident, "identity_id": identity_id_for(probe.conditioning())})


# --- storage ------------------------------------------------------------------------------------

POOL_SCHEMA = pa.schema(
    [
        ("identity_id", pa.string()),
        ("backend", pa.string()),
        ("family", pa.string()),
        ("base_weights", pa.map_(pa.string(), pa.float64())),
        ("prosody_weights", pa.map_(pa.string(), pa.float64())),
        ("style_offsets", pa.list_(pa.float64())),
        ("pitch_ratio", pa.float64()),
        ("formant_ratio", pa.float64()),
        ("f0_median_hz", pa.float64()),
        ("gender", pa.string()),
        ("age_band", pa.string()),
        ("speaker_embedding", pa.list_(pa.float64())),
        ("error_zh", pa.float64()),
        ("error_en", pa.float64()),
        ("voiced_share", pa.float64()),
        ("nearest_identity_cosine", pa.float64()),
        ("nearest_reference", pa.string()),
        ("nearest_reference_cosine", pa.float64()),
        ("candidate_id", pa.int64()),
        ("centroid", pa.list_(pa.float32())),
        ("languages", pa.list_(pa.string())),
        ("warp_scale", pa.float64()),
    ]
)


def save_pool(pool: IdentityPool, path: str | Path) -> Path:

    rows = []
    for i in pool.identities:
        d = {f: getattr(i, f) for f in POOL_SCHEMA.names}
        for k in ("base_weights", "prosody_weights"):
            d[k] = None if d[k] is None else list(d[k].items())
        rows.append(d)
    t = pa.Table.from_pylist(rows, schema=POOL_SCHEMA)
    meta = {**pool.meta, "sha": pool.sha()}
    t = t.replace_schema_metadata({POOL_META_KEY: json.dumps(meta, ensure_ascii=False).encode()})
    path = Path(path)
    write_parquet_atomic(path, t)
    return path


def load_pool(path: str | Path | None = None) -> IdentityPool:
    """The identity pool at ``path`` (default: the measured Kokoro pool shipped with the package)."""
    p = Path(path) if path is not None else DEFAULT_POOL_PATH
    if not p.is_file():
        raise FileNotFoundError(
            f"identity pool {p} not found; build one with `kespeechchat voices search` and `voices pool`"
        )
    t = pq.read_table(p)
    missing = set(POOL_SCHEMA.names) - set(t.column_names) - {"voiced_share", "languages", "warp_scale"}
    raw = (t.schema.metadata or {}).get(POOL_META_KEY)
    if missing or raw is None:
        raise ValueError(f"{p}: not an identity pool (missing columns {sorted(missing)} or metadata)")
    meta = json.loads(raw)
    ids = []
    for k, r in enumerate(t.to_pylist()):
        try:
            r["base_weights"] = _pairs(r["base_weights"]) or {}
            r["prosody_weights"] = _pairs(r["prosody_weights"])
            if r.get("warp_scale") is None:
                r.pop("warp_scale", None)
            ids.append(Identity(**r))
        except (TypeError, ValueError) as e:
            raise ValueError(f"{p}: identity row {k}: {e}") from e
    if not ids:
        raise ValueError(f"{p}: the identity pool is empty")
    return IdentityPool(ids, meta)


def pool_from_identities(identities: Iterable[Identity], meta: Mapping[str, Any]) -> IdentityPool:
    ids = list(identities)
    if not ids:
        raise ValueError("an identity pool needs at least one identity")
    for i in ids:
        if not math.isfinite(i.pitch_ratio) or i.pitch_ratio <= 0:
            raise ValueError(f"identity {i.identity_id}: bad pitch_ratio {i.pitch_ratio}")
    return IdentityPool(ids, dict(meta))
