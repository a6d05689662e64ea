"""Voice recipes: deterministic identities × variants, Parquet roundtrip, WORLD transforms on real speech."""

from __future__ import annotations

from collections import Counter, defaultdict

import numpy as np
import pyarrow.parquet as pq
import pytest
import soundfile as sf

from voice_library.recipes import (
    FORMANT_RANGE,
    MAX_NEGATIVE_WEIGHT,
    PITCH_RANGE,
    SPEED_RANGE,
    VoiceRecipe,
    agent_voices,
    build_library,
    load_library,
    predict_median_f0_hz,
    save_library,
)
from voice_library.world import median_f0_hz, transform


def test_library_is_deterministic_from_its_seed():
    a, b = build_library(60, seed=3), build_library(60, seed=3)
    assert a == b
    other = build_library(60, seed=4)
    assert not {v.voice_id for v in a} & {v.voice_id for v in other}
    assert build_library(30, seed=3, identities=30) == build_library(90, seed=3, identities=30)[:30]


def test_recipes_stay_in_the_measured_family():
    voices = build_library(300, seed=1)
    assert len({v.voice_id for v in voices}) == 300
    for v in voices:
        assert v.role == "user" and v.backend == "kokoro" and v.voice_id.startswith("v-")
        assert abs(sum(v.base_weights.values()) - 1.0) < 1e-6
        assert -sum(w for w in v.base_weights.values() if w < 0) <= MAX_NEGATIVE_WEIGHT + 1e-6
        assert any(w < 0 for w in v.base_weights.values())  # every identity extrapolates
        assert PITCH_RANGE[0] <= v.pitch_ratio <= PITCH_RANGE[1]
        assert FORMANT_RANGE[0] <= v.formant_ratio <= FORMANT_RANGE[1]
        assert SPEED_RANGE[0] <= v.speed <= SPEED_RANGE[1]
        f0 = predict_median_f0_hz(v.base_weights, v.pitch_ratio)
        assert (v.gender == "male") == (f0 < 165.0)


def test_identities_have_prosodic_variants_only():
    voices = build_library(250, seed=5)  # 100 identities, 2-3 variants each
    by_identity: dict[str, list[VoiceRecipe]] = defaultdict(list)
    for v in voices:
        by_identity[v.identity_id].append(v)
    assert len(by_identity) == 100
    for group in by_identity.values():
        assert (
            len({(tuple(v.base_weights.items()), v.formant_ratio, v.gender, v.age_band) for v in group}) == 1
        )
        canonical = group[0]
        assert canonical.speed == 1.0
        for variant in group[1:]:
            assert abs(variant.pitch_ratio / canonical.pitch_ratio - 1.0) <= 0.041
    genders = Counter(group[0].gender for group in by_identity.values())
    assert 40 <= genders["male"] <= 60  # rebalanced: only one of five base voices is male


def test_full_size_library_builds_with_distinct_ids():
    voices = build_library(42_002, seed=0)
    assert len({v.voice_id for v in voices}) == 42_002
    assert len({v.identity_id for v in voices}) == 100
    assert Counter(v.identity_id for v in voices).most_common(1)[0][1] == 421  # used evenly


def test_save_load_roundtrip(tmp_path):
    voices = build_library(40, seed=9) + agent_voices()
    path = save_library(voices, tmp_path / "voices.parquet")
    assert load_library(path) == voices
    assert not list(tmp_path.glob(".tmp-*"))
    meta = pq.read_schema(path).metadata[b"kespeechchat.voice_library"]
    assert b'"identities": 44' in meta and b'"voices": 44' in meta
    one = voices[0]
    assert VoiceRecipe.from_dict(one.to_dict()) == one


