"""Speaker-embedding backends: resemblyzer (embedded, CPU), pyannote / WeSpeaker (production, GPU)
and CAM++ (``campplus.onnx`` of a CosyVoice model directory: the embedding CosyVoice 2 speaks from).

The verify stage compares each utterance with its voice's reference by cosine similarity, and the
voice library measures how far apart voices are; both only need unit-norm vectors from one
encoder, so a backend is a single ``embed`` call.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

from kespeechchat.audio import resample
from kespeechchat.backends import registry
from kespeechchat.backends.lazy import LazyModel, needs_extra
from kespeechchat.backends.registry import Finding

if TYPE_CHECKING:
    from kespeechchat.config import SpeakerConfig

ENCODER_SAMPLE_RATE_HZ = 16000


@runtime_checkable
class SpeakerEncoder(Protocol):
    """What verify and the voice-library audit need from a speaker encoder."""

    name: str

    def setup(self) -> None: ...

    def embed(self, x: np.ndarray, sr: int) -> np.ndarray:
        """Unit-norm float32 embedding of one utterance (mono audio at ``sr`` Hz)."""
        ...


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine similarity; 0 when either vector is zero (no direction to compare)."""
    va = np.asarray(a, dtype=np.float64).ravel()
    vb = np.asarray(b, dtype=np.float64).ravel()
    if va.shape != vb.shape:
        raise ValueError(f"embeddings differ in shape: {va.shape} vs {vb.shape}")
    na, nb = np.linalg.norm(va), np.linalg.norm(vb)
    if na == 0.0 or nb == 0.0:
        return 0.0
    return float(np.clip(va @ vb / (na * nb), -1.0, 1.0))


def _unit(v: Any) -> np.ndarray:
    e = np.asarray(v, dtype=np.float32).ravel()
    if not np.all(np.isfinite(e)):
        raise ValueError("speaker encoder returned a non-finite embedding")
    n = float(np.linalg.norm(e))
    return e / n if n > 0 else e


def _mono_16k(x: np.ndarray, sr: int) -> np.ndarray:
    a = np.asarray(x, dtype=np.float32)
    if a.ndim == 2:
        a = a.mean(axis=1)
    if a.size == 0:
        raise ValueError("cannot embed empty audio")
    a = np.nan_to_num(a, nan=0.0, posinf=0.0, neginf=0.0)
    return resample(a, int(sr), ENCODER_SAMPLE_RATE_HZ)


class ResemblyzerEncoder(LazyModel):
    """GE2E encoder shipped inside the resemblyzer wheel (256-d, CPU, about 0.02x real time)."""

    name = "resemblyzer"

    def __init__(self, device: str = "cpu", num_threads: int | None = 1):
        self.device = device
        self.num_threads = num_threads
        self._encoder: Any = None
        self._preprocess: Any = None

    def _load(self) -> None:
        with needs_extra(
            "the resemblyzer speaker encoder needs resemblyzer, torch and setuptools<81", "embedded"
        ):
            from resemblyzer import VoiceEncoder, preprocess_wav
        if self.num_threads and self.device == "cpu":
            import torch

            # torch's OpenMP pool spinning next to CTranslate2's (Whisper) made each embedding
            # take seconds instead of ~0.15 s on a busy 2-core machine; one thread is enough
            torch.set_num_threads(int(self.num_threads))
        self._encoder = VoiceEncoder(self.device, verbose=False)
        self._preprocess = preprocess_wav

    def embed(self, x: np.ndarray, sr: int) -> np.ndarray:
        self.setup()
        wav = _mono_16k(x, sr)
        if float(np.max(np.abs(wav))) < 1e-6:
            # digital silence: volume normalisation would divide by zero; the embedding is
            # meaningless anyway and scores low against any real voice
            return _unit(self._encoder.embed_utterance(wav))
        # volume normalisation and trimming of long pauses, as the encoder was trained
        trimmed = self._preprocess(wav)
        if trimmed.size < ENCODER_SAMPLE_RATE_HZ // 10:
            # the VAD removed (nearly) everything: embed what there is rather than nothing
            trimmed = wav
        return _unit(self._encoder.embed_utterance(trimmed))


