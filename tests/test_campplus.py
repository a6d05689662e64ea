"""CAM++ speaker embeddings as CosyVoice 2 computes them, on an ONNX graph with CAM++'s signature.

The real ``campplus.onnx`` comes with CosyVoice's model directory (not here); the graph the
``campplus_like`` fixture builds (conftest) has its input (batch, frames, 80) and output (batch, 192), so onnxruntime, the Kaldi front
end and the checks run exactly as they would on the real file.
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("kaldi_native_fbank", reason="needs the 'contract' extra")

from kespeechchat.backends.speaker import (  # noqa: E402
    CAMPLUS_DIM,
    CAMPlusEncoder,
    cosine,
    kaldi_fbank,
    make_speaker,
)
from kespeechchat.config import SpeakerConfig  # noqa: E402


def test_front_end_is_kaldi_fbank_as_cosyvoice_calls_it(recordings):
    """Our features equal FunASR's drop-in for torchaudio.compliance.kaldi.fbank at CosyVoice's
    arguments (num_mel_bins=80, dither=0, sample_frequency=16000), then minus the time mean."""
    torch = pytest.importorskip("torch")
    fbank = pytest.importorskip("funasr.utils.fbank").fbank
    from kespeechchat.audio import resample

    _, x, sr, _, _ = recordings[0]
    wav = resample(np.asarray(x, dtype=np.float32), sr, 16000)
    ours = kaldi_fbank(wav)
    theirs = fbank(torch.from_numpy(wav)[None, :], num_mel_bins=80, dither=0, sample_frequency=16000).numpy()
    assert ours.shape == theirs.shape and ours.shape[1] == 80
    assert ours.shape[0] == 1 + (wav.size - 400) // 160  # 25 ms windows every 10 ms, edges snipped
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-4)
    enc = CAMPlusEncoder("unused")
    feats = enc.features(x, sr)
    assert feats.shape == (1, ours.shape[0], 80)
    np.testing.assert_allclose(feats[0], ours - ours.mean(axis=0), atol=1e-5)


def test_embeds_through_onnxruntime_from_a_cosyvoice_directory(tmp_path, recordings, campplus_like):
    d = tmp_path / "CosyVoice2-0.5B"
    d.mkdir()
    w = campplus_like(d / "campplus.onnx")
    enc = make_speaker(SpeakerConfig(backend="campplus", model_dir=str(d)))
    assert isinstance(enc, CAMPlusEncoder) and enc.name == "campplus"
    _, x, sr, _, _ = recordings[0]
    e = enc.embed(x, sr)
    assert e.shape == (CAMPLUS_DIM,) and e.dtype == np.float32
    assert np.linalg.norm(e) == pytest.approx(1.0, abs=1e-5)
    expected = enc.features(x, sr)[0].max(axis=0) @ w
    assert cosine(e, expected) == pytest.approx(1.0, abs=1e-6)
    _, y, sr2, _, _ = recordings[1]
    assert cosine(enc.embed(y, sr2), e) < 0.999  # another recording, another vector


def test_wrong_model_or_missing_file_is_refused(tmp_path, campplus_like):
    with pytest.raises(FileNotFoundError, match="campplus.onnx"):
        CAMPlusEncoder(str(tmp_path)).setup()
    campplus_like(tmp_path / "resnet.onnx", out_dim=256)
    with pytest.raises(ValueError, match="256 dimensions"):
        CAMPlusEncoder(str(tmp_path / "resnet.onnx")).setup()
    with pytest.raises(ValueError, match="model_dir"):
        make_speaker(SpeakerConfig(backend="campplus"))
    campplus_like(tmp_path / "campplus.onnx")
    with pytest.raises(ValueError, match="shorter than one"):
        CAMPlusEncoder(str(tmp_path)).embed(np.zeros(100, dtype=np.float32), 16000)
