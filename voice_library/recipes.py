"""Voice recipes: a voice is a small deterministic recipe, not a waveform.

The library is identities × variants. An identity fixes the timbre: an affine blend of base
voices (``w = a·p − (a−1)·q``, a in [1.25, 1.9], total negative weight ≤ 0.6; q lies outside p's support,
so the bound keeps a ≤ 1.6 in practice), a WORLD pitch ratio
(0.8–1.3) and a formant warp (0.88–1.15) — the family measured as most separable with Kokoro.
Variants of one identity change only prosody: speed (0.9–1.1) and a pitch jitter of ±4 %.
Variant 0 of every identity is its canonical voice (speed 1, no jitter).

Identities built here are *candidates*: whether a speaker encoder tells them apart is measured by
the audit, never assumed; statistics must count identities, not variants, as speakers.

Gender and age band are labels from a deterministic rule, without synthesis (the build of 42,002
recipes must take seconds):

* The median F0 of a blend is predicted from the base voices' measured median F0
  (``KOKORO_BASE_F0_HZ``): log-linear in the weights when the male base ``jm_kumo`` dominates
  (positive weight ≥ 0.6, floored at 70 Hz, where Kokoro saturates), linear otherwise; then × the
  pitch ratio. Checked on 20 library voices (seed 7, one sentence each, after the WORLD transform):
  median error 3 %, worst 15 % (male blends); the gender label agreed with the measured F0 20/20.
* gender = "male" if the predicted F0 < 165 Hz, else "female". The build aims half of the identities
  at each (male: ``jm_kumo``-dominant blends, target F0 90–140 Hz; female: blends of the four
  female bases, target 180–300 Hz), so labels stay far from the threshold. Only one male base vector
  exists, so male identities are less varied than female ones.
* age band: "young" if formant ≥ 1.08 and F0 ≥ 250 Hz (female) / 125 Hz (male); "senior" if
  formant ≤ 0.93 and F0 ≤ 200 Hz (female) / 105 Hz (male); else "adult". A heuristic, nobody listened.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from kespeechchat.config import stable_hash
from kespeechchat.store import write_parquet_atomic

ROLES = ("user", "agent")
LANGUAGES = ("zh", "en", "multi")
GENDERS = ("female", "male")
AGE_BANDS = ("young", "adult", "senior")
BACKENDS = ("kokoro", "cosyvoice")

KOKORO_BASE_VOICES = ("jf_alpha", "jf_gongitsune", "jf_nezumi", "jf_tebukuro", "jm_kumo")
KOKORO_MALE_BASE = "jm_kumo"
# Median F0 (Hz) of each shipped voice, mean of one zh and one en sentence (pyworld dio+stonemask).
KOKORO_BASE_F0_HZ = {
    "jf_alpha": 258.0,
    "jf_gongitsune": 219.5,
    "jf_nezumi": 239.0,
    "jf_tebukuro": 320.0,
    "jm_kumo": 90.0,
}

MALE_F0_THRESHOLD_HZ = 165.0
BLEND_A_RANGE = (1.25, 1.9)
MAX_NEGATIVE_WEIGHT = 0.6
PITCH_RANGE = (0.8, 1.3)
FORMANT_RANGE = (0.88, 1.15)
SPEED_RANGE = (0.9, 1.1)
VARIANT_PITCH_JITTER = 0.04
DEFAULT_MAX_IDENTITIES = 100  # ≈ distinct Kokoro identities measured at cosine bound 0.90
LIBRARY_VERSION = 1


@dataclass(frozen=True)
class VoiceRecipe:
    """Everything needed to speak with one virtual voice, deterministically."""

    voice_id: str
    backend: str
    role: str  # "user" | "agent"
    identity_id: str  # voices sharing an identity differ only in prosody ("variants")
    base_weights: dict[str, float]  # base voice -> weight (sum 1, negatives allowed)
    speed: float
    pitch_ratio: float
    formant_ratio: float
    language: str  # "zh" | "en" | "multi"
    gender: str  # "female" | "male", from the predicted median pitch (module docstring)
    age_band: str  # "young" | "adult" | "senior", heuristic label
    speaker_embedding: list[float] | None = None  # for CosyVoice recipes
    seed: int = 0

    def __post_init__(self) -> None:
        for name, value, allowed in (
            ("backend", self.backend, BACKENDS),
            ("role", self.role, ROLES),
            ("language", self.language, LANGUAGES),
            ("gender", self.gender, GENDERS),
            ("age_band", self.age_band, AGE_BANDS),
        ):
            if value not in allowed:
                raise ValueError(f"voice {self.voice_id}: {name} {value!r} not in {allowed}")
        if not self.base_weights:
            raise ValueError(f"voice {self.voice_id}: empty base_weights")
        total = sum(self.base_weights.values())
        if abs(total - 1.0) > 1e-3:
            raise ValueError(f"voice {self.voice_id}: base weights sum to {total:.4f}, expected 1")
        for name in ("speed", "pitch_ratio", "formant_ratio"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                raise ValueError(f"voice {self.voice_id}: {name} must be a positive number, got {v!r}")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["base_weights"] = dict(self.base_weights)
        d["speaker_embedding"] = (
            None if self.speaker_embedding is None else [float(x) for x in self.speaker_embedding]
        )
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> VoiceRecipe:
        """Inverse of ``to_dict``; also accepts ``base_weights`` as (name, weight) pairs (Parquet maps)."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown voice recipe fields {sorted(unknown)}")
        kw = dict(d)
        bw = kw.get("base_weights")
        kw["base_weights"] = {
            str(k): float(v) for k, v in (bw.items() if isinstance(bw, Mapping) else bw or [])
        }
        emb = kw.get("speaker_embedding")
        kw["speaker_embedding"] = None if emb is None else [float(x) for x in emb]
        for name in ("speed", "pitch_ratio", "formant_ratio"):
            kw[name] = float(kw[name])
        kw["seed"] = int(kw.get("seed", 0))
        return cls(**kw)


