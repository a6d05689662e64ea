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
from kespeechchat.config import TTSConfig
from voice_library.recipes import VoiceRecipe, agent_voices, build_library
from voice_library.world import median_f0_hz

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
    weights = base.base_weights
    expected = sum(w * np.load(tts.model_dir + "/voices.npz")[n] for n, w in weights.items())
    np.testing.assert_allclose(tts.style(base), expected, rtol=1e-5, atol=1e-6)


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
