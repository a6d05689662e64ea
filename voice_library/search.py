"""Identity search: synthesise many candidate voices and keep those the speaker encoder tells apart.

Random blends of Kokoro's five shipped voices are not distinct speakers, so identities are
*measured*. A candidate is a style (an affine blend of base voices, optionally with a separate
blend for the prosody half and offsets along the length directions, see ``kokoro_style``) and
a WORLD transform (pitch, formant warp). For every blend the two search probes (one zh, one en)
are synthesised once and analysed once with WORLD; each of ``world_per_blend`` transforms is
then re-synthesised from that analysis (cheap) and embedded. Results go to resumable chunk
files under the search directory: candidates (parameters, measured F0, embeddings) and their
probe audio (16 kHz FLAC, for the ASR gate and for listening).

``voice_library.pool`` later accepts identities from these candidates at a cosine bound, with
the intelligibility and privacy gates; nothing here decides.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from kespeechchat.audio import encode_flac, resample
from kespeechchat.backends import world as w
from kespeechchat.store import write_json_atomic, write_parquet_atomic
from voice_library.bounds import (
    BLEND_A_RANGE,
    KOKORO_BASE_F0_HZ,
    MALE_F0_THRESHOLD_HZ,
    MAX_NEGATIVE_WEIGHT,
    PITCH_RANGE,
)

SEARCH_PROBES = {
    "zh": "我们明天早上在学校门口见面。",
    "en": "Please bring your umbrella tomorrow.",
}
PROBE_LANGUAGES = ("zh", "en")
SEARCH_FAMILIES = ("affine_world", "split_world", "lendir_world", "split_lendir_world")
BASELINE_FAMILY = "convex"  # random convex blends, no WORLD: the naive approach

FEMALE_F0_BAND_HZ = (175.0, 300.0)
MALE_F0_BAND_HZ = (88.0, 145.0)
MALE_FORMANT_RANGE = (0.88, 1.04)
FEMALE_FORMANT_RANGE = (0.94, 1.15)
# Offsets along the length directions, in within-voice standard deviations: a pilot on jf_alpha
# and jm_kumo kept CER/WER at 0 up to |12| on directions 1-3 but broke speech beyond |3| on
# direction 0 (the utterance-length axis itself).
LENDIR_LIMITS = (3.0, 12.0, 12.0, 12.0)
AUDIO_RATE_HZ = 16000
CHUNK_BLENDS = 8
SEARCH_VERSION = 1


@dataclass(frozen=True)
class Style:
    """The timbre part of a candidate (before WORLD): what Kokoro is conditioned on."""

    blend_index: int
    family: str
    aim: str  # "female" | "male": which F0 band the WORLD transforms aim at
    base_weights: dict[str, float]
    prosody_weights: dict[str, float] | None = None
    style_offsets: tuple[float, ...] | None = None


# --- drawing candidates -------------------------------------------------------------------------


def _round_weights(w: Mapping[str, float]) -> dict[str, float]:
    out = {n: round(float(v), 4) for n, v in w.items() if abs(v) >= 5e-5}
    top = max(out, key=lambda n: out[n])
    out[top] = round(out[top] + 1.0 - sum(out.values()), 4)
    return dict(sorted(out.items()))


def affine_blend(
    rng: np.random.Generator, names: Sequence[str], base_f0: Mapping[str, float], aim: str
) -> dict[str, float]:
    """``a·p − (a−1)·q``: p mixes voices of the aimed gender, q is one voice outside p.

    a in BLEND_A_RANGE, total negative weight ≤ MAX_NEGATIVE_WEIGHT (the family measured as
    intelligible). Male aims make the male base voice(s) dominant in p (one male base ships).
    """

    males = [n for n in names if base_f0[n] < MALE_F0_THRESHOLD_HZ]
    females = [n for n in names if base_f0[n] >= MALE_F0_THRESHOLD_HZ]
    if aim == "male" and males:
        m = str(rng.choice(males))
        p = {m: 1.0}
        if females:
            u = float(rng.uniform(0.55, 0.9))
            p = {m: u, str(rng.choice(females)): 1.0 - u}
    else:
        group = females or list(names)
        k = int(rng.integers(1, min(3, len(group)) + 1))
        chosen = [str(n) for n in rng.choice(group, size=k, replace=False)]
        mix = rng.dirichlet(np.ones(k))
        p = {n: float(v) for n, v in zip(chosen, mix, strict=True)}
    q = str(rng.choice([n for n in names if n not in p] or list(names)))
    for _ in range(64):
        a = float(rng.uniform(*BLEND_A_RANGE))
        w = {n: a * v for n, v in p.items()}
        w[q] = w.get(q, 0.0) - (a - 1.0)
        if -sum(v for v in w.values() if v < 0) <= MAX_NEGATIVE_WEIGHT + 1e-9:
            return _round_weights(w)
    return _round_weights(p)  # pragma: no cover - a ≤ 1.6 always satisfies the bound


def convex_blend(rng: np.random.Generator, names: Sequence[str]) -> dict[str, float]:
    """The naive approach: a random convex mixture of all base voices (Dirichlet(1))."""
    mix = rng.dirichlet(np.ones(len(names)))
    return _round_weights({str(n): float(v) for n, v in zip(names, mix, strict=True)})


def draw_style(
    seed: int, blend_index: int, family: str, names: Sequence[str], base_f0: Mapping[str, float]
) -> Style:
    """The style of blend ``blend_index`` of ``family``, deterministic from (seed, index)."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, blend_index, 17]))
    if family == BASELINE_FAMILY:
        return Style(blend_index, family, "female", convex_blend(rng, names))
    if family not in SEARCH_FAMILIES:
        raise ValueError(
            f"unknown candidate family {family!r}; expected {SEARCH_FAMILIES} or {BASELINE_FAMILY!r}"
        )
    aim = "male" if blend_index % 2 else "female"
    weights = affine_blend(rng, names, base_f0, aim)
    prosody = None
    if family.startswith("split"):
        prosody = affine_blend(rng, names, base_f0, str(rng.choice(["male", "female"])))
    offsets = None
    if "lendir" in family:
        offsets = tuple(round(float(rng.uniform(-lim, lim)), 3) for lim in LENDIR_LIMITS)
    return Style(blend_index, family, aim, weights, prosody, offsets)


