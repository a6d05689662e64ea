"""Identity search: candidate drawing, a real (tiny) search with Kokoro + resemblyzer, and acceptance."""

from __future__ import annotations

import json

import numpy as np
import pytest

from voice_library.bounds import KOKORO_BASE_F0_HZ, KOKORO_BASE_VOICES, MAX_NEGATIVE_WEIGHT, PITCH_RANGE
from voice_library.search import (
    LENDIR_LIMITS,
    SEARCH_FAMILIES,
    SEARCH_PROBES,
    centroids,
    draw_style,
    draw_world,
    load_candidate_audio,
    load_candidates,
    pitch_for,
    run_search,
)

NAMES = list(KOKORO_BASE_VOICES)


def test_styles_are_deterministic_and_stay_in_their_family():
    for b in range(40):
        fam = SEARCH_FAMILIES[b % len(SEARCH_FAMILIES)]
        s = draw_style(0, b, fam, NAMES, KOKORO_BASE_F0_HZ)
        assert s == draw_style(0, b, fam, NAMES, KOKORO_BASE_F0_HZ)
        for w in filter(None, (s.base_weights, s.prosody_weights)):
            assert abs(sum(w.values()) - 1) < 1e-6
            assert -sum(v for v in w.values() if v < 0) <= MAX_NEGATIVE_WEIGHT + 1e-6
            assert any(v < 0 for v in w.values())  # every blend extrapolates
        assert (s.prosody_weights is not None) == fam.startswith("split")
        assert (s.style_offsets is not None) == ("lendir" in fam)
        if s.style_offsets:
            assert all(abs(o) <= lim for o, lim in zip(s.style_offsets, LENDIR_LIMITS, strict=True))
        if s.aim == "male":
            assert max(s.base_weights, key=lambda n: s.base_weights[n]) == "jm_kumo"
        world = draw_world(0, s, 5)
        assert len(world) == 5 and all(0.88 <= f <= 1.15 for _, f in world)
    assert draw_style(1, 3, "affine_world", NAMES, KOKORO_BASE_F0_HZ) != draw_style(
        0, 3, "affine_world", NAMES, KOKORO_BASE_F0_HZ
    )
    with pytest.raises(ValueError, match="family"):
        draw_style(0, 0, "pca", NAMES, KOKORO_BASE_F0_HZ)


def test_pitch_ratio_aims_at_the_target_within_range():
    assert pitch_for(200.0, 250.0) == 0.8
    assert pitch_for(100.0, 50.0) == PITCH_RANGE[1]
    assert pitch_for(110.0, 100.0) == 1.1
    assert pitch_for(float("nan"), 100.0) == 1.0


@pytest.fixture(scope="module")
def models(models_dir):
    import torch

    from kespeechchat.backends.speaker import ResemblyzerEncoder
    from kespeechchat.backends.tts import KokoroTTS

    torch.set_num_threads(1)
    return KokoroTTS(), ResemblyzerEncoder()


@pytest.fixture(scope="module")
def search(tmp_path_factory, models):
    tts, enc = models
    out = tmp_path_factory.mktemp("search")
    run_search(out, seed=5, n_blends=2, world_per_blend=2, tts=tts, encoder=enc, log=lambda s: None)
    return out


def test_search_writes_candidates_that_the_pipeline_tts_reproduces(search, models):
    from kespeechchat.voice import VoiceRecipe

    tts, enc = models
    t = load_candidates(search)
    assert t.column("candidate_id").to_pylist() == [0, 1, 2, 3]
    assert t.column("family").to_pylist() == ["affine_world"] * 2 + ["split_world"] * 2
    c = centroids(t)
    np.testing.assert_allclose(np.linalg.norm(c, axis=1), 1.0, atol=1e-9)
    row = t.slice(3, 1).to_pylist()[0]
    recipe = VoiceRecipe(
        voice_id="v-check",
        backend="kokoro",
        role="user",
        identity_id="i-check",
        base_weights=dict(row["base_weights"]),
        prosody_weights=dict(row["prosody_weights"]),
        speed=1.0,
        pitch_ratio=row["pitch_ratio"],
        formant_ratio=row["formant_ratio"],
        language="en",
        gender="male" if row["f0_median_hz"] < 165 else "female",
        age_band="adult",
    )
    x = tts.synthesize(SEARCH_PROBES["en"], "en", recipe)
    e = enc.embed(x, tts.sample_rate_hz)
    assert float(e @ np.asarray(row["emb_en"])) > 0.999  # what the run speaks is what was measured
    audio = load_candidate_audio(search, [3])
    assert set(audio[3]) == {"zh", "en"}
    with pytest.raises(KeyError, match="no stored audio"):
        load_candidate_audio(search, [99])


def test_search_resumes_and_refuses_other_parameters(search, models):
    tts, enc = models
    before = {p.name: p.stat().st_mtime_ns for p in (search / "chunks").iterdir()}
    lines: list[str] = []
    run_search(search, seed=5, n_blends=2, world_per_blend=2, tts=tts, encoder=enc, log=lines.append)
    assert lines == [] and before == {p.name: p.stat().st_mtime_ns for p in (search / "chunks").iterdir()}
    with pytest.raises(ValueError, match="other parameters"):
        run_search(search, seed=6, n_blends=2, world_per_blend=2, tts=tts, encoder=enc)
    assert json.loads((search / "search.json").read_text())["n_blends"] == 2


def test_select_identities_gates_and_bounds(search, models):
    from kespeechchat.backends.asr import FasterWhisperASR
    from voice_library.pool import save_pool, select_identities

    tts, enc = models
    from voice_library.search import shipped_voice_embeddings

    refs = {f"kokoro:{k}": v for k, v in shipped_voice_embeddings(tts, enc).items()}
    pool = select_identities(
        search, 0.97, asr=FasterWhisperASR(), references=refs, privacy_max_cosine=0.97, log=lambda s: None
    )
    counts = pool.meta["counts"]
    assert counts["candidates"] == 4 and 1 <= counts["accepted"] <= 4
    assert (search / "probe_errors.parquet").exists()
    c = pool.centroids()
    s = c @ c.T
    np.fill_diagonal(s, -1)
    assert s.max() <= 0.97
    for i in pool.identities:
        assert max(i.error_zh, i.error_en) <= 0.1 and i.nearest_reference.startswith("kokoro:")
        assert i.identity_id.startswith("i-")
    strict = select_identities(
        search, 0.97, asr=None, references=refs, privacy_max_cosine=-1.0, log=lambda s: None
    )
    assert strict.meta["counts"]["too_close_to_reference"] == 4 - strict.meta["counts"]["f0_out_of_range"]
    assert strict.identities == []
    save_pool(pool, search / "pool.parquet")
