from __future__ import annotations

import io

import numpy as np
import pytest
import soundfile as sf

from kespeechchat.audio import AudioSanity, audio_sanity, decode_audio, encode_flac, load_audio, resample

SR = 24000


def _sine(freq_hz: float, seconds: float, sr: int = SR, amp: float = 0.5) -> np.ndarray:
    t = np.arange(int(round(seconds * sr))) / sr
    return (amp * np.sin(2 * np.pi * freq_hz * t)).astype(np.float32)


def test_flac_roundtrip_keeps_samples_to_16_bit_precision():
    x = _sine(440, 1.3)
    data = encode_flac(x, SR)
    assert data[:4] == b"fLaC"
    y, sr = decode_audio(data)
    assert sr == SR
    assert y.dtype == np.float32 and y.shape == x.shape
    assert np.max(np.abs(y - x)) <= 1.0 / 32768 + 1e-6
    info = sf.info(io.BytesIO(data))
    assert info.format == "FLAC" and info.subtype == "PCM_16" and info.channels == 1


def test_flac_clips_out_of_range_and_zeroes_non_finite():
    x = np.array([1.7, -3.0, 0.25, np.nan, np.inf, -np.inf], dtype=np.float32)
    y, _ = decode_audio(encode_flac(x, 16000))
    assert y[0] == pytest.approx(1.0, abs=1e-4)
    assert y[1] == pytest.approx(-1.0, abs=1e-4)
    assert y[2] == pytest.approx(0.25, abs=1e-4)
    assert y[3] == 0.0
    assert y[4] == pytest.approx(1.0, abs=1e-4) and y[5] == pytest.approx(-1.0, abs=1e-4)


def test_decode_downmixes_stereo_wav():
    left, right = _sine(300, 0.5, amp=0.4), np.zeros(12000, dtype=np.float32)
    buf = io.BytesIO()
    sf.write(buf, np.stack([left, right], axis=1), SR, format="WAV", subtype="FLOAT")
    y, sr = decode_audio(buf.getvalue())
    assert sr == SR and y.ndim == 1 and y.size == 12000
    np.testing.assert_allclose(y, left / 2, atol=1e-6)


def test_load_audio_reads_real_stereo_recording(sample_data):
    path = sample_data / "audio" / "en_whisper_jfk.flac"  # 44.1 kHz stereo
    x, sr = load_audio(path)
    assert sr == 44100 and x.dtype == np.float32 and x.ndim == 1
    assert x.size / sr == pytest.approx(11.0, abs=0.01)
    stereo, _ = sf.read(str(path), dtype="float32", always_2d=True)
    assert stereo.shape[1] == 2
    np.testing.assert_allclose(x, stereo.mean(axis=1), atol=1e-6)