# --- rules ------------------------------------------------------------------------------------


def predict_median_f0_hz(
    base_weights: Mapping[str, float], pitch_ratio: float, base_f0_hz: Mapping[str, float] | None = None
) -> float:
    """Predicted median F0 of a recipe (see the module docstring for the rule and its accuracy)."""
    f0 = base_f0_hz or KOKORO_BASE_F0_HZ
    missing = [n for n in base_weights if n not in f0]
    if missing:
        raise ValueError(f"no base F0 for {missing}")
    male_weight = sum(w for n, w in base_weights.items() if w > 0 and f0[n] < MALE_F0_THRESHOLD_HZ)
    if male_weight >= 0.6:
        base = max(70.0, math.exp(sum(w * math.log(f0[n]) for n, w in base_weights.items())))
    else:
        base = max(70.0, sum(w * f0[n] for n, w in base_weights.items()))
    return base * pitch_ratio


def gender_from_f0(f0_hz: float) -> str:
    return "male" if f0_hz < MALE_F0_THRESHOLD_HZ else "female"


def age_band_from(formant_ratio: float, f0_hz: float, gender: str) -> str:
    young_f0, senior_f0 = (125.0, 105.0) if gender == "male" else (250.0, 200.0)
    if formant_ratio >= 1.08 and f0_hz >= young_f0:
        return "young"
    if formant_ratio <= 0.93 and f0_hz <= senior_f0:
        return "senior"
    return "adult"


def recipe_id(fields: Mapping[str, Any], prefix: str = "v-") -> str:
    """Content hash of a recipe (without its id): same recipe, same id, on every machine."""
    return prefix + stable_hash({k: v for k, v in fields.items() if k != "voice_id"})[:12]


# --- building ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Identity:
    identity_id: str
    base_weights: dict[str, float]
    pitch_ratio: float
    formant_ratio: float
    gender: str
    age_band: str
    speaker_embedding: list[float] | None = field(default=None)