def draw_world(seed: int, style: Style, k: int) -> list[tuple[float, float]]:
    """``k`` (target median F0 in Hz, formant ratio) pairs for a style's WORLD transforms."""
    if style.family == BASELINE_FAMILY:
        return [(float("nan"), 1.0)]
    rng = np.random.default_rng(np.random.SeedSequence([seed, style.blend_index, 29]))
    band = MALE_F0_BAND_HZ if style.aim == "male" else FEMALE_F0_BAND_HZ
    formants = MALE_FORMANT_RANGE if style.aim == "male" else FEMALE_FORMANT_RANGE
    return [(float(rng.uniform(*band)), float(rng.uniform(*formants))) for _ in range(k)]


def pitch_for(target_f0_hz: float, measured_f0_hz: float) -> float:
    """The WORLD pitch ratio that moves ``measured`` towards ``target``, within PITCH_RANGE."""

    if not math.isfinite(target_f0_hz) or not math.isfinite(measured_f0_hz) or measured_f0_hz <= 0:
        return 1.0
    return round(float(np.clip(target_f0_hz / measured_f0_hz, *PITCH_RANGE)), 3)


# --- running ----------------------------------------------------------------------------------


@dataclass
class _StyleVoice:
    """Enough of a recipe for the TTS: a style, unit speed, no WORLD (applied here, once analysed)."""

    voice_id: str
    base_weights: dict[str, float]
    prosody_weights: dict[str, float] | None
    style_offsets: tuple[float, ...] | None
    speed: float = 1.0
    pitch_ratio: float = 1.0
    formant_ratio: float = 1.0


CANDIDATE_SCHEMA = pa.schema(
    [
        ("candidate_id", pa.int64()),
        ("blend_index", pa.int64()),
        ("world_index", pa.int64()),
        ("family", pa.string()),
        ("aim", pa.string()),
        ("base_weights", pa.map_(pa.string(), pa.float64())),
        ("prosody_weights", pa.map_(pa.string(), pa.float64())),
        ("style_offsets", pa.list_(pa.float64())),
        ("pitch_ratio", pa.float64()),
        ("formant_ratio", pa.float64()),
        ("f0_median_hz", pa.float64()),
        ("emb_zh", pa.list_(pa.float32())),
        ("emb_en", pa.list_(pa.float32())),
    ]
)
AUDIO_SCHEMA = pa.schema([("candidate_id", pa.int64()), ("audio_zh", pa.binary()), ("audio_en", pa.binary())])


