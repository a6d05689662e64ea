"""DNSMOS from the speechmos wheel: real recordings, artefacts lower the score, unjudgeable clips are NaN."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest

from kespeechchat.audio import load_audio, resample
from kespeechchat.backends.quality import DNSMOS_SAMPLE_RATE_HZ, DNSMOSScorer, QualityScorer, make_quality
from kespeechchat.config import QualityConfig

pytest.importorskip("speechmos")


@pytest.fixture(scope="module")
def scorer() -> DNSMOSScorer:
    s = DNSMOSScorer(num_threads=1)
    s.setup()
    return s


@pytest.fixture(scope="module")
def recordings(sample_data) -> dict[str, tuple[np.ndarray, int]]:
    d = sample_data / "audio"
    with open(d / "transcripts.tsv", encoding="utf-8") as f:
        return {r["file"]: load_audio(d / r["file"]) for r in csv.DictReader(f, delimiter="\t")}


@pytest.fixture(scope="module")
def scores(scorer, recordings):
    return {name: scorer.score(x, sr) for name, (x, sr) in recordings.items()}


def test_real_speech_scores_in_the_usual_range(scores):
    for name, s in scores.items():
        print(f"{name}\tovrl {s.ovrl:.2f} sig {s.sig:.2f} bak {s.bak:.2f} p808 {s.p808:.2f}")
        for v in (s.ovrl, s.sig, s.bak, s.p808):
            assert 1.0 <= v <= 5.0
        assert s.ovrl >= 2.3, name


def test_windowing_stays_close_to_the_reference(scorer, recordings, scores):
    """speechmos' own run (1 s hop, looped short clips) vs ours (one window per 9 s)."""
    from speechmos import dnsmos

    for name, (x, sr) in recordings.items():
        x16 = np.clip(resample(x, sr, DNSMOS_SAMPLE_RATE_HZ), -1.0, 1.0)
        ref = dnsmos.run(x16, DNSMOS_SAMPLE_RATE_HZ)
        print(f"{name}\tours {scores[name].ovrl:.3f}\treference {ref['ovrl_mos']:.3f}")
        assert scores[name].ovrl == pytest.approx(float(ref["ovrl_mos"]), abs=0.3), name


def test_noise_and_distortion_lower_the_score(scorer, recordings, scores):
    rng = np.random.default_rng(0)
    for name in ("zh_cosyvoice_zero_shot_prompt.wav", "en_wenet_librispeech_1995-1837-0001.wav"):
        x, sr = recordings[name]
        rms = float(np.sqrt(np.mean(x**2)))
        noisy = np.clip(x + rng.standard_normal(x.size).astype(np.float32) * rms, -1, 1)  # 0 dB SNR
        crushed = np.round(x * 8) / 8  # 4-bit quantisation: buzzing
        assert scorer.score(noisy, sr).ovrl < scores[name].ovrl - 0.8, name
        assert scorer.score(crushed, sr).ovrl < scores[name].ovrl - 0.3, name


def test_sample_rate_does_not_matter(scorer, recordings, scores):
    x, sr = recordings["zh_funasr_asr_example.wav"]
    assert sr == 16000
    assert scorer.score(resample(x, sr, 24000), 24000).ovrl == pytest.approx(
        scores["zh_funasr_asr_example.wav"].ovrl, abs=0.1
    )


def test_unjudgeable_clips_are_nan(scorer):
    sr = 16000
    assert math.isnan(scorer.score(np.zeros(0, np.float32), sr).ovrl)
    assert math.isnan(scorer.score(np.full(int(0.2 * sr), 0.1, np.float32), sr).ovrl)  # too short
    assert math.isnan(scorer.score(np.zeros(sr, np.float32), sr).ovrl)  # digital silence
    x = np.sin(np.arange(sr) / 10).astype(np.float32)
    x[5] = np.nan
    assert math.isnan(scorer.score(x, sr).ovrl)
    with pytest.raises(ValueError, match="mono"):
        scorer.score(np.zeros((sr, 2), np.float32), sr)


def test_windows_cover_the_clip():
    s = DNSMOSScorer(hop_s=9.0)
    n = int(9.01 * 16000)
    short = np.arange(16000, dtype=np.float32)
    w = s.windows(short)
    assert len(w) == 1 and w[0].size == n and np.array_equal(w[0][16000:32000], short)  # repeated
    long = np.arange(20 * 16000, dtype=np.float32)
    w = s.windows(long)
    assert [x.size for x in w] == [n] * 3
    assert w[0][0] == 0 and w[1][0] == 9 * 16000 and w[-1][-1] == long[-1]  # the tail is scored
    assert len(DNSMOSScorer(hop_s=1.0).windows(long)) == 12  # the reference hop
    with pytest.raises(ValueError, match="hop_s"):
        DNSMOSScorer(hop_s=0)


def test_make_quality_from_config():
    q = make_quality(QualityConfig(num_threads=2, hop_s=4.5))
    assert isinstance(q, DNSMOSScorer) and isinstance(q, QualityScorer)
    assert (q.num_threads, q.hop_s, q.name) == (2, 4.5, "dnsmos")
    assert make_quality(QualityConfig(backend="none")) is None
