"""Voice recipes: a voice is a small deterministic recipe, not a waveform.

The library is identities × variants. An identity fixes the timbre and comes from a measured
identity pool (``voice_library.pool``): its conditioning (Kokoro: an affine blend of base voices,
optionally a separate prosody blend and length-direction offsets; CosyVoice: a speaker
embedding) and its WORLD pitch ratio and formant warp. Identities in a pool were accepted only
when the speaker encoder told them apart from every other at the pool's cosine bound
(``max_identity_cosine``); that count, never the number of recipes, is the number of speakers.

Variants of one identity change prosody only: speed and a pitch jitter within the ranges the
clarity measurement allows (``SPEED_RANGE``, ``VARIANT_PITCH_RANGE``). Variant 0 of every
identity is its canonical voice (speed 1, no jitter). Each voice speaks one language, and only a
language its identity serves (``Identity.languages``: measured clear on held-out sentences, see
``voice_library.clarity``).

Build (``build_library``), deterministic from (pool, seed, size), in seconds for 42,002 voices:

* Four identities become the assistant's agent voices (zh/en × female/male, the lowest probe
  CER/WER of their gender among the identities serving the language) and are kept out of the
  user voices.
* Voices alternate female/male, so either gender gets half of the library (an odd size gives
  the extra voice to female); within a gender they alternate zh/en, and each language cycles over
  the identities (seeded order) that serve it, so languages balance within each gender,
  identities are used evenly and a smaller library is a prefix of a larger one.
* Gender comes from the identity's measured median F0 (< 165 Hz: male); age band is a heuristic
  from F0 and formant warp (nobody listened).
"""

from __future__ import annotations

import heapq
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from kespeechchat.config import stable_hash
from kespeechchat.store import write_parquet_atomic
from kespeechchat.voice import GENDERS, VoiceRecipe
from voice_library.bounds import (
    KOKORO_BASE_F0_HZ,
    MALE_F0_THRESHOLD_HZ,
    SPEED_RANGE,
    VARIANT_PITCH_RANGE,
)
from voice_library.pool import IdentityPool, load_pool, shipped_pool

if TYPE_CHECKING:
    from voice_library.pool import Identity, IdentityPool


AGENT_SLOTS = (("zh", "female"), ("zh", "male"), ("en", "female"), ("en", "male"))
LIBRARY_META_KEY = b"kespeechchat.voice_library"
LIBRARY_VERSION = 4


# --- rules ------------------------------------------------------------------------------------


def predict_median_f0_hz(
    base_weights: Mapping[str, float], pitch_ratio: float, base_f0_hz: Mapping[str, float] | None = None
) -> float:
    """A rough prediction of a Kokoro blend's median F0 without synthesis (log-linear in the
    weights when the male base dominates, linear otherwise, floored at 70 Hz, × the pitch ratio).
    Library identities carry their *measured* F0; this serves drawing search targets."""
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


def recipe_id(fields: Mapping[str, Any], prefix: str = "v-") -> str:
    """Content hash of a recipe (without its id): same recipe, same id, on every machine."""
    return prefix + stable_hash({k: v for k, v in fields.items() if k != "voice_id"})[:12]


_IDENTITY_INTS: dict[str, int] = {}


def _identity_int(identity_id: str) -> int:
    """A stable integer per identity (seeds its variants); cached, a library asks once per voice."""
    v = _IDENTITY_INTS.get(identity_id)
    if v is None:
        v = _IDENTITY_INTS[identity_id] = int(stable_hash(identity_id)[:8], 16)
    return v


# --- building ---------------------------------------------------------------------------------