def _chunk_paths(out_dir: Path, chunk: int) -> tuple[Path, Path]:
    return (
        out_dir / "chunks" / f"candidates-{chunk:05d}.parquet",
        out_dir / "chunks" / f"audio-{chunk:05d}.parquet",
    )


def base_f0_table(tts: Any) -> dict[str, float]:

    return {n: KOKORO_BASE_F0_HZ[n] for n in tts.base_voices if n in KOKORO_BASE_F0_HZ}


def synthesize_style(
    tts: Any, style: Style, texts: Mapping[str, str] = SEARCH_PROBES
) -> dict[str, np.ndarray]:
    """Kokoro audio of each probe text for a style (no WORLD), at the TTS rate."""
    voice = _StyleVoice(
        f"cand-{style.blend_index}", style.base_weights, style.prosody_weights, style.style_offsets
    )
    return {lang: tts.synthesize(text, lang, voice) for lang, text in texts.items()}


def evaluate_style(
    tts: Any,
    encoder: Any,
    style: Style,
    world: Sequence[tuple[float, float]],
    first_candidate_id: int,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Candidate rows and audio rows of one style × its WORLD transforms."""

    sr = int(tts.sample_rate_hz)
    raw = synthesize_style(tts, style)
    analyses = {lang: w.analyse(x, sr) for lang, x in raw.items()}
    voiced = np.concatenate([a[0][a[0] > 0] for a in analyses.values()])
    base_f0 = float(np.median(voiced)) if voiced.size else float("nan")
    rows, audio_rows = [], []
    for j, (target, formant) in enumerate(world):
        pitch = pitch_for(target, base_f0)
        formant = round(float(formant), 3)
        emb, flac = {}, {}
        for lang, x in raw.items():
            y = (
                x
                if (pitch == 1.0 and formant == 1.0)
                else w.synthesize_from(analyses[lang], sr, x.size, pitch, formant)
            )
            emb[lang] = encoder.embed(y, sr).astype(np.float32)
            flac[lang] = encode_flac(resample(y, sr, AUDIO_RATE_HZ), AUDIO_RATE_HZ)
        cid = first_candidate_id + j
        rows.append(
            {
                "candidate_id": cid,
                "blend_index": style.blend_index,
                "world_index": j,
                "family": style.family,
                "aim": style.aim,
                "base_weights": list(style.base_weights.items()),
                "prosody_weights": None
                if style.prosody_weights is None
                else list(style.prosody_weights.items()),
                "style_offsets": None if style.style_offsets is None else list(style.style_offsets),
                "pitch_ratio": pitch,
                "formant_ratio": formant,
                "f0_median_hz": round(base_f0 * pitch, 2) if math.isfinite(base_f0) else float("nan"),
                "emb_zh": emb["zh"].tolist(),
                "emb_en": emb["en"].tolist(),
            }
        )
        audio_rows.append({"candidate_id": cid, "audio_zh": flac["zh"], "audio_en": flac["en"]})
    return rows, audio_rows


def run_search(
    out_dir: str | Path,
    *,
    seed: int,
    n_blends: int,
    world_per_blend: int,
    tts: Any,
    encoder: Any,
    families: Sequence[str] = SEARCH_FAMILIES,
    part: tuple[int, int] = (0, 1),
    log: Callable[[str], None] = print,
) -> Path:
    """Evaluate ``n_blends`` styles (families in turn) × ``world_per_blend`` transforms; resumable.

    Chunks of CHUNK_BLENDS styles are written atomically; a rerun with the same parameters skips
    finished chunks, and a larger ``n_blends`` extends the search. ``part=(i, n)`` takes only
    the chunks whose number is i mod n, so n processes can share one search directory.
    """

    out = Path(out_dir)
    (out / "chunks").mkdir(parents=True, exist_ok=True)
    params = {
        "version": SEARCH_VERSION,
        "seed": seed,
        "world_per_blend": world_per_blend,
        "families": list(families),
        "probes": SEARCH_PROBES,
        "encoder": getattr(encoder, "name", type(encoder).__name__),
        "tts": getattr(tts, "name", type(tts).__name__),
    }
    meta_path = out / "search.json"
    if meta_path.exists():
        old = json.loads(meta_path.read_text(encoding="utf-8"))
        if {k: old.get(k) for k in params} != params:
            raise ValueError(f"{out}: holds a search with other parameters ({old}); use another directory")
    write_json_atomic(meta_path, {**params, "n_blends": n_blends})
    tts.setup()
    names = list(tts.base_voices)
    base_f0 = base_f0_table(tts)
    if set(base_f0) != set(names):
        raise ValueError(f"no reference F0 for base voices {sorted(set(names) - set(base_f0))}")
    n_chunks = math.ceil(n_blends / CHUNK_BLENDS)
    t0 = time.perf_counter()
    done_now = 0
    for chunk in range(n_chunks):
        cand_path, audio_path = _chunk_paths(out, chunk)
        if chunk % part[1] != part[0] or (cand_path.exists() and audio_path.exists()):
            continue
        rows, audio_rows = [], []
        for b in range(chunk * CHUNK_BLENDS, min((chunk + 1) * CHUNK_BLENDS, n_blends)):
            style = draw_style(seed, b, families[b % len(families)], names, base_f0)
            world = draw_world(seed, style, world_per_blend)
            r, a = evaluate_style(tts, encoder, style, world, b * world_per_blend)
            rows += r
            audio_rows += a
        write_parquet_atomic(audio_path, pa.Table.from_pylist(audio_rows, schema=AUDIO_SCHEMA))
        write_parquet_atomic(cand_path, pa.Table.from_pylist(rows, schema=CANDIDATE_SCHEMA))
        done_now += 1
        el = time.perf_counter() - t0
        left = sum(
            1
            for c in range(chunk + 1, n_chunks)
            if c % part[1] == part[0] and not _chunk_paths(out, c)[0].exists()
        )
        log(
            f"chunk {chunk + 1}/{n_chunks}: {len(rows)} candidates; {el / done_now:.0f}s/chunk, "
            f"ETA {el / done_now * left / 60:.0f} min"
        )
    return out


def load_candidates(out_dir: str | Path) -> pa.Table:
    """All finished candidate chunks of a search, in candidate order."""
    files = sorted((Path(out_dir) / "chunks").glob("candidates-*.parquet"))
    if not files:
        raise FileNotFoundError(f"{out_dir}: no finished search chunks (run `voices search` first)")
    t = pa.concat_tables([pq.read_table(f) for f in files])
    return t.sort_by("candidate_id")


def load_candidate_audio(out_dir: str | Path, candidate_ids: Sequence[int]) -> dict[int, dict[str, bytes]]:
    """Stored probe audio (16 kHz FLAC) of the given candidates, by id."""
    want = set(int(c) for c in candidate_ids)
    out: dict[int, dict[str, bytes]] = {}
    for f in sorted((Path(out_dir) / "chunks").glob("audio-*.parquet")):
        for r in pq.read_table(f).to_pylist():
            if r["candidate_id"] in want:
                out[r["candidate_id"]] = {"zh": r["audio_zh"], "en": r["audio_en"]}
    missing = want - set(out)
    if missing:
        raise KeyError(f"{out_dir}: no stored audio for candidates {sorted(missing)[:5]}")
    return out


def centroids(table: pa.Table) -> np.ndarray:
    """Unit centroid of each candidate's probe embeddings (zh + en), (n, d) float64."""
    zh = np.asarray(table.column("emb_zh").to_pylist(), dtype=np.float64)
    en = np.asarray(table.column("emb_en").to_pylist(), dtype=np.float64)
    c = zh + en
    return c / np.maximum(np.linalg.norm(c, axis=1, keepdims=True), 1e-12)


def shipped_voice_embeddings(tts: Any, encoder: Any) -> dict[str, np.ndarray]:
    """Unit centroid embedding of each shipped base voice on the search probes (no WORLD).

    The shipped voices stand for the real speakers the TTS was trained on: the privacy gate keeps
    every library identity away from them.
    """
    out = {}
    for n in tts.base_voices:
        style = Style(-1, "shipped", "female", {n: 1.0})
        audio = synthesize_style(tts, style)
        c = sum(encoder.embed(x, int(tts.sample_rate_hz)).astype(np.float64) for x in audio.values())
        out[n] = c / np.linalg.norm(c)
    return out