@pytest.mark.parametrize(
    ("n", "sr_from", "sr_to"),
    [(24000, 24000, 16000), (1001, 24000, 16000), (44100, 44100, 16000), (16000, 16000, 24000)],
)
def test_resample_length(n, sr_from, sr_to):
    y = resample(np.zeros(n, dtype=np.float32), sr_from, sr_to)
    assert y.dtype == np.float32
    assert y.size == -(-n * sr_to // sr_from)  # ceil


def test_resample_keeps_frequency():
    y = resample(_sine(1000, 1.0), SR, 16000)
    spectrum = np.abs(np.fft.rfft(y))
    peak_hz = np.argmax(spectrum) * 16000 / y.size
    assert peak_hz == pytest.approx(1000, abs=2)
    assert np.max(np.abs(y)) == pytest.approx(0.5, abs=0.02)


def test_resample_same_rate_is_a_copy():
    x = _sine(200, 0.1)
    y = resample(x, SR, SR)
    assert y is not x and np.array_equal(x, y)


def test_sanity_of_clean_tone():
    s = audio_sanity(_sine(440, 2.0), SR)
    assert isinstance(s, AudioSanity)
    assert s.duration_s == pytest.approx(2.0)
    assert s.silence_ratio == 0.0 and s.clipping_ratio == 0.0 and s.finite
    assert s.peak == pytest.approx(0.5, abs=1e-3)
    assert s.rms == pytest.approx(0.5 / np.sqrt(2), abs=1e-3)


def test_sanity_catches_silence():
    assert audio_sanity(np.zeros(SR, dtype=np.float32), SR).silence_ratio == 1.0
    # half tone, half digital silence
    x = np.concatenate([_sine(440, 1.0), np.zeros(SR, dtype=np.float32)])
    assert audio_sanity(x, SR).silence_ratio == pytest.approx(0.5, abs=0.02)
    # a quiet tail 50 dB under the speech counts as silence (relative threshold: 40 dB)
    x = np.concatenate([_sine(440, 1.0), _sine(440, 3.0, amp=0.5 * 10 ** (-50 / 20))])
    assert audio_sanity(x, SR).silence_ratio == pytest.approx(0.75, abs=0.02)
    # ... but 20 dB under it does not
    x = np.concatenate([_sine(440, 1.0), _sine(440, 3.0, amp=0.05)])
    assert audio_sanity(x, SR).silence_ratio == 0.0
    # a clip that is quiet throughout is silent by the absolute floor, not its own reference
    rng = np.random.default_rng(0)
    hiss = (rng.standard_normal(SR) * 10 ** (-75 / 20)).astype(np.float32)
    assert audio_sanity(hiss, SR).silence_ratio == 1.0


def test_sanity_catches_clipping():
    x = np.clip(_sine(440, 1.0, amp=3.0), -1.0, 1.0)
    s = audio_sanity(x, SR)
    # |3 sin| >= 1 for about 78 % of a period
    assert s.clipping_ratio == pytest.approx(1 - 2 / np.pi * np.arcsin(1 / 3), abs=0.02)
    assert s.peak == pytest.approx(1.0)
    assert audio_sanity(_sine(440, 1.0, amp=0.9), SR).clipping_ratio == 0.0


def test_sanity_catches_nan_and_inf():
    x = _sine(440, 1.0)
    x[100] = np.nan
    s = audio_sanity(x, SR)
    assert not s.finite
    assert np.isfinite(s.peak) and s.peak == pytest.approx(0.5, abs=1e-3)
    y = _sine(440, 1.0)
    y[5] = np.inf
    assert not audio_sanity(y, SR).finite


def test_sanity_of_empty_audio():
    s = audio_sanity(np.zeros(0, dtype=np.float32), SR)
    assert s.duration_s == 0.0 and s.silence_ratio == 1.0 and s.finite


def test_sanity_of_real_recordings(sample_data):
    for path in sorted((sample_data / "audio").glob("*.wav")) + sorted(
        (sample_data / "audio").glob("*.flac")
    ):
        x, sr = load_audio(path)
        s = audio_sanity(x, sr)
        assert s.finite and 0.0 <= s.silence_ratio < 0.6 and s.clipping_ratio < 0.01, (path.name, s)
        assert 0.0 < s.rms < s.peak <= 1.0


def test_repetition_ratio_finds_speech_said_twice(sample_data):
    """Real recordings repeat little of themselves (≤ 0.12, the noisy JFK clip); the same recording said twice (a TTS
    loop) repeats about half of its speech, with or without a pause between, at any rate."""
    from kespeechchat.audio import repetition_ratio, resample

    for path in sorted((sample_data / "audio").glob("*.wav")) + sorted(
        (sample_data / "audio").glob("*.flac")
    ):
        x, sr = load_audio(path)
        x = x[: int(6 * sr)]
        assert repetition_ratio(x, sr) < 0.2, path.name  # noisy JFK: 0.12
        twice = np.concatenate([x, np.zeros(int(0.3 * sr), np.float32), x])
        assert 0.4 < repetition_ratio(twice, sr) <= 0.55, path.name
        x16 = resample(twice, sr, 16000)
        assert 0.4 < repetition_ratio(x16, 16000) <= 0.55, path.name
    assert repetition_ratio(np.zeros(SR, np.float32), SR) == 0.0
    assert repetition_ratio(np.zeros(10, np.float32), SR) == 0.0