def test_invalid_recipes_are_rejected():
    good = build_library(1, seed=0)[0].to_dict()
    with pytest.raises(ValueError, match="gender"):
        VoiceRecipe.from_dict({**good, "gender": "unknown"})
    with pytest.raises(ValueError, match="sum"):
        VoiceRecipe.from_dict({**good, "base_weights": {"jf_alpha": 0.5}})
    with pytest.raises(ValueError, match="unknown voice recipe fields"):
        VoiceRecipe.from_dict({**good, "timbre": 1})


def test_agent_voices_cover_languages_and_genders():
    agents = agent_voices()
    assert {(v.language, v.gender) for v in agents} == {
        ("zh", "female"),
        ("zh", "male"),
        ("en", "female"),
        ("en", "male"),
    }
    assert all(v.role == "agent" for v in agents) and len({v.voice_id for v in agents}) == 4
    assert not {v.voice_id for v in agents} & {v.voice_id for v in build_library(100, seed=0)}


def test_cosyvoice_recipes_blend_reference_embeddings():
    rng = np.random.default_rng(0)
    names = ["spk_f1", "spk_f2", "spk_f3", "spk_m1", "spk_m2"]
    emb = {n: rng.normal(size=192) for n in names}
    f0 = {"spk_f1": 230.0, "spk_f2": 260.0, "spk_f3": 205.0, "spk_m1": 115.0, "spk_m2": 130.0}
    voices = build_library(20, seed=2, backend="cosyvoice", base_embeddings=emb, base_f0_hz=f0)
    assert voices == build_library(20, seed=2, backend="cosyvoice", base_embeddings=emb, base_f0_hz=f0)
    for v in voices:
        assert (
            v.backend == "cosyvoice" and v.speaker_embedding is not None and len(v.speaker_embedding) == 192
        )
        expected = sum(w * emb[n] for n, w in v.base_weights.items())
        cos = (
            np.dot(expected, v.speaker_embedding)
            / np.linalg.norm(expected)
            / np.linalg.norm(v.speaker_embedding)
        )
        assert cos > 0.9999
    agents = agent_voices("cosyvoice", base_embeddings=emb, base_f0_hz=f0)
    assert {v.gender for v in agents} == {"female", "male"}
    with pytest.raises(ValueError, match="base_embeddings"):
        build_library(5, seed=0, backend="cosyvoice")


@pytest.fixture(scope="module")
def real_speech(shared_data) -> tuple[np.ndarray, int]:
    x, sr = sf.read(shared_data / "audio" / "zh_funasr_asr_example.wav", dtype="float32")
    return (x if x.ndim == 1 else x.mean(axis=1)), sr


def test_world_identity_returns_the_input(real_speech):
    x, sr = real_speech
    np.testing.assert_array_equal(transform(x, sr, 1.0, 1.0), x)


def test_world_pitch_ratio_raises_median_f0(real_speech):
    x, sr = real_speech
    y = transform(x, sr, 1.2, 1.0)
    assert y.shape == x.shape and y.dtype == np.float32 and np.abs(y).max() <= 0.99 + 1e-6
    ratio = median_f0_hz(y, sr) / median_f0_hz(x, sr)
    assert 1.15 <= ratio <= 1.25


def test_world_formant_warp_moves_the_spectrum_not_the_pitch(real_speech):
    x, sr = real_speech

    def centroid_hz(sig: np.ndarray) -> float:
        spec = np.abs(np.fft.rfft(sig)) ** 2
        freqs = np.fft.rfftfreq(sig.size, 1.0 / sr)
        keep = freqs < 4000
        return float((spec[keep] * freqs[keep]).sum() / spec[keep].sum())

    up, down = transform(x, sr, 1.0, 1.15), transform(x, sr, 1.0, 0.88)
    assert centroid_hz(down) < centroid_hz(x) < centroid_hz(up)
    assert 0.95 <= median_f0_hz(up, sr) / median_f0_hz(x, sr) <= 1.05
    with pytest.raises(ValueError, match="positive"):
        transform(x, sr, 0.0, 1.0)