class PyannoteEncoder(LazyModel):
    """pyannote.audio embedding model (e.g. WeSpeaker ResNet34) from a local checkpoint.

    ``model_dir`` is a ``pytorch_model.bin`` file or a directory holding one; a missing path is
    an error here, because pyannote would otherwise read it as a hub id and try to download it.
    """

    name = "pyannote"
    checkpoint_name = "pytorch_model.bin"

    def __init__(self, model_dir: str, device: str = "cuda"):
        self.model_dir = model_dir
        self.device = device
        self._inference: Any = None
        self._torch: Any = None

    def _checkpoint(self) -> Path:
        p = Path(self.model_dir)
        if p.is_file():
            return p
        if (p / self.checkpoint_name).is_file():
            return p / self.checkpoint_name
        raise FileNotFoundError(
            f"no pyannote checkpoint at {p} (expected a file or a directory with {self.checkpoint_name})"
        )

    def _load(self) -> None:
        with needs_extra("the pyannote speaker encoder needs pyannote.audio", "gpu"):
            import torch
            from pyannote.audio import Inference, Model
        model = Model.from_pretrained(str(self._checkpoint()))
        if model is None:
            raise RuntimeError(f"pyannote could not load a model from {self.model_dir}")
        inference = Inference(model, window="whole")
        inference.to(torch.device(self.device))
        self._torch = torch
        self._inference = inference

    def embed(self, x: np.ndarray, sr: int) -> np.ndarray:
        self.setup()
        wav = _mono_16k(x, sr)
        waveform = self._torch.from_numpy(np.ascontiguousarray(wav))[None, :]  # (channel, time)
        out = self._inference({"waveform": waveform, "sample_rate": ENCODER_SAMPLE_RATE_HZ})
        return _unit(out)


CAMPLUS_DIM = 192
CAMPLUS_FILE = "campplus.onnx"
CAMPLUS_MEL_BINS = 80


def kaldi_fbank(wav16k: np.ndarray, num_mel_bins: int = CAMPLUS_MEL_BINS) -> np.ndarray:
    """(frames, bins) log-mel filterbank as ``torchaudio.compliance.kaldi.fbank(speech,
    num_mel_bins=80, dither=0, sample_frequency=16000)`` computes it (Kaldi's defaults: 25 ms
    Povey windows every 10 ms, pre-emphasis 0.97, DC removed, power spectrum, 20 Hz to Nyquist),
    here by kaldi-native-fbank; the waveform is used at its float scale, as CosyVoice loads it."""
    try:
        import kaldi_native_fbank as knf
    except ImportError as e:
        raise ImportError(
            "the CAM++ speaker encoder needs kaldi-native-fbank; pip install 'kespeechchat[contract]'"
        ) from e
    opts = knf.FbankOptions()
    opts.frame_opts.samp_freq = float(ENCODER_SAMPLE_RATE_HZ)
    opts.frame_opts.dither = 0.0
    opts.frame_opts.frame_length_ms = 25.0
    opts.frame_opts.frame_shift_ms = 10.0
    opts.frame_opts.window_type = "povey"
    opts.frame_opts.preemph_coeff = 0.97
    opts.frame_opts.remove_dc_offset = True
    opts.frame_opts.round_to_power_of_two = True
    opts.frame_opts.snip_edges = True
    opts.mel_opts.num_bins = int(num_mel_bins)
    opts.mel_opts.low_freq = 20.0
    opts.mel_opts.high_freq = 0.0
    opts.use_energy = False
    opts.use_log_fbank = True
    opts.use_power = True
    fb = knf.OnlineFbank(opts)
    fb.accept_waveform(float(ENCODER_SAMPLE_RATE_HZ), np.asarray(wav16k, dtype=np.float32).ravel())
    fb.input_finished()
    n = fb.num_frames_ready
    if n == 0:
        return np.zeros((0, int(num_mel_bins)), dtype=np.float32)
    return np.stack([fb.get_frame(i) for i in range(n)]).astype(np.float32)


