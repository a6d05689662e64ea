"""A per-utterance quality score that flags synthesis artefacts: DNSMOS from ``speechmos``.

DNSMOS (Microsoft's deep noise suppression MOS, P.835 SIG/BAK/OVRL plus a P.808 MOS) predicts how
listeners would rate noisy or processed speech. It was trained for noise suppression, not for TTS
naturalness, so it is used as an artefact detector: buzz, hiss, metallic vocoder noise and
clipped or broken audio score low, while two clean voices are barely told apart. The gate is
``select.min_dnsmos_ovrl``; verify only writes the score.

The ONNX models ship inside the ``speechmos`` wheel (install it with ``--no-deps``; it imports
``librosa``, ``onnxruntime``, ``numpy`` and ``requests``). Features, models and the polynomial
calibration are speechmos' own; two things differ from its ``run``:

* the sessions are limited to the worker's threads, so a pool of workers does not oversubscribe
  the CPU;
* windows of 9.01 s are taken every ``hop_s`` (default 9 s) instead of every 1 s, and a clip
  shorter than a window is repeated to fill exactly one window (the reference repeats it to at
  least 9.01 s and then slides, scoring up to nine near-identical windows). One window costs
  about 0.3-0.8 s of CPU, so this is what makes a score per utterance affordable;
  ``tests/test_quality.py`` checks the scores stay close to the reference on real speech.

A clip that cannot be judged (shorter than 0.25 s, digital silence, NaN samples) scores NaN:
"not measured". Select does not gate on NaN; silence and NaN have their own reasons upstream.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

from kespeechchat.audio import resample
from kespeechchat.backends import registry
from kespeechchat.backends.lazy import LazyModel
from kespeechchat.backends.onnx import ShrinkingSession

if TYPE_CHECKING:
    from kespeechchat.config import QualityConfig

DNSMOS_SAMPLE_RATE_HZ = 16000
DNSMOS_WINDOW_S = 9.01
DEFAULT_HOP_S = 9.0
# Shorter than this is not speech DNSMOS can judge (repeating 50 ms to fill 9 s scores noise).
MIN_SCORABLE_S = 0.25


@dataclass(frozen=True)
class DNSMOSScore:
    """P.835 speech quality (sig), background (bak), overall (ovrl), and the P.808 MOS; 1–5 scale."""

    ovrl: float
    sig: float
    bak: float
    p808: float


@runtime_checkable
class QualityScorer(Protocol):
    """What verify needs from a quality model: one score per clip (NaN when it cannot judge)."""

    name: str

    def setup(self) -> None: ...

    def score(self, x: np.ndarray, sr: int) -> DNSMOSScore: ...


def _speechmos_models() -> Path:
    try:
        import speechmos
    except ImportError as e:
        raise ImportError(
            "the DNSMOS quality score needs speechmos (it ships the ONNX models): "
            "pip install --no-deps 'speechmos==0.0.1.1' (it also imports librosa, onnxruntime, requests)"
        ) from e
    return Path(speechmos.__file__).resolve().parent


class DNSMOSScorer(LazyModel):
    """DNSMOS P.835 + P.808 on CPU with onnxruntime; loaded once per worker."""

    name = "dnsmos"

    def __init__(self, num_threads: int = 1, personalized: bool = False, hop_s: float = DEFAULT_HOP_S):
        if not 0 < hop_s <= DNSMOS_WINDOW_S:
            raise ValueError(f"hop_s must be in (0, {DNSMOS_WINDOW_S}], got {hop_s}")
        self.num_threads = int(num_threads)
        self.personalized = bool(personalized)
        self.hop_s = float(hop_s)
        self._impl: Any = None

    def _load(self) -> None:
        root = _speechmos_models()
        try:
            import onnxruntime as ort
            from speechmos.dnsmos import DNSMOS
        except ImportError as e:
            raise ImportError(
                f"speechmos.dnsmos cannot be imported ({e.name} missing); it needs librosa, "
                "onnxruntime and requests: pip install librosa onnxruntime requests"
            ) from e
        primary = root / ("pdnsmos_models" if self.personalized else "dnsmos_models") / "sig_bak_ovr.onnx"
        p808 = root / "dnsmos_models" / "model_v8.onnx"
        for p in (primary, p808):
            if not p.is_file():
                raise FileNotFoundError(f"speechmos is installed but lacks its model {p}")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = self.num_threads
        opts.inter_op_num_threads = 1
        impl = DNSMOS.__new__(DNSMOS)  # its __init__ makes sessions with all cores; ours are bounded
        impl.primary_model_path = str(primary)
        impl.onnx_sess = ShrinkingSession(
            ort.InferenceSession(str(primary), sess_options=opts, providers=["CPUExecutionProvider"])
        )
        impl.p808_onnx_sess = ShrinkingSession(
            ort.InferenceSession(str(p808), sess_options=opts, providers=["CPUExecutionProvider"])
        )
        self._impl = impl

    def windows(self, a: np.ndarray) -> list[np.ndarray]:
        """The 9.01 s windows scored for 16 kHz audio ``a`` (see the module docstring)."""
        n = int(DNSMOS_WINDOW_S * DNSMOS_SAMPLE_RATE_HZ)
        if a.size <= n:
            return [np.resize(a, n)]  # repeats the clip, like the reference's tiling
        hop = int(self.hop_s * DNSMOS_SAMPLE_RATE_HZ)
        starts = list(range(0, a.size - n + 1, hop))
        if starts[-1] != a.size - n:
            starts.append(a.size - n)  # the tail is scored too
        return [a[s : s + n] for s in starts]

    def score(self, x: np.ndarray, sr: int) -> DNSMOSScore:
        """Score one clip (any rate; resampled to 16 kHz); NaN when it cannot be judged."""
        self.setup()
        a = np.asarray(x, dtype=np.float32)
        if a.ndim != 1:
            raise ValueError(f"expected mono audio of shape (n,), got {a.shape}")
        nan = float("nan")
        if a.size < MIN_SCORABLE_S * sr or not np.all(np.isfinite(a)):
            return DNSMOSScore(nan, nan, nan, nan)
        if sr != DNSMOS_SAMPLE_RATE_HZ:
            a = resample(a, int(sr), DNSMOS_SAMPLE_RATE_HZ)
        a = np.clip(a, -1.0, 1.0)  # resampling can overshoot full scale a little; DNSMOS refuses |x| > 1
        if float(np.max(np.abs(a))) == 0.0:
            return DNSMOSScore(nan, nan, nan, nan)  # digital silence: nothing to judge
        impl = self._impl
        sig, bak, ovrl, p808 = [], [], [], []
        for w in self.windows(a):
            mel = np.asarray(impl.audio_melspec(audio=w[:-160]), dtype=np.float32)[np.newaxis]
            p808.append(float(impl.p808_onnx_sess.run(None, {"input_1": mel})[0][0][0]))
            raw = impl.onnx_sess.run(None, {"input_1": w[np.newaxis].astype(np.float32)})[0][0]
            s_, b_, o_ = impl.get_polyfit_val(raw[0], raw[1], raw[2], self.personalized)
            sig.append(float(s_))
            bak.append(float(b_))
            ovrl.append(float(o_))
        return DNSMOSScore(
            ovrl=float(np.mean(ovrl)),
            sig=float(np.mean(sig)),
            bak=float(np.mean(bak)),
            p808=float(np.mean(p808)),
        )

    def score_many(self, clips: list[tuple[np.ndarray, int]]) -> list[DNSMOSScore]:
        return [self.score(x, sr) for x, sr in clips]


def make_quality(cfg: QualityConfig) -> QualityScorer | None:
    """The configured scorer, or None when the quality score is switched off."""
    return registry.create("quality", cfg)


def _dnsmos(cfg: QualityConfig) -> DNSMOSScorer:
    return DNSMOSScorer(num_threads=cfg.num_threads, personalized=cfg.personalized, hop_s=cfg.hop_s)


registry.register(
    registry.Backend(
        "quality",
        "dnsmos",
        _dnsmos,
        "DNSMOS P.835 ONNX models from the speechmos package",
        "see the package's licence",
        lambda cfg: [
            registry.module_present("speechmos", "make install (speechmos is installed with --no-deps)")
        ],
        embedded=True,
    )
)
registry.register(registry.Backend("quality", "none", lambda cfg: None, diagnose=lambda cfg: []))