def _blend(rng: np.random.Generator, p: dict[str, float], q: dict[str, float]) -> dict[str, float]:
    """``a·p − (a−1)·q`` with a in BLEND_A_RANGE and total negative weight ≤ MAX_NEGATIVE_WEIGHT."""
    for _ in range(64):
        a = float(rng.uniform(*BLEND_A_RANGE))
        w: dict[str, float] = {}
        for n, v in p.items():
            w[n] = w.get(n, 0.0) + a * v
        for n, v in q.items():
            w[n] = w.get(n, 0.0) - (a - 1.0) * v
        if -sum(v for v in w.values() if v < 0) <= MAX_NEGATIVE_WEIGHT + 1e-9:
            break
    else:  # pragma: no cover - a ≤ 1.6 always satisfies the bound
        raise RuntimeError("could not draw a blend within the negative-weight bound")
    w = {n: round(v, 4) for n, v in w.items() if abs(v) >= 5e-5}
    # Rounding can leave the sum a hair off 1: put the residue on the largest weight.
    top = max(w, key=lambda n: w[n])
    w[top] = round(w[top] + 1.0 - sum(w.values()), 4)
    return dict(sorted(w.items()))


def _make_identity(
    seed: int,
    k: int,
    backend: str,
    names: Sequence[str],
    base_f0: Mapping[str, float],
    embeddings: Mapping[str, np.ndarray] | None,
) -> _Identity:
    rng = np.random.default_rng(np.random.SeedSequence([seed, k, 0]))
    males = [n for n in names if base_f0[n] < MALE_F0_THRESHOLD_HZ]
    females = [n for n in names if base_f0[n] >= MALE_F0_THRESHOLD_HZ]
    want_male = bool(males) and (k % 2 == 1 or not females)
    if want_male:
        m = str(rng.choice(males))
        p = {m: 1.0}
        if females:
            u = float(rng.uniform(0.55, 0.85))
            f = str(rng.choice(females))
            p = {m: u, f: 1.0 - u}
        # q outside p's support, so the blend really extrapolates (some weight is negative).
        q = {str(rng.choice([n for n in names if n not in p] or [m])): 1.0}
        target_f0 = float(rng.uniform(90.0, 140.0))
        formant = float(rng.uniform(FORMANT_RANGE[0], 1.04))
    else:
        chosen = list(rng.choice(females, size=min(2, len(females)), replace=False))
        mix = rng.dirichlet(np.ones(len(chosen)))
        p = {str(n): float(v) for n, v in zip(chosen, mix, strict=True)}
        q = {str(rng.choice([n for n in names if n not in p] or names)): 1.0}
        target_f0 = float(rng.uniform(180.0, 300.0))
        formant = float(rng.uniform(0.94, FORMANT_RANGE[1]))
    weights = _blend(rng, p, q)
    base = predict_median_f0_hz(weights, 1.0, base_f0)
    pitch = round(float(np.clip(target_f0 / base, *PITCH_RANGE)), 3)
    formant = round(formant, 3)
    f0 = predict_median_f0_hz(weights, pitch, base_f0)
    gender = gender_from_f0(f0)
    emb = None
    if embeddings is not None:
        vec = sum(w * embeddings[n] for n, w in weights.items())
        ref_norm = float(np.mean([np.linalg.norm(embeddings[n]) for n in weights]))
        vec = vec / (np.linalg.norm(vec) + 1e-12) * ref_norm  # keep the scale the model was trained on
        emb = [round(float(x), 6) for x in vec]
    ident = {
        "backend": backend,
        "base_weights": weights,
        "pitch_ratio": pitch,
        "formant_ratio": formant,
        "speaker_embedding": emb,
    }
    return _Identity(
        identity_id=recipe_id(ident, prefix="i-"),
        base_weights=weights,
        pitch_ratio=pitch,
        formant_ratio=formant,
        gender=gender,
        age_band=age_band_from(formant, f0, gender),
        speaker_embedding=emb,
    )