def _voice(ident: Identity, *, role: str, language: str, seed: int, variant: int) -> VoiceRecipe:
    """Variant ``variant`` of an identity: 0 is canonical, others jitter speed and pitch."""
    ss = np.random.SeedSequence([seed, _identity_int(ident.identity_id), variant])
    if variant == 0:
        speed, jitter = 1.0, 1.0
    else:
        u = np.random.default_rng(ss).random(2)
        speed = SPEED_RANGE[0] + float(u[0]) * (SPEED_RANGE[1] - SPEED_RANGE[0])
        jitter = VARIANT_PITCH_RANGE[0] + float(u[1]) * (VARIANT_PITCH_RANGE[1] - VARIANT_PITCH_RANGE[0])
    fields = {
        "backend": ident.backend,
        "role": role,
        "identity_id": ident.identity_id,
        "base_weights": dict(ident.base_weights),
        "speed": round(speed, 3),
        "pitch_ratio": round(float(ident.pitch_ratio * jitter), 3),
        "formant_ratio": float(ident.formant_ratio),
        "language": language,
        "gender": ident.gender,
        "age_band": ident.age_band,
        "speaker_embedding": None if ident.speaker_embedding is None else list(ident.speaker_embedding),
        "seed": int(ss.generate_state(1)[0] % (2**31)),
        "prosody_weights": None if not ident.prosody_weights else dict(ident.prosody_weights),
        "style_offsets": None if not ident.style_offsets else [float(x) for x in ident.style_offsets],
    }
    return VoiceRecipe(voice_id=recipe_id(fields), **fields)


def _resolve_pool(
    backend: str, pool: IdentityPool | str | Path | None, max_identity_cosine: float | None
) -> IdentityPool:

    if not isinstance(pool, IdentityPool):
        if pool is None and shipped_pool(backend) is None:
            raise ValueError(
                f"the {backend} backend has no shipped identity pool: pass pool= (see "
                "voice_library.embeddings.sample_pool for CosyVoice speaker embeddings)"
            )
        pool = load_pool(pool if pool is not None else shipped_pool(backend))
    if pool.meta.get("backend", "kokoro") != backend:
        raise ValueError(f"identity pool is for backend {pool.meta.get('backend')!r}, not {backend!r}")
    if max_identity_cosine is not None:
        if max_identity_cosine > pool.max_identity_cosine + 1e-12:
            raise ValueError(
                f"max_identity_cosine {max_identity_cosine} is looser than the pool's bound "
                f"{pool.max_identity_cosine}: identities beyond the pool were never measured"
            )
        pool = pool.restrict(max_identity_cosine)
    return pool


def _error(ident: Identity, language: str) -> float:
    e = ident.error_zh if language == "zh" else ident.error_en
    return float(e) if math.isfinite(e) else 1.0


def _processing(ident: Identity) -> float:
    """How far WORLD moved the voice from its Kokoro style (|log pitch| + |log formant| ratios,
    less the voiced share): of two equally intelligible identities the less processed one has
    fewer artefacts."""
    voiced = ident.voiced_share if math.isfinite(ident.voiced_share) else 0.0
    return abs(math.log(ident.pitch_ratio)) + abs(math.log(ident.formant_ratio)) - voiced


def agent_identities(pool: IdentityPool) -> dict[tuple[str, str], Identity]:
    """(language, gender) -> the clearest identity there: among the identities that serve the
    language (``Identity.languages``), the lowest probe error in it; ties go to the lower error in
    the other language, then the least processed voice (``_processing``), then the identity id.
    Four distinct identities. A gender with no identity serving the language falls back to all of
    its identities (the clearest of them still speaks best)."""
    chosen: dict[tuple[str, str], Identity] = {}
    used: set[str] = set()
    for language, gender in AGENT_SLOTS:
        cands = [i for i in pool.identities if i.gender == gender and i.identity_id not in used]
        if not cands:
            raise ValueError(f"identity pool has no {gender} identity left for the {language} agent voice")
        serving = [i for i in cands if i.serves(language)]
        best = min(
            serving or cands,
            key=lambda i: (
                _error(i, language),
                _error(i, "zh") + _error(i, "en"),
                _processing(i),
                i.identity_id,
            ),
        )
        chosen[(language, gender)] = best
        used.add(best.identity_id)
    return chosen


def agent_voices(
    backend: str = "kokoro",
    *,
    pool: IdentityPool | str | Path | None = None,
    max_identity_cosine: float | None = None,
) -> list[VoiceRecipe]:
    """Fixed assistant voices, one per (language, gender), role "agent": canonical voices of the
    identities the audit found clearest (see ``agent_identities``)."""
    p = _resolve_pool(backend, pool, max_identity_cosine)
    return [
        _voice(ident, role="agent", language=lang, seed=0, variant=0)
        for (lang, _), ident in agent_identities(p).items()
    ]


