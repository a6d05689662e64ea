"""Voice recipes: identities × prosodic variants from the measured pool, balance, storage, WORLD transforms."""

from __future__ import annotations

from collections import Counter, defaultdict

import numpy as np
import pyarrow.parquet as pq
import pytest
import soundfile as sf

from kespeechchat.backends.world import analyse, median_f0_hz, synthesize_from, transform
from kespeechchat.voice import VoiceRecipe
from voice_library.bounds import SPEED_RANGE, VARIANT_PITCH_RANGE
from voice_library.pool import load_pool
from voice_library.recipes import (
    SCHEMA,
    agent_identities,
    agent_voices,
    build_library,
    distinctness_statement,
    library_meta,
    library_meta_for,
    load_library,
    save_library,
)


@pytest.fixture(scope="module")
def pool():
    return load_pool()


def test_library_is_deterministic_from_its_seed():
    a, b = build_library(60, seed=3), build_library(60, seed=3)
    assert a == b
    other = build_library(60, seed=4)
    assert not {v.voice_id for v in a} & {v.voice_id for v in other}
    assert build_library(30, seed=3) == build_library(90, seed=3)[:30]  # a smaller library is a prefix


def test_voices_are_variants_of_pool_identities(pool):
    voices = build_library(600, seed=1)
    by_id = {i.identity_id: i for i in pool.identities}
    groups: dict[str, list[VoiceRecipe]] = defaultdict(list)
    for v in voices:
        groups[v.identity_id].append(v)
        ident = by_id[v.identity_id]  # every voice belongs to a measured identity
        assert v.role == "user" and v.backend == "kokoro" and v.voice_id.startswith("v-")
        assert v.base_weights == ident.base_weights and v.formant_ratio == ident.formant_ratio
        assert v.prosody_weights == ident.prosody_weights and v.style_offsets == ident.style_offsets
        assert v.gender == ident.gender and v.age_band == ident.age_band
        assert SPEED_RANGE[0] <= v.speed <= SPEED_RANGE[1]
        assert (
            VARIANT_PITCH_RANGE[0] - 0.002
            <= v.pitch_ratio / ident.pitch_ratio
            <= VARIANT_PITCH_RANGE[1] + 0.002
        )
    assert len({v.voice_id for v in voices}) == 600
    canonical = [min(g, key=lambda v: v.speed != 1.0) for g in groups.values()]
    assert all(
        c.speed == 1.0 and c.pitch_ratio == round(by_id[c.identity_id].pitch_ratio, 3) for c in canonical
    )
    assert any(v.speed != 1.0 for v in voices)  # variants do vary


def test_balance_of_gender_language_and_identity_use(pool):
    voices = build_library(1000, seed=0)
    assert Counter(v.gender for v in voices) == {"female": 500, "male": 500}
    for g in ("female", "male"):
        mine = [v for v in voices if v.gender == g]
        langs = Counter(v.language for v in mine)
        assert abs(langs["zh"] - langs["en"]) <= 2
        uses = Counter(v.identity_id for v in mine)
        serves = {i.identity_id: i.languages or ["zh", "en"] for i in pool.identities}
        assert all(v.language in serves[v.identity_id] for v in mine)
        # each language spread evenly over every identity that speaks it (fewer identities serve
        # zh, so each of them has more zh voices than an identity has en voices)
        for lang in ("zh", "en"):
            n = Counter(v.identity_id for v in mine if v.language == lang)
            speakers = [i for i in uses if lang in serves[i]]
            assert set(n) == set(speakers) and max(n.values()) - min(n.values()) <= 1, (lang, n)
        # and a bilingual identity speaks both
        assert all(
            len({v.language for v in mine if v.identity_id == i}) == 2
            for i, k in uses.items()
            if k >= 2 and len(serves[i]) == 2
        )


def test_full_size_library(pool):
    voices = build_library(42_002, seed=0)
    assert len({v.voice_id for v in voices}) == 42_002
    n_users = len(pool.identities) - 4  # four identities speak as agents
    assert len({v.identity_id for v in voices}) == n_users
    agent_ids = {v.identity_id for v in agent_voices()}
    assert not agent_ids & {v.identity_id for v in voices}


def test_stricter_bound_uses_fewer_identities(pool):
    tau = round(pool.max_identity_cosine - 0.05, 2)
    strict = build_library(2000, seed=0, max_identity_cosine=tau)
    kept = {i.identity_id for i in pool.restrict(tau).identities}
    assert {v.identity_id for v in strict} <= kept
    with pytest.raises(ValueError, match="looser than the pool"):
        build_library(10, seed=0, max_identity_cosine=min(1.0, pool.max_identity_cosine + 0.05))
    with pytest.raises(ValueError, match="size"):
        build_library(0, seed=0)