def _make_voice(
    seed: int, k: int, j: int, ident: _Identity, backend: str, role: str, language: str
) -> VoiceRecipe:
    if j == 0:
        speed, jitter = 1.0, 1.0
    else:
        rng = np.random.default_rng(np.random.SeedSequence([seed, k, j + 1]))
        speed = float(rng.uniform(*SPEED_RANGE))
        jitter = float(rng.uniform(1.0 - VARIANT_PITCH_JITTER, 1.0 + VARIANT_PITCH_JITTER))
    fields = {
        "backend": backend,
        "role": role,
        "identity_id": ident.identity_id,
        "base_weights": ident.base_weights,
        "speed": round(speed, 3),
        "pitch_ratio": round(float(np.clip(ident.pitch_ratio * jitter, *PITCH_RANGE)), 3),
        "formant_ratio": ident.formant_ratio,
        "language": language,
        "gender": ident.gender,
        "age_band": ident.age_band,
        "speaker_embedding": ident.speaker_embedding,
        "seed": int(np.random.SeedSequence([seed, k, j]).generate_state(1)[0] % (2**31)),
    }
    return VoiceRecipe(voice_id=recipe_id(fields), **fields)


def _backend_space(
    backend: str,
    base_embeddings: Mapping[str, Sequence[float]] | None,
    base_f0_hz: Mapping[str, float] | None,
) -> tuple[list[str], dict[str, float], dict[str, np.ndarray] | None]:
    if backend == "kokoro":
        return list(KOKORO_BASE_VOICES), dict(base_f0_hz or KOKORO_BASE_F0_HZ), None
    if backend == "cosyvoice":
        if not base_embeddings or not base_f0_hz:
            raise ValueError(
                "CosyVoice recipes blend reference speaker embeddings: pass base_embeddings "
                "(name -> 192-d CAM++ x-vector of a licensed reference speaker) and base_f0_hz "
                "(name -> that speaker's median F0)"
            )
        names = sorted(base_embeddings)
        missing = [n for n in names if n not in base_f0_hz]
        if missing:
            raise ValueError(f"base_f0_hz lacks {missing}")
        emb = {n: np.asarray(base_embeddings[n], dtype=np.float64) for n in names}
        return names, {n: float(base_f0_hz[n]) for n in names}, emb
    raise ValueError(f"unknown backend {backend!r}; expected one of {BACKENDS}")


