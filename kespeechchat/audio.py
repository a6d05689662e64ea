"""Audio helpers shared by the TTS, verify and package stages.

Audio travels between stages as FLAC bytes (16-bit PCM), the form the Hugging Face ``Audio``
feature stores, and is handled in memory as float32 mono in [-1, 1].
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from functools import lru_cache
from os import PathLike

import numpy as np
import soundfile as sf

SILENCE_FRAME_S = 0.020
SILENCE_RELATIVE_DB = 40.0
SILENCE_FLOOR_DBFS = -60.0
CLIPPING_LEVEL = 0.999


def _as_mono_float32(x: np.ndarray) -> np.ndarray:
    """Samples as float32, channels averaged (soundfile layout: (frames, channels))."""
    a = np.asarray(x)
    if a.ndim == 2:
        a = a.mean(axis=1)
    elif a.ndim != 1:
        raise ValueError(f"expected audio of shape (n,) or (n, channels), got {a.shape}")
    return a.astype(np.float32, copy=False)


def encode_flac(x: np.ndarray, sample_rate_hz: int) -> bytes:
    """16-bit PCM FLAC bytes of ``x`` (mono or (frames, channels)); values are clipped to [-1, 1].

    Non-finite samples become 0 so one bad value cannot make the whole utterance unreadable;
    ``audio_sanity`` is where NaN/inf is reported.
    """
    if sample_rate_hz <= 0:
        raise ValueError(f"sample_rate_hz must be positive, got {sample_rate_hz}")
    a = np.asarray(x, dtype=np.float32)
    if a.ndim not in (1, 2):
        raise ValueError(f"expected audio of shape (n,) or (n, channels), got {a.shape}")
    a = np.clip(np.nan_to_num(a, nan=0.0, posinf=1.0, neginf=-1.0), -1.0, 1.0)
    buf = io.BytesIO()
    sf.write(buf, a, int(sample_rate_hz), format="FLAC", subtype="PCM_16")
    return buf.getvalue()


def decode_audio(data: bytes) -> tuple[np.ndarray, int]:
    """Decode any format soundfile reads (FLAC, WAV, OGG…) to float32 mono and its sample rate."""
    x, sr = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    return _as_mono_float32(x), int(sr)


def load_audio(path: str | PathLike[str]) -> tuple[np.ndarray, int]:
    """Read an audio file to float32 mono and its sample rate."""
    x, sr = sf.read(str(path), dtype="float32", always_2d=True)
    return _as_mono_float32(x), int(sr)


def resample(x: np.ndarray, sr_from: int, sr_to: int) -> np.ndarray:
    """Polyphase resampling (scipy); output length is ceil(len(x) * sr_to / sr_from)."""
    if sr_from <= 0 or sr_to <= 0:
        raise ValueError(f"sample rates must be positive, got {sr_from} -> {sr_to}")
    a = _as_mono_float32(x)
    if sr_from == sr_to or a.size == 0:
        return a.copy()
    from scipy.signal import resample_poly

    g = math.gcd(int(sr_from), int(sr_to))
    return resample_poly(a, int(sr_to) // g, int(sr_from) // g).astype(np.float32, copy=False)


@dataclass(frozen=True)
class AudioSanity:
    """Cheap signal checks of one utterance; ``select`` turns them into accept/reject."""

    duration_s: float
    silence_ratio: float  # share of 20 ms frames that are near-silent (see audio_sanity)
    clipping_ratio: float  # share of samples at full scale
    peak: float  # max |x| over finite samples
    rms: float  # RMS over finite samples
    finite: bool  # False when any sample is NaN or inf


def audio_sanity(x: np.ndarray, sr: int) -> AudioSanity:
    """Measure silence, clipping, level and finiteness.

    A 20 ms frame is silent when its RMS is more than 40 dB under the loudest frame or under an
    absolute floor of -60 dBFS, so an all-quiet clip counts as silent rather than as its own
    reference. Non-finite samples are reported with ``finite=False`` and excluded from the levels.
    """
    if sr <= 0:
        raise ValueError(f"sample rate must be positive, got {sr}")
    a = _as_mono_float32(x).astype(np.float64)
    n = a.size
    duration_s = n / float(sr)
    finite_mask = np.isfinite(a)
    finite = bool(finite_mask.all())
    if not finite:
        a = np.where(finite_mask, a, 0.0)
    if n == 0:
        return AudioSanity(0.0, 1.0, 0.0, 0.0, 0.0, True)

    abs_a = np.abs(a)
    peak = float(abs_a.max())
    rms = float(np.sqrt(np.mean(a * a)))
    clipping_ratio = float(np.count_nonzero(abs_a >= CLIPPING_LEVEL)) / n

    frame = max(1, int(round(SILENCE_FRAME_S * sr)))
    n_frames = max(1, math.ceil(n / frame))
    padded = np.zeros(n_frames * frame, dtype=np.float64)
    padded[:n] = a
    frames = padded.reshape(n_frames, frame)
    # the last, partial frame is measured over its real samples only
    counts = np.full(n_frames, frame, dtype=np.float64)
    counts[-1] = n - (n_frames - 1) * frame
    frame_rms = np.sqrt((frames * frames).sum(axis=1) / counts)
    frame_db = 20.0 * np.log10(np.maximum(frame_rms, 1e-10))
    threshold_db = max(float(frame_db.max()) - SILENCE_RELATIVE_DB, SILENCE_FLOOR_DBFS)
    silence_ratio = float(np.count_nonzero(frame_db < threshold_db)) / n_frames

    return AudioSanity(
        duration_s=duration_s,
        silence_ratio=silence_ratio,
        clipping_ratio=clipping_ratio,
        peak=peak,
        rms=rms,
        finite=finite,
    )


REPEAT_HOP_S = 0.01
REPEAT_MIN_LAG_S = 0.5
REPEAT_SIMILARITY = 0.9


def _log_spectrogram(x: np.ndarray, sr: int, hop_s: float = REPEAT_HOP_S, n_bands: int = 40) -> np.ndarray:
    """Log band energies (frames × bands) of 25 ms windows every ``hop_s``, bands equally spaced
    on the mel scale up to 8 kHz."""
    a = _as_mono_float32(x).astype(np.float64)
    hop = max(1, int(round(hop_s * sr)))
    win = max(hop, int(round(0.025 * sr)))
    n_fft = 1 << (win - 1).bit_length()
    if a.size < win:
        return np.zeros((0, n_bands))
    n = 1 + (a.size - win) // hop
    idx = np.arange(win)[None, :] + hop * np.arange(n)[:, None]
    spec = np.abs(np.fft.rfft(a[idx] * np.hanning(win), n=n_fft, axis=1)) ** 2
    return np.log(spec @ _mel_bands(sr, n_fft, n_bands).T + 1e-10)


@lru_cache(maxsize=8)
def _mel_bands(sr: int, n_fft: int, n_bands: int) -> np.ndarray:
    """Triangular filters (bands × FFT bins), equally spaced on the mel scale up to 8 kHz."""
    freqs = np.fft.rfftfreq(n_fft, 1.0 / sr)
    mel = 2595.0 * np.log10(1.0 + freqs / 700.0)
    top = 2595.0 * np.log10(1.0 + min(8000.0, sr / 2) / 700.0)
    edges = np.linspace(0.0, top, n_bands + 2)
    bands = np.zeros((n_bands, freqs.size))
    for b in range(n_bands):
        lo, mid, hi = edges[b : b + 3]
        bands[b] = np.clip(np.minimum((mel - lo) / (mid - lo), (hi - mel) / (hi - mid)), 0.0, None)
    return bands


def _longest_true_run(x: np.ndarray) -> int:
    edges = np.diff(np.concatenate(([0], x.astype(np.int8), [0])))
    starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    return int((ends - starts).max()) if starts.size else 0


def repetition_ratio(x: np.ndarray, sr: int) -> float:
    """Share of the speech frames that repeat earlier speech of the same clip: the longest run of
    frames whose spectra match (cosine ≥ 0.9 after per-band normalisation, averaged over 0.1 s)
    the frames one fixed lag (≥ 0.5 s) earlier, over all speech frames. A TTS loop that says its
    text twice scores about 0.5, ordinary speech under 0.1; Whisper often transcribes such a
    loop only once, so neither the error rate nor (for a fast voice) the speaking rate sees it."""
    f = _log_spectrogram(x, sr)
    if f.shape[0] < 2 * int(REPEAT_MIN_LAG_S / REPEAT_HOP_S):
        return 0.0
    energy = f.max(axis=1)
    speech = energy > energy.max() - np.log(10.0**4)  # within 40 dB of the loudest frame
    if speech.sum() < 10:
        return 0.0
    g = f - f[speech].mean(axis=0)
    g /= np.maximum(np.linalg.norm(g, axis=1, keepdims=True), 1e-9)
    sim = g @ g.T
    n = f.shape[0]
    smooth = np.ones(10) / 10.0
    best = 0
    for lag in range(int(REPEAT_MIN_LAG_S / REPEAT_HOP_S), n - 10):
        d = np.diagonal(sim, offset=lag)
        both = speech[lag:] & speech[: n - lag]
        hit = (np.convolve(d, smooth, mode="same") >= REPEAT_SIMILARITY) & both
        if hit.sum() <= best:
            continue
        # longest run of hits among the frames that are speech at both ends (silence neither
        # extends nor breaks a run)
        best = max(best, _longest_true_run(hit[both]))
    return float(best) / float(speech.sum())
