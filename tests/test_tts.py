"""TTS backends: Kokoro with the real embedded model; CosyVoice's loading guards (no weights here)."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from kespeechchat.backends.tts import (
    KOKORO_MAX_PHONEMES,
    CosyVoiceTTS,
    KokoroTTS,
    TTSBackend,
    make_tts,
    split_sentences,
)
from kespeechchat.backends.world import median_f0_hz
from kespeechchat.config import TTSConfig
from kespeechchat.voice import VoiceRecipe
from voice_library.recipes import agent_voices, build_library

ZH = "今天天气很好，我们一起去公园散步吧。"
EN = "The weather is lovely today, so let's take a walk in the park."
SR = 24000


@pytest.fixture(scope="module")
def tts(models_dir) -> KokoroTTS:
    from kespeechchat.models import kokoro_dir

    backend = KokoroTTS(model_dir=str(kokoro_dir(models_dir)), num_threads=1)
    backend.setup()
    return backend


@pytest.fixture(scope="module")
def voices() -> dict[str, VoiceRecipe]:
    by_key = {(v.language, v.gender): v for v in agent_voices()}
    return {
        "zh_female": by_key[("zh", "female")],
        "zh_male": by_key[("zh", "male")],
        "en_female": by_key[("en", "female")],
    }


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64))))


def test_kokoro_speaks_chinese(tts, voices):
    audio = tts.synthesize(ZH, "zh", voices["zh_female"])
    assert audio.dtype == np.float32 and audio.ndim == 1 and np.isfinite(audio).all()
    duration_s = audio.size / SR
    chars = sum(1 for c in ZH if "\u4e00" <= c <= "\u9fff")
    assert 1.5 <= chars / duration_s <= 9.0  # plausible zh speaking rate
    assert _rms(audio) > 0.02 and np.abs(audio).max() <= 1.0


def test_kokoro_speaks_english_deterministically(tts, voices):
    a = tts.synthesize(EN, "en", voices["en_female"], seed=0)
    b = tts.synthesize(EN, "en", voices["en_female"], seed=0)
    assert np.array_equal(a, b)
    assert 6.0 <= len(EN) / (a.size / SR) <= 30.0
    assert _rms(a) > 0.02


def test_different_voices_sound_different(tts, voices):
    female = tts.synthesize(ZH, "zh", voices["zh_female"])
    male = tts.synthesize(ZH, "zh", voices["zh_male"])
    f0_female, f0_male = median_f0_hz(female, SR), median_f0_hz(male, SR)
    assert f0_male < 165.0 < f0_female  # matches the recipes' gender labels
    assert not np.array_equal(tts.style(voices["zh_female"]), tts.style(voices["zh_male"]))


def test_recipe_pitch_and_blend_are_applied(tts):
    base = build_library(2, seed=11)[0]
    higher = VoiceRecipe.from_dict(
        {**base.to_dict(), "voice_id": "v-test-pitch", "pitch_ratio": base.pitch_ratio * 1.2}
    )
    f0_base = median_f0_hz(tts.synthesize(EN, "en", base), SR)
    f0_high = median_f0_hz(tts.synthesize(EN, "en", higher), SR)
    assert 1.12 <= f0_high / f0_base <= 1.28
    # a plain recipe's style is the affine blend of the base voices (offsets: test_voices_kokoro_style)
    plain = VoiceRecipe.from_dict(
        {**base.to_dict(), "voice_id": "v-test-plain", "prosody_weights": None, "style_offsets": None}
    )
    expected = sum(w * np.load(tts.model_dir + "/voices.npz")[n] for n, w in base.base_weights.items())
    np.testing.assert_allclose(tts.style(plain), expected, rtol=1e-5, atol=1e-6)
    if base.style_offsets or base.prosody_weights:
        assert not np.allclose(tts.style(base), expected, atol=1e-3)


def test_long_text_is_split_within_the_phoneme_limit(tts):
    text = "。".join(["我们今天讨论的是如何在家里种植番茄和辣椒，以及怎样给它们浇水施肥"] * 8) + "。"
    assert len(split_sentences(text, "zh")) == 8
    chunks = tts.phoneme_chunks(text, "zh")
    assert len(chunks) >= 2 and all(len(c) <= KOKORO_MAX_PHONEMES for c in chunks)
    assert len(split_sentences("Hi there. How are you? Fine; thanks! 3.5 stays.", "en")) == 5


def test_mixed_script_is_phonemised_per_language(tts):
    ph = tts.phonemize("我用Python写代码。", "zh")
    assert "Python" not in ph and "θ" in ph  # the Latin run went through English phonemes
    assert "ʨ" not in tts.phonemize("Hello world.", "en")


def test_empty_text_and_unknown_language_fail(tts, voices):
    for text in ("", "   \n"):
        with pytest.raises(ValueError, match="empty"):
            tts.synthesize(text, "zh", voices["zh_female"])
    with pytest.raises(ValueError, match="no speakable phonemes"):
        tts.synthesize("。……！", "zh", voices["zh_female"])
    with pytest.raises(ValueError, match="language"):
        tts.synthesize("Bonjour.", "fr", voices["zh_female"])


def test_make_tts_builds_the_configured_backend():
    backend = make_tts(TTSConfig(num_threads=2))
    assert isinstance(backend, KokoroTTS) and backend.num_threads == 2
    assert isinstance(backend, TTSBackend)
    with pytest.raises(ValueError, match="model_dir"):
        make_tts(TTSConfig(backend="cosyvoice"))
    assert isinstance(
        make_tts(TTSConfig(backend="cosyvoice", model_dir="/models/CosyVoice2-0.5B")), CosyVoiceTTS
    )


def test_cosyvoice_refuses_to_download_or_guess(tmp_path):
    voice = build_library(1, seed=0)[0]  # a Kokoro recipe: no speaker embedding
    backend = CosyVoiceTTS(str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="speaker_embedding"):
        backend.synthesize("你好。", "zh", voice)
    with pytest.raises(FileNotFoundError, match="nothing is downloaded"):
        backend.setup()


@pytest.mark.skipif(
    importlib.util.find_spec("cosyvoice") is not None, reason="a cosyvoice package is installed"
)
def test_cosyvoice_without_its_source_names_the_install(tmp_path):
    (tmp_path / "cosyvoice2.yaml").write_text("sample_rate: 24000\n")
    with pytest.raises(ImportError, match=r"kespeechchat\[gpu\]"):
        CosyVoiceTTS(str(tmp_path), source_dir=str(tmp_path / "no-checkout")).setup()


# --- seeds, retries and output checks ---------------------------------------------------------


def test_turn_and_attempt_seeds_are_stable_and_distinct():
    from kespeechchat.backends.tts import attempt_seed, turn_seed

    a = turn_seed(0, "d-1", 0)
    assert a == turn_seed(0, "d-1", 0) and 0 <= a < 2**31
    assert (
        len({turn_seed(0, "d-1", 0), turn_seed(0, "d-1", 1), turn_seed(0, "d-2", 0), turn_seed(1, "d-1", 0)})
        == 4
    )
    assert attempt_seed(a, 1) == a
    assert len({attempt_seed(a, k) for k in (1, 2, 3)}) == 3
    with pytest.raises(ValueError):
        attempt_seed(a, 0)


def test_retry_perturbation_is_seeded_and_bounded():
    from kespeechchat.backends.tts import retry_perturbation

    assert retry_perturbation(5, 1, 0.06) == (1.0, 1.0)
    assert retry_perturbation(5, 3, 0.0) == (1.0, 1.0)
    draws = [retry_perturbation(s, k, 0.06) for s in range(50) for k in (2, 3)]
    assert draws[0] == retry_perturbation(0, 2, 0.06)
    speeds = np.array([d[0] for d in draws])
    assert np.all(np.abs(speeds - 1) >= 0.03 - 1e-9) and np.all(np.abs(speeds - 1) <= 0.06 + 1e-9)
    assert (speeds > 1).any() and (speeds < 1).any()
    assert all(0.5 <= d[1] <= 1.5 for d in draws)


def test_kokoro_retry_renders_differently_and_reproducibly(tts, voices):
    from kespeechchat.backends.tts import retry_perturbation

    v = voices["en_female"]
    first = tts.synthesize(EN, "en", v, seed=7)
    assert np.array_equal(
        first, tts.synthesize(EN, "en", v, seed=99, attempt=1)
    )  # attempt 1 ignores the seed
    second = tts.synthesize(EN, "en", v, seed=7, attempt=2)
    assert np.array_equal(second, tts.synthesize(EN, "en", v, seed=7, attempt=2))
    speed, _ = retry_perturbation(7, 2, tts.speed_jitter)
    # a faster rendering is shorter, by about the speed factor (durations are rounded per phoneme)
    assert (second.size < first.size) == (speed > 1)
    assert second.size / first.size == pytest.approx(1 / speed, rel=0.05)


def test_output_problem():
    from kespeechchat.backends.tts import output_problem

    assert output_problem(np.zeros(100, np.float32)) is None  # silence is verify's business
    assert output_problem(np.zeros(0, np.float32))[0] == "tts_empty"
    x = np.ones(10, np.float32)
    x[3] = np.nan
    x[4] = np.inf
    reason, detail = output_problem(x)
    assert reason == "tts_nonfinite" and detail.startswith("2 of 10")


def test_style_honours_prosody_weights_and_offsets(tts):
    import types

    from kespeechchat.backends.kokoro_style import style_from_parts

    base = {"jf_alpha": 1.4, "jf_nezumi": -0.4}
    plain = types.SimpleNamespace(voice_id="v-a", base_weights=base)
    split = types.SimpleNamespace(
        voice_id="v-b", base_weights=base, prosody_weights={"jm_kumo": 1.0}, style_offsets=[0.5, -0.5]
    )
    a, b = tts.style(plain), tts.style(split)
    np.testing.assert_array_equal(a, style_from_parts(tts._voices, base))
    np.testing.assert_array_equal(b, style_from_parts(tts._voices, base, {"jm_kumo": 1.0}, [0.5, -0.5]))
    assert not np.array_equal(a, b)
    with pytest.raises(ValueError, match="unknown Kokoro base voices"):
        tts.style(types.SimpleNamespace(voice_id="v-c", base_weights={"af_nobody": 1.0}))


def test_make_tts_passes_config_through():
    backend = make_tts(TTSConfig(sentence_pause_s=0.4), speed_jitter=0.1)
    assert backend.sentence_pause_s == 0.4 and backend.speed_jitter == 0.1
    cv = make_tts(TTSConfig(backend="cosyvoice", model_dir="/m", source_dir="/src", fp16=True))
    assert cv.source_dir == "/src" and cv.fp16 and not cv.load_trt


_FAKE_COSYVOICE = '''
"""Stands in for CosyVoice's source checkout: the same class, constructor and inference_sft API.