def test_agents_are_the_clearest_identity_of_each_language_and_gender(pool):
    agents = agent_voices()
    assert {(v.language, v.gender) for v in agents} == {
        ("zh", "female"),
        ("zh", "male"),
        ("en", "female"),
        ("en", "male"),
    }
    assert all(v.role == "agent" and v.speed == 1.0 for v in agents)
    assert len({v.identity_id for v in agents}) == 4
    chosen = agent_identities(pool)
    for (lang, g), ident in chosen.items():
        err = ident.error_zh if lang == "zh" else ident.error_en
        assert ident.serves(lang)
        others = [
            i
            for i in pool.identities
            if i.gender == g
            and i.serves(lang)
            and i.identity_id not in {c.identity_id for c in chosen.values()}
        ]
        assert all(err <= (o.error_zh if lang == "zh" else o.error_en) for o in others)


def test_save_load_roundtrip_with_metadata(tmp_path, pool):
    voices = build_library(40, seed=9) + agent_voices()
    path = save_library(voices, tmp_path / "voices.parquet", library_meta_for(voices, pool, seed=9))
    assert load_library(path) == voices
    assert not list(tmp_path.glob(".tmp-*"))
    meta = library_meta(path)
    assert meta["voices"] == 44 and meta["identities"] == len({v.identity_id for v in voices})
    assert meta["distinct"]["max_identity_cosine"] == pool.max_identity_cosine
    text = distinctness_statement(meta)
    assert f"≤ {pool.max_identity_cosine}" in text and "distinct identities" in text
    by_lang = meta["identities_by_language"]
    assert f"zh {by_lang['zh']}" in text and f"en {by_lang['en']}" in text
    assert "12 (zh) / 8 (en) held-out sentences" in text  # 4 short + 8 longer zh, 4 + 4 en
    one = voices[0]
    assert VoiceRecipe.from_dict(one.to_dict()) == one
    # an older library without the split/offset columns still loads
    t = pq.read_table(path).drop(["prosody_weights", "style_offsets"])
    pq.write_table(t, tmp_path / "old.parquet")
    assert [v.voice_id for v in load_library(tmp_path / "old.parquet")] == [v.voice_id for v in voices]


def test_invalid_recipes_and_files_are_rejected(tmp_path):
    good = build_library(1, seed=0)[0].to_dict()
    with pytest.raises(ValueError, match="gender"):
        VoiceRecipe.from_dict({**good, "gender": "unknown"})
    with pytest.raises(ValueError, match="sum"):
        VoiceRecipe.from_dict({**good, "base_weights": {"jf_alpha": 0.5}})
    with pytest.raises(ValueError, match="prosody weights sum"):
        VoiceRecipe.from_dict({**good, "prosody_weights": {"jf_alpha": 0.5}})
    with pytest.raises(ValueError, match="unknown voice recipe fields"):
        VoiceRecipe.from_dict({**good, "timbre": 1})
    with pytest.raises(ValueError, match="speed"):
        VoiceRecipe.from_dict({**good, "speed": -1.0})
    with pytest.raises(FileNotFoundError):
        load_library(tmp_path / "none.parquet")
    import pyarrow as pa

    pq.write_table(pa.table({"voice_id": ["x"]}), tmp_path / "bad.parquet")
    with pytest.raises(ValueError, match="not a voice library"):
        load_library(tmp_path / "bad.parquet")
    rows = pq.read_table(save_library(build_library(3, seed=0), tmp_path / "l.parquet")).to_pylist()
    rows[2]["gender"] = "robot"
    pq.write_table(pa.Table.from_pylist(rows, schema=SCHEMA), tmp_path / "bad2.parquet")
    with pytest.raises(ValueError, match="voice row 2"):
        load_library(tmp_path / "bad2.parquet")


@pytest.fixture(scope="module")
def real_speech(sample_data) -> tuple[np.ndarray, int]:
    x, sr = sf.read(sample_data / "audio" / "zh_funasr_asr_example.wav", dtype="float32")
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


def test_one_analysis_serves_many_transforms(real_speech):
    x, sr = real_speech
    a = analyse(x, sr)
    for pitch, formant in ((1.1, 0.95), (0.85, 1.1)):
        np.testing.assert_array_equal(
            synthesize_from(a, sr, x.size, pitch, formant), transform(x, sr, pitch, formant)
        )