def build_library(
    size: int,
    seed: int,
    backend: str = "kokoro",
    *,
    identities: int | None = None,
    base_embeddings: Mapping[str, Sequence[float]] | None = None,
    base_f0_hz: Mapping[str, float] | None = None,
) -> list[VoiceRecipe]:
    """``size`` user voices, deterministic from ``seed``: identities × prosodic variants.

    ``identities`` defaults to min(size, 100); voice i belongs to identity i mod identities (so
    identities are used evenly) and is its variant i // identities. For a fixed identity count a
    smaller library is a prefix of a larger one.
    """
    if size < 1:
        raise ValueError("library size must be ≥ 1")
    n_ident = min(size, identities or DEFAULT_MAX_IDENTITIES)
    if n_ident < 1:
        raise ValueError("identities must be ≥ 1")
    names, base_f0, emb = _backend_space(backend, base_embeddings, base_f0_hz)
    idents = [_make_identity(seed, k, backend, names, base_f0, emb) for k in range(n_ident)]
    voices = [
        _make_voice(seed, i % n_ident, i // n_ident, idents[i % n_ident], backend, "user", "multi")
        for i in range(size)
    ]
    if len({v.voice_id for v in voices}) != len(voices):  # pragma: no cover - a 48-bit hash collision
        raise RuntimeError("voice id collision; rebuild with another seed")
    return voices


def agent_voices(
    backend: str = "kokoro",
    *,
    base_embeddings: Mapping[str, Sequence[float]] | None = None,
    base_f0_hz: Mapping[str, float] | None = None,
) -> list[VoiceRecipe]:
    """Fixed assistant voices, one per (language, gender): zh/en × female/male, role "agent".

    Kokoro: shipped voices with light WORLD offsets so zh and en agents differ (jm_kumo is the only
    male base). CosyVoice: the first female/male reference speakers by name, unblended.
    """
    if backend == "kokoro":
        plan = [
            ("zh", {"jf_alpha": 1.0}, 1.0, 1.0),
            ("zh", {"jm_kumo": 1.0}, 1.1, 1.0),
            ("en", {"jf_nezumi": 1.0}, 1.0, 1.0),
            ("en", {"jm_kumo": 1.0}, 1.2, 0.97),
        ]
        f0_table: Mapping[str, float] = base_f0_hz or KOKORO_BASE_F0_HZ
        embs: dict[str, np.ndarray] | None = None
    else:
        names, f0_table, embs = _backend_space(backend, base_embeddings, base_f0_hz)
        fem = [n for n in names if f0_table[n] >= MALE_F0_THRESHOLD_HZ]
        mal = [n for n in names if f0_table[n] < MALE_F0_THRESHOLD_HZ]
        if not fem or not mal:
            raise ValueError("agent voices need at least one female and one male reference speaker")
        plan = [
            ("zh", {fem[0]: 1.0}, 1.0, 1.0),
            ("zh", {mal[0]: 1.0}, 1.0, 1.0),
            ("en", {fem[min(1, len(fem) - 1)]: 1.0}, 1.0, 1.0),
            ("en", {mal[min(1, len(mal) - 1)]: 1.0}, 1.0 if len(mal) > 1 else 1.1, 1.0),
        ]
    out = []
    for language, weights, pitch, formant in plan:
        f0 = predict_median_f0_hz(weights, pitch, f0_table)
        gender = gender_from_f0(f0)
        emb = None if embs is None else [round(float(x), 6) for x in embs[next(iter(weights))]]
        ident = {
            "backend": backend,
            "base_weights": weights,
            "pitch_ratio": pitch,
            "formant_ratio": formant,
            "speaker_embedding": emb,
        }
        fields = {
            "backend": backend,
            "role": "agent",
            "identity_id": recipe_id(ident, prefix="i-"),
            "base_weights": weights,
            "speed": 1.0,
            "pitch_ratio": pitch,
            "formant_ratio": formant,
            "language": language,
            "gender": gender,
            "age_band": "adult",
            "speaker_embedding": emb,
            "seed": 0,
        }
        out.append(VoiceRecipe(voice_id=recipe_id(fields), **fields))
    return out


# --- storage ----------------------------------------------------------------------------------

SCHEMA = pa.schema(
    [
        pa.field("voice_id", pa.string(), nullable=False),
        pa.field("backend", pa.string(), nullable=False),
        pa.field("role", pa.string(), nullable=False),
        pa.field("identity_id", pa.string(), nullable=False),
        pa.field("base_weights", pa.map_(pa.string(), pa.float64()), nullable=False),
        pa.field("speed", pa.float64(), nullable=False),
        pa.field("pitch_ratio", pa.float64(), nullable=False),
        pa.field("formant_ratio", pa.float64(), nullable=False),
        pa.field("language", pa.string(), nullable=False),
        pa.field("gender", pa.string(), nullable=False),
        pa.field("age_band", pa.string(), nullable=False),
        pa.field("speaker_embedding", pa.list_(pa.float64())),
        pa.field("seed", pa.int64(), nullable=False),
    ]
)


def to_table(voices: Iterable[VoiceRecipe]) -> pa.Table:
    rows = [v.to_dict() for v in voices]
    for r in rows:
        r["base_weights"] = list(r["base_weights"].items())
    return pa.Table.from_pylist(rows, schema=SCHEMA)


def from_table(table: pa.Table) -> list[VoiceRecipe]:
    return [VoiceRecipe.from_dict(r) for r in table.to_pylist()]


def save_library(voices: Iterable[VoiceRecipe], path: str | Path) -> Path:
    """Write recipes as Parquet atomically; the schema metadata records counts and the version."""
    voices = list(voices)
    table = to_table(voices)
    meta = {
        "version": LIBRARY_VERSION,
        "voices": len(voices),
        "identities": len({v.identity_id for v in voices}),
    }
    table = table.replace_schema_metadata({b"kespeechchat.voice_library": json.dumps(meta).encode()})
    path = Path(path)
    write_parquet_atomic(path, table)
    return path


def load_library(path: str | Path) -> list[VoiceRecipe]:
    table = pq.read_table(path)
    missing = set(SCHEMA.names) - set(table.column_names)
    if missing:
        raise ValueError(f"{path}: not a voice library (missing columns {sorted(missing)})")
    return from_table(table)