Its "LM" samples with torch's global generator, like the real one, so seeding can be checked.
"""
import torch


class _Frontend:
    def __init__(self):
        self.spk2info = {}
        self.device = "cpu"


class CosyVoice2:
    def __init__(self, model_dir, load_jit=False, load_trt=False, fp16=False):
        self.model_dir, self.fp16 = model_dir, fp16
        self.sample_rate = 24000
        self.frontend = _Frontend()
        self.calls = []

    def inference_sft(self, tts_text, spk_id, stream=False, speed=1.0, text_frontend=True):
        self.calls.append((tts_text, spk_id, stream, speed))
        emb = self.frontend.spk2info[spk_id]["embedding"]
        assert tuple(emb.shape) == (1, 192)
        if tts_text == "silent":
            return
        for sentence in tts_text.split("|"):
            n = int(2400 * len(sentence) / speed)
            yield {"tts_speech": 0.1 * torch.randn(1, n) + 0.0 * emb.mean()}
'''


def test_cosyvoice_through_its_python_api(tmp_path):
    """CosyVoice needs GPU weights; a stand-in with its API checks our side of the protocol."""
    import dataclasses
    import sys

    pkg = tmp_path / "checkout" / "cosyvoice" / "cli"
    pkg.mkdir(parents=True)
    (pkg.parent / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    (pkg / "cosyvoice.py").write_text(_FAKE_COSYVOICE)
    model_dir = tmp_path / "CosyVoice2-0.5B"
    model_dir.mkdir()
    (model_dir / "cosyvoice2.yaml").write_text("sample_rate: 24000\n")
    base = build_library(1, seed=0)[0]
    voice = dataclasses.replace(
        base, backend="cosyvoice", speaker_embedding=[0.01] * 192, pitch_ratio=1.0, formant_ratio=1.0
    )
    saved_path, saved_mods = (
        list(sys.path),
        {k: v for k, v in sys.modules.items() if k.startswith("cosyvoice")},
    )
    try:
        tts = make_tts(
            TTSConfig(backend="cosyvoice", model_dir=str(model_dir), source_dir=str(tmp_path / "checkout"))
        )
        a1 = tts.synthesize("one|two", "zh", voice, seed=5)
        assert a1.dtype == np.float32 and a1.size == 2400 * 6 and tts.sample_rate_hz == 24000
        assert np.array_equal(a1, tts.synthesize("one|two", "zh", voice, seed=5))  # same seed, same sample
        a2 = tts.synthesize("one|two", "zh", voice, seed=5, attempt=2)
        assert a2.size == a1.size and not np.array_equal(a1, a2)  # a retry samples anew
        assert np.array_equal(a2, tts.synthesize("one|two", "zh", voice, seed=5, attempt=2))
        model = tts._model
        assert list(model.frontend.spk2info) == [voice.voice_id]  # registered once, by voice id
        assert model.calls[0] == ("one|two", voice.voice_id, False, voice.speed)  # non-streaming
        from kespeechchat.backends.tts import output_problem

        assert output_problem(tts.synthesize("silent", "zh", voice))[0] == "tts_empty"
        with pytest.raises(ValueError, match="192"):
            tts.synthesize(
                "x", "zh", dataclasses.replace(voice, voice_id="v-short", speaker_embedding=[0.1] * 10)
            )
    finally:
        sys.path[:] = saved_path
        for k in [k for k in sys.modules if k.startswith("cosyvoice")]:
            del sys.modules[k]
        sys.modules.update(saved_mods)


def test_arena_shrinking_session_changes_no_sample(tts, voices):
    from kespeechchat.backends.onnx import ShrinkingSession

    assert isinstance(tts._kokoro.sess, ShrinkingSession)
    wrapped = tts.synthesize(EN, "en", voices["en_female"])
    plain = tts._kokoro.sess
    try:
        tts._kokoro.sess = plain.session
        bare = tts.synthesize(EN, "en", voices["en_female"])
    finally:
        tts._kokoro.sess = plain
    np.testing.assert_array_equal(wrapped, bare)