def build_library(
    size: int,
    seed: int,
    backend: str = "kokoro",
    *,
    pool: IdentityPool | str | Path | None = None,
    max_identity_cosine: float | None = None,
    identities: int | None = None,
) -> list[VoiceRecipe]:
    """``size`` user voices, deterministic from (pool, seed): identities × prosodic variants.

    ``max_identity_cosine`` (≤ the pool's bound) keeps only identities distinct at a stricter
    bound; ``identities`` caps how many are used per gender pair (the first ones of the seeded
    order). Agent identities (``agent_identities``) never serve as user voices.
    """
    if size < 1:
        raise ValueError("library size must be ≥ 1")
    p = _resolve_pool(backend, pool, max_identity_cosine)
    agents = {i.identity_id for i in agent_identities(p).values()}
    rng = np.random.default_rng(np.random.SeedSequence([seed, 101]))
    by_gender: dict[str, list[Identity]] = {}
    for g in GENDERS:
        group = sorted(
            (i for i in p.identities if i.gender == g and i.identity_id not in agents),
            key=lambda i: i.identity_id,
        )
        order = rng.permutation(len(group)) if group else []
        by_gender[g] = [group[k] for k in order]
    if identities is not None:
        if identities < 2:
            raise ValueError("identities must be ≥ 2 (one per gender)")
        by_gender = {g: ids[: max(1, identities // 2)] for g, ids in by_gender.items()}
    genders = [g for g in GENDERS if by_gender[g]]
    if not genders:
        raise ValueError("identity pool has no identities left for user voices")
    # within a gender, user voices alternate zh/en; each voice goes to the identity with the fewest
    # voices in its language among those that serve it (then the fewest voices in all, then the
    # seeded order): an identity clear in one language only never speaks the other, each language
    # is spread evenly over every identity that speaks it, and a bilingual identity speaks both
    serving = {
        (g, lang): np.flatnonzero([i.serves(lang) for i in by_gender[g]])
        for g in genders
        for lang in ("zh", "en")
    }
    for lang in ("zh", "en"):
        if not any(serving[(g, lang)].size for g in genders):
            raise ValueError(f"identity pool has no user identity that serves {lang}")
    used = {g: [0] * len(by_gender[g]) for g in genders}
    spoke = {(g, lang): [0] * len(by_gender[g]) for g in genders for lang in ("zh", "en")}
    # per (gender, language): a heap of (voices of the identity in this language, voices of it in
    # all, seeded position); entries go stale when the identity speaks the other language and are
    # refreshed when they surface
    heaps = {key: [(0, 0, int(j)) for j in idx] for key, idx in serving.items()}
    voices = []
    for pos in range(size):
        g = genders[pos % len(genders)]
        lang = ("zh", "en")[(pos // len(genders)) % 2]
        if not serving[(g, lang)].size:  # no identity of this gender serves the language
            g = next(h for h in genders if serving[(h, lang)].size)
        heap = heaps[(g, lang)]
        while True:
            n_lang, n_used, j = heap[0]
            if (n_lang, n_used) == (spoke[(g, lang)][j], used[g][j]):
                break
            heapq.heapreplace(heap, (spoke[(g, lang)][j], used[g][j], j))
        variant = used[g][j]
        used[g][j] += 1
        spoke[(g, lang)][j] += 1
        heapq.heapreplace(heap, (spoke[(g, lang)][j], used[g][j], j))
        voices.append(_voice(by_gender[g][j], role="user", language=lang, seed=seed, variant=variant))
    if len({v.voice_id for v in voices}) != len(voices):  # pragma: no cover - a 48-bit hash collision
        raise RuntimeError("voice id collision; rebuild with another seed")
    return voices


def library_meta_for(
    voices: Sequence[VoiceRecipe], pool: IdentityPool | None = None, **extra: Any
) -> dict[str, Any]:
    """What the library file says about itself: counts, and how distinctness was measured."""
    users = [v for v in voices if v.role == "user"]
    meta: dict[str, Any] = {
        "version": LIBRARY_VERSION,
        "voices": len(voices),
        "user_voices": len(users),
        "identities": len({v.identity_id for v in voices}),
        "user_identities": len({v.identity_id for v in users}),
        # identities whose voices speak each language (an identity serves only the languages it
        # was measured clear in)
        "identities_by_language": {
            lang: len({v.identity_id for v in voices if v.language == lang})
            for lang in sorted({v.language for v in voices})
        },
    }
    if pool is not None:
        meta["distinct"] = {
            "max_identity_cosine": pool.max_identity_cosine,
            "encoder": (pool.meta.get("measured_with") or {}).get("encoder"),
            "measured": pool.meta.get("measured", "synthesised search probes"),
            "pool_sha": pool.sha(),
            "pool_identities": len(pool.identities),
        }
        clarity = pool.meta.get("clarity")
        if clarity:
            sentences = [lang for lang, _ in clarity.get("probes") or []]
            sentences += [lang for lang, _ in (pool.meta.get("confirmation") or {}).get("probes") or []]
            meta["clarity"] = {
                "max_error": clarity.get("max_error"),
                "probes_per_language": len(clarity.get("probes") or []) // 2,
                "sentences_by_language": {
                    lang: sentences.count(lang) for lang in ("zh", "en") if lang in sentences
                },
            }
    meta.update(extra)
    return meta


def _sentences(clarity: Mapping[str, Any]) -> str:
    by_lang = clarity.get("sentences_by_language")
    if not by_lang:
        return str(clarity["probes_per_language"])
    return " / ".join(f"{n} ({lang})" for lang, n in by_lang.items())


def distinctness_statement(meta: Mapping[str, Any]) -> str:
    """One sentence for reports and the dataset card: speakers are identities, at which bound."""
    d = meta.get("distinct") or {}
    n = meta.get("identities", "?")
    if not d:
        return f"{meta.get('voices', '?')} voice recipes from {n} identities (distinctness not measured)."
    out = (
        f"{meta.get('voices', '?')} voice recipes from {n} distinct identities: every pair of identities "
        f"has centroid cosine ≤ {d['max_identity_cosine']} under the {d.get('encoder')} speaker encoder "
        f"({d.get('measured')}); voices of one identity differ only in prosody and count as one speaker."
    )
    by_lang = meta.get("identities_by_language")
    clarity = meta.get("clarity")
    if by_lang and clarity:
        out += (
            " Identities speaking each language: "
            + ", ".join(f"{k} {v}" for k, v in by_lang.items())
            + "; an identity speaks only the languages in which its mean CER (zh) / WER (en) on "
            + _sentences(clarity)
            + f" held-out sentences was ≤ {clarity['max_error']}."
        )
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
        pa.field("prosody_weights", pa.map_(pa.string(), pa.float64())),
        pa.field("style_offsets", pa.list_(pa.float64())),
    ]
)


def to_table(voices: Iterable[VoiceRecipe]) -> pa.Table:
    rows = [v.to_dict() for v in voices]
    for r in rows:
        r["base_weights"] = list(r["base_weights"].items())
        if r["prosody_weights"] is not None:
            r["prosody_weights"] = list(r["prosody_weights"].items())
    return pa.Table.from_pylist(rows, schema=SCHEMA)


def from_table(table: pa.Table, source: str = "table") -> list[VoiceRecipe]:
    out = []
    for k, r in enumerate(table.to_pylist()):
        try:
            out.append(VoiceRecipe.from_dict(r))
        except (TypeError, ValueError, KeyError) as e:
            raise ValueError(f"{source}: voice row {k} ({r.get('voice_id')}): {e}") from e
    return out


def save_library(
    voices: Iterable[VoiceRecipe], path: str | Path, meta: Mapping[str, Any] | None = None
) -> Path:
    """Write recipes as Parquet atomically; the schema metadata records counts, version and
    (when given) how distinctness was measured (see ``library_meta_for``)."""
    voices = list(voices)
    table = to_table(voices)
    m = dict(meta) if meta is not None else library_meta_for(voices)
    m.update({k: v for k, v in library_meta_for(voices).items() if k not in ("distinct",)})
    table = table.replace_schema_metadata({LIBRARY_META_KEY: json.dumps(m, ensure_ascii=False).encode()})
    path = Path(path)
    write_parquet_atomic(path, table)
    return path


def load_library(path: str | Path) -> list[VoiceRecipe]:
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"voice library {p} not found")
    table = pq.read_table(p)
    missing = set(SCHEMA.names) - set(table.column_names) - {"prosody_weights", "style_offsets"}
    if missing:
        raise ValueError(f"{p}: not a voice library (missing columns {sorted(missing)})")
    return from_table(table, str(p))


def library_meta(path: str | Path) -> dict[str, Any]:
    """The metadata a library file records about itself ({} for a file written without it)."""
    raw = (pq.read_schema(path).metadata or {}).get(LIBRARY_META_KEY)
    return json.loads(raw) if raw else {}