class CAMPlusEncoder(LazyModel):
    """CAM++ x-vectors (192-d) exactly as CosyVoice 2's frontend makes them: 16 kHz mono, 80-bin
    Kaldi fbank (``kaldi_fbank``), minus its mean over time, through ``campplus.onnx``.

    CosyVoice speaks in the voice of such a vector; a vector from another encoder, even of the
    same size, is a different space. ``model_path`` is the onnx file or the CosyVoice model
    directory that holds it. Embeddings are unit-norm (CosyVoice normalises them itself).
    """

    name = "campplus"
    dim = CAMPLUS_DIM

    def __init__(self, model_path: str, num_threads: int = 1):
        self.model_path = model_path
        self.num_threads = int(num_threads)
        self._session: Any = None
        self._input = ""

    def onnx_path(self) -> Path:
        p = Path(self.model_path)
        if p.is_dir():
            p = p / CAMPLUS_FILE
        if not p.is_file():
            raise FileNotFoundError(
                f"no CAM++ model at {self.model_path} (a {CAMPLUS_FILE} file or a CosyVoice model directory holding one)"
            )
        return p

    def _load(self) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = self.num_threads
        opts.inter_op_num_threads = 1
        sess = ort.InferenceSession(
            str(self.onnx_path()), sess_options=opts, providers=["CPUExecutionProvider"]
        )
        inp, out = sess.get_inputs()[0], sess.get_outputs()[0]
        shape = list(inp.shape)
        if len(shape) != 3 or (isinstance(shape[2], int) and shape[2] != CAMPLUS_MEL_BINS):
            raise ValueError(
                f"{self.model_path}: input {inp.name} has shape {shape}; CAM++ takes (batch, frames, {CAMPLUS_MEL_BINS})"
            )
        last = out.shape[-1] if out.shape else None
        if isinstance(last, int) and last != CAMPLUS_DIM:
            raise ValueError(f"{self.model_path}: output has {last} dimensions; CAM++ gives {CAMPLUS_DIM}")
        self._input = inp.name
        self._session = sess

    def features(self, x: np.ndarray, sr: int) -> np.ndarray:
        """(1, frames, 80) float32: the model input for one utterance."""
        feat = kaldi_fbank(_mono_16k(x, sr))
        if feat.shape[0] == 0:
            raise ValueError("utterance shorter than one 25 ms frame: nothing to embed")
        return (feat - feat.mean(axis=0, keepdims=True))[None, :, :]

    def embed(self, x: np.ndarray, sr: int) -> np.ndarray:
        self.setup()
        out = np.asarray(self._session.run(None, {self._input: self.features(x, sr)})[0]).ravel()
        if out.size != CAMPLUS_DIM:
            raise ValueError(f"{self.model_path}: gave {out.size} dimensions; CAM++ gives {CAMPLUS_DIM}")
        return _unit(out)


def make_speaker(cfg: SpeakerConfig) -> SpeakerEncoder:
    """The speaker encoder named in the config."""
    return registry.create("speaker", cfg)


def _resemblyzer(cfg: SpeakerConfig) -> ResemblyzerEncoder:
    return ResemblyzerEncoder(device=cfg.device or "cpu", num_threads=cfg.num_threads)


def _pyannote(cfg: SpeakerConfig) -> PyannoteEncoder:
    if not cfg.model_dir:
        raise ValueError("speaker.backend 'pyannote' needs speaker.model_dir (a local checkpoint)")
    return PyannoteEncoder(cfg.model_dir, device=cfg.device or "cuda")


def _diagnose_pyannote(cfg: SpeakerConfig) -> list[Finding]:
    p = Path(cfg.model_dir or "")
    ckpt = p if p.is_file() else p / "pytorch_model.bin"
    out = [
        Finding("pyannote checkpoint", ckpt.is_file(), str(ckpt) if ckpt.is_file() else f"missing: {ckpt}")
    ]
    out.append(registry.module_present("pyannote.audio", "pip install 'kespeechchat[gpu]'"))
    return out + registry.cuda_present(cfg.device or "cuda")


def _campplus(cfg: SpeakerConfig) -> CAMPlusEncoder:
    if not cfg.model_dir:
        raise ValueError(
            "speaker.backend 'campplus' needs speaker.model_dir (campplus.onnx or the CosyVoice model directory)"
        )
    return CAMPlusEncoder(cfg.model_dir, num_threads=cfg.num_threads)


def diagnose_campplus(model_dir: str | None) -> list[Finding]:
    """The CAM++ file loads and has the signature CosyVoice's CAM++ has (also used for CosyVoice's copy)."""
    if not model_dir:
        return [Finding("model_dir", False, "speaker.model_dir: campplus.onnx or the CosyVoice directory")]
    try:
        enc = CAMPlusEncoder(model_dir)
        enc.setup()  # checks input (B, T, 80) and a 192-d output
    except Exception as e:  # a model that cannot load is the finding
        return [Finding("campplus.onnx", False, f"{type(e).__name__}: {e}"[:300])]
    return [Finding("CAM++ signature", True, f"{enc.onnx_path().name}: (batch, frames, 80) -> 192")]


registry.register(
    registry.Backend(
        "speaker",
        "resemblyzer",
        _resemblyzer,
        "Resemblyzer GE2E speaker encoder",
        "Apache-2.0",
        lambda cfg: [registry.module_present("resemblyzer", "pip install 'kespeechchat[embedded]'")],
        embedded=True,
    )
)
registry.register(
    registry.Backend(
        "speaker",
        "pyannote",
        _pyannote,
        "pyannote/WeSpeaker embedding",
        "see the model's card",
        _diagnose_pyannote,
    )
)
registry.register(
    registry.Backend(
        "speaker",
        "campplus",
        _campplus,
        "CAM++ (3D-Speaker), as shipped with CosyVoice",
        "Apache-2.0",
        lambda cfg: diagnose_campplus(cfg.model_dir),
    )
)
