from __future__ import annotations

import csv
import importlib.util
import itertools

import numpy as np
import pytest

from kespeechchat.audio import load_audio, resample
from kespeechchat.backends.speaker import (
    PyannoteEncoder,
    ResemblyzerEncoder,
    SpeakerEncoder,
    cosine,
    make_speaker,
)
from kespeechchat.config import SpeakerConfig


@pytest.fixture(scope="module")
def encoder():
    enc = ResemblyzerEncoder()
    enc.setup()
    return enc


@pytest.fixture(scope="module")
def recordings(sample_data):
    d = sample_data / "audio"
    with open(d / "transcripts.tsv", encoding="utf-8") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    return {r["file"]: load_audio(d / r["file"]) for r in rows}


@pytest.fixture(scope="module")
def half_embeddings(encoder, recordings):
    """Embeddings of the first and second half of each recording (one speaker per recording)."""
    out = {}
    for name, (x, sr) in recordings.items():
        n = x.size // 2
        out[name] = (encoder.embed(x[:n], sr), encoder.embed(x[n:], sr))
    return out


def test_embedding_is_unit_norm_float32(half_embeddings):
    for a, b in half_embeddings.values():
        for e in (a, b):
            assert e.dtype == np.float32 and e.shape == (256,)
            assert float(np.linalg.norm(e)) == pytest.approx(1.0, abs=1e-5)


def test_same_speaker_scores_higher_than_different_speakers(half_embeddings):
    same = {name: cosine(a, b) for name, (a, b) in half_embeddings.items()}
    different = {
        (n1, n2, i, j): cosine(e1[i], e2[j])
        for (n1, e1), (n2, e2) in itertools.combinations(half_embeddings.items(), 2)
        for i in (0, 1)
        for j in (0, 1)
    }
    for name, s in same.items():
        print(f"same\t{name}\t{s:.3f}")
    print(f"different: max {max(different.values()):.3f}, mean {np.mean(list(different.values())):.3f}")
    assert min(same.values()) > max(different.values())
    assert np.mean(list(same.values())) - np.mean(list(different.values())) > 0.15


def test_embedding_does_not_depend_on_sample_rate(encoder, recordings):
    x, sr = recordings["zh_funasr_asr_example.wav"]
    assert sr == 16000
    a = encoder.embed(x, sr)
    b = encoder.embed(resample(x, sr, 24000), 24000)
    assert cosine(a, b) > 0.97


def test_silence_gives_a_finite_embedding_far_from_speech(encoder, half_embeddings):
    e = encoder.embed(np.zeros(16000, dtype=np.float32), 16000)
    assert np.all(np.isfinite(e)) and float(np.linalg.norm(e)) == pytest.approx(1.0, abs=1e-5)
    same_min = min(cosine(a, b) for a, b in half_embeddings.values())
    assert all(cosine(e, a) < same_min for a, _ in half_embeddings.values())
    with pytest.raises(ValueError, match="empty"):
        encoder.embed(np.zeros(0, dtype=np.float32), 16000)


def test_cosine():
    a = np.array([1.0, 2.0, 3.0], dtype=np.float32)
    assert cosine(a, a) == pytest.approx(1.0)
    assert cosine(a, -a) == pytest.approx(-1.0)
    assert cosine(a, 10 * a) == pytest.approx(1.0)
    assert cosine([1, 0], [0, 1]) == pytest.approx(0.0)
    assert cosine(np.zeros(3), a) == 0.0
    with pytest.raises(ValueError):
        cosine(a, a[:2])


def test_make_speaker_from_config(tmp_path):
    enc = make_speaker(SpeakerConfig())
    assert isinstance(enc, ResemblyzerEncoder) and isinstance(enc, SpeakerEncoder)
    assert enc.name == "resemblyzer"
    with pytest.raises(ValueError, match="model_dir"):
        make_speaker(SpeakerConfig(backend="pyannote"))
    py = make_speaker(SpeakerConfig(backend="pyannote", model_dir=str(tmp_path)))
    assert isinstance(py, PyannoteEncoder) and isinstance(py, SpeakerEncoder) and py.name == "pyannote"


def test_pyannote_without_package_or_weights_fails_clearly(tmp_path):
    enc = PyannoteEncoder(str(tmp_path / "wespeaker"), device="cpu")
    try:
        installed = importlib.util.find_spec("pyannote.audio") is not None
    except ModuleNotFoundError:  # no "pyannote" namespace at all
        installed = False
    if not installed:
        with pytest.raises(ImportError, match=r"kespeechchat\[gpu\]"):
            enc.setup()
    else:
        with pytest.raises(FileNotFoundError, match="pytorch_model.bin"):
            enc.setup()


def test_make_speaker_passes_device_and_threads(tmp_path):
    enc = make_speaker(SpeakerConfig(num_threads=2))
    assert (enc.device, enc.num_threads) == ("cpu", 2)
    py = make_speaker(SpeakerConfig(backend="pyannote", model_dir=str(tmp_path), device="cuda:1"))
    assert py.device == "cuda:1"
    assert make_speaker(SpeakerConfig(backend="pyannote", model_dir=str(tmp_path))).device == "cuda"
