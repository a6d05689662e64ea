"""ASR backends: faster-whisper with Whisper base (embedded, CPU) and FunASR Paraformer-zh (production, GPU).

The verify stage only needs "what did the TTS actually say", language known in advance, so the
language is always forced and decoding is greedy and deterministic (temperature 0, no fallback
sampling, no conditioning on earlier text). Chinese output is converted to simplified characters.

Whisper pads every input to a 30 s window, so transcribing a 3 s utterance costs as much as 30 s
of audio. ``FasterWhisperASR`` therefore packs short utterances of the same language into one
window, separated by a second of silence, and splits the transcript back by word timestamps.
On 12 short Kokoro clips this was about 3x faster than one clip at a time and no less accurate;
``BatchedInferencePipeline`` (one padded window per clip, batched) gave no gain on CPU.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

from kespeechchat.audio import resample
from kespeechchat.backends import registry
from kespeechchat.backends.lazy import LazyModel, needs_extra
from kespeechchat.backends.registry import Finding
from kespeechchat.langid import HAN_RANGES
from kespeechchat.models import is_prepared, whisper_dir

if TYPE_CHECKING:
    from kespeechchat.config import ASRConfig

ASR_SAMPLE_RATE_HZ = 16000
# packed windows stay under Whisper's 30 s so each is decoded in one pass
DEFAULT_WINDOW_S = 25.0
DEFAULT_GAP_S = 1.0
# a clip quieter than this (RMS) is treated as silence: an empty transcript is then believed
_SILENT_RMS = 1e-3


@runtime_checkable
class ASRBackend(Protocol):
    """What the verify stage needs from a speech recogniser."""

    name: str

    def setup(self) -> None: ...

    def transcribe(self, batch: list[tuple[np.ndarray, int, str]]) -> list[str]:
        """(audio, sample_rate_hz, language) per item -> text per item, in order; zh in simplified."""
        ...


@lru_cache(maxsize=1)
def _t2s() -> Any:
    import opencc

    return opencc.OpenCC("t2s")


_CJK = "\u3000-\u303f" + HAN_RANGES + "\uff00-\uffef"  # CJK punctuation, Han, full-width forms
_SPACE_NEXT_TO_CJK = re.compile(rf"(?<=[{_CJK}]) (?=[{_CJK}])|(?<=[{_CJK}]) (?=\w)|(?<=\w) (?=[{_CJK}])")


def _finish_text(text: str, language: str) -> str:
    """One space between words; Chinese: simplified, and no space next to a Chinese character
    (SeacoParaformer writes "你 好 iPhone 手 机"; that is "你好iPhone手机")."""
    text = " ".join(text.split())
    if language == "zh":
        text = _SPACE_NEXT_TO_CJK.sub("", _t2s().convert(text))
    return text


def _to_16k(x: np.ndarray, sr: int) -> np.ndarray:
    a = np.asarray(x, dtype=np.float32)
    if a.ndim == 2:
        a = a.mean(axis=1)
    a = np.nan_to_num(a, nan=0.0, posinf=0.0, neginf=0.0)
    return resample(a, int(sr), ASR_SAMPLE_RATE_HZ)


def _parse_device(device: str) -> tuple[str, int]:
    """'cuda:1' -> ('cuda', 1), as CTranslate2 wants it."""
    kind, _, index = device.partition(":")
    return kind, int(index) if index else 0


@dataclass(frozen=True)
class _Window:
    language: str
    items: tuple[int, ...]  # indices into the batch


def pack_windows(
    durations_s: Sequence[float], languages: Sequence[str], window_s: float, gap_s: float
) -> list[_Window]:
    """Group clips of one language, in input order, into windows of at most ``window_s`` seconds.

    A clip longer than the window gets a window of its own (Whisper then slides over it).
    """
    if len(durations_s) != len(languages):
        raise ValueError("durations_s and languages differ in length")
    windows: list[_Window] = []
    for lang in dict.fromkeys(languages):
        cur: list[int] = []
        cur_s = 0.0
        for i, (d, lg) in enumerate(zip(durations_s, languages, strict=True)):
            if lg != lang:
                continue
            need = d if not cur else cur_s + gap_s + d
            if cur and need > window_s:
                windows.append(_Window(lang, tuple(cur)))
                cur, cur_s = [], 0.0
                need = d
            cur.append(i)
            cur_s = need
        if cur:
            windows.append(_Window(lang, tuple(cur)))
    return windows


class FasterWhisperASR(LazyModel):
    """Whisper (CTranslate2) through faster-whisper; defaults to the embedded Whisper base.

    ``pack=False`` transcribes one clip per window (slower on short clips; kept for comparison
    and for inputs where cross-clip context is unwanted).
    """

    name = "faster_whisper"

    def __init__(
        self,
        model_dir: str | None = None,
        num_threads: int = 1,
        beam_size: int = 1,
        *,
        device: str = "cpu",
        compute_type: str | None = None,
        pack: bool = True,
        window_s: float = DEFAULT_WINDOW_S,
        gap_s: float = DEFAULT_GAP_S,
    ):
        if window_s <= 0 or window_s > 30:
            raise ValueError(f"window_s must be in (0, 30], got {window_s}")
        if gap_s < 0.3:
            raise ValueError(f"gap_s must be at least 0.3 s to split words reliably, got {gap_s}")
        self.model_dir = model_dir
        self.num_threads = int(num_threads)
        self.beam_size = int(beam_size)
        self.device = device
        self.compute_type = compute_type or ("int8" if device == "cpu" else "float16")
        self.pack = pack
        self.window_s = float(window_s)
        self.gap_s = float(gap_s)
        self._model: Any = None

    def _load(self) -> None:
        with needs_extra("faster-whisper ASR needs faster-whisper", "embedded"):
            from faster_whisper import WhisperModel
        if self.model_dir is None:
            model_dir = whisper_dir()
        else:
            model_dir = Path(self.model_dir)
            if not (model_dir / "model.bin").is_file():
                # faster-whisper would take a missing path for a hub name and try to download it
                raise FileNotFoundError(f"no CTranslate2 Whisper model (model.bin) in {model_dir}")
        kind, index = _parse_device(self.device)
        self._model = WhisperModel(
            str(model_dir),
            device=kind,
            device_index=index,
            compute_type=self.compute_type,
            cpu_threads=self.num_threads,
            num_workers=1,
            local_files_only=True,
        )

    # -- decoding ---------------------------------------------------------------------------
    def _options(self, language: str, word_timestamps: bool) -> dict[str, Any]:
        return dict(
            language=language,
            task="transcribe",
            beam_size=self.beam_size,
            temperature=0.0,
            condition_on_previous_text=False,
            vad_filter=False,
            without_timestamps=not word_timestamps,
            word_timestamps=word_timestamps,
        )

    def _transcribe_one(self, audio: np.ndarray, language: str) -> str:
        segments, _ = self._model.transcribe(audio, **self._options(language, False))
        return "".join(s.text for s in segments)

    def _transcribe_packed(self, clips: list[np.ndarray], language: str) -> list[str]:
        """Concatenate clips with silence, decode once, give each word to the clip it falls in."""
        sr = ASR_SAMPLE_RATE_HZ
        gap = np.zeros(int(round(self.gap_s * sr)), dtype=np.float32)
        parts: list[np.ndarray] = []
        spans: list[tuple[float, float]] = []
        t = 0
        for k, c in enumerate(clips):
            if k:
                parts.append(gap)
                t += gap.size
            parts.append(c)
            spans.append((t / sr, (t + c.size) / sr))
            t += c.size
        segments, _ = self._model.transcribe(np.concatenate(parts), **self._options(language, True))
        starts = np.array([s for s, _ in spans])
        ends = np.array([e for _, e in spans])
        words: list[list[str]] = [[] for _ in clips]
        for seg in segments:
            for w in seg.words or ():
                mid = 0.5 * (w.start + w.end)
                # distance to each clip's span (0 inside it); the nearest clip owns the word
                dist = np.maximum(starts - mid, 0.0) + np.maximum(mid - ends, 0.0)
                words[int(np.argmin(dist))].append(w.word)
        return ["".join(ws) for ws in words]

    def transcribe(self, batch: list[tuple[np.ndarray, int, str]]) -> list[str]:
        self.setup()
        audio = [_to_16k(x, sr) for x, sr, _ in batch]
        languages = [lang for _, _, lang in batch]
        out = [""] * len(batch)
        if not self.pack:
            for i, (a, lang) in enumerate(zip(audio, languages, strict=True)):
                out[i] = self._transcribe_one(a, lang)
        else:
            durations = [a.size / ASR_SAMPLE_RATE_HZ for a in audio]
            for win in pack_windows(durations, languages, self.window_s, self.gap_s):
                if len(win.items) == 1:
                    i = win.items[0]
                    out[i] = self._transcribe_one(audio[i], win.language)
                    continue
                texts = self._transcribe_packed([audio[i] for i in win.items], win.language)
                for i, text in zip(win.items, texts, strict=True):
                    # Whisper may skip a clip inside a window; an audible clip with no words gets
                    # a pass of its own rather than an empty transcript
                    if not text.strip() and _rms(audio[i]) > _SILENT_RMS:
                        text = self._transcribe_one(audio[i], win.language)
                    out[i] = text
        return [_finish_text(t, lang) for t, lang in zip(out, languages, strict=True)]


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64)))) if x.size else 0.0


class FunASRASR(LazyModel):
    """FunASR Paraformer-zh for Chinese and Whisper (faster-whisper, e.g. large-v3) for English.

    ``model_dir`` is a local FunASR model directory (config.yaml, model.pt, tokens…); it must
    exist, because FunASR would otherwise read the name as a hub id and download it.

    What FunASR's ``AutoModel`` does that the adapter corrects (read in ``funasr/auto/auto_model.py``):
    it sets torch's thread count for the whole process (``ncpu``, default 4), so ours is passed;
    asked for ``cuda`` without a GPU it silently runs on CPU with batch size 1, so that is an
    error here; a batch that decodes to nothing comes back as one ``{"text": ""}`` instead of one
    result per clip, so each model batch is one call and such a batch is all empty; and
    SeacoParaformer separates characters by spaces, which Chinese text does not carry.
    """

    name = "funasr"

    def __init__(
        self,
        model_dir: str,
        en_model_dir: str | None = None,
        device: str = "cuda",
        *,
        batch_size: int = 32,
        en_beam_size: int = 1,
        num_threads: int = 1,
    ):
        self.model_dir = model_dir
        self.en_model_dir = en_model_dir
        self.device = device
        self.batch_size = int(batch_size)
        self.num_threads = int(num_threads)
        self._zh: Any = None
        self._en: FasterWhisperASR | None = (
            FasterWhisperASR(en_model_dir, beam_size=en_beam_size, device=device, num_threads=num_threads)
            if en_model_dir
            else None
        )

    def _load(self) -> None:
        with needs_extra("the funasr ASR backend needs funasr", "gpu"):
            from funasr import AutoModel
        if not Path(self.model_dir).is_dir():
            raise FileNotFoundError(f"FunASR model directory not found: {self.model_dir}")
        if self.device.startswith("cuda"):
            import torch

            if not torch.cuda.is_available():
                raise RuntimeError(
                    f"asr.device is {self.device!r} but torch sees no CUDA device on this worker "
                    "(FunASR would fall back to CPU with batch size 1); set asr.device: cpu to run on CPU"
                )
        self._zh = AutoModel(
            model=str(self.model_dir),
            device=self.device,
            ncpu=self.num_threads,
            disable_update=True,
            disable_pbar=True,
            log_level="ERROR",
        )
        if self._en is not None:
            self._en.setup()

    def _decode_zh(self, inputs: list[np.ndarray]) -> list[str]:
        """One text per input, in order: one ``generate`` call per model batch, so that a batch
        FunASR returns as a single empty result is known to be all empty."""
        out: list[str] = []
        for lo in range(0, len(inputs), self.batch_size):
            chunk = inputs[lo : lo + self.batch_size]
            results = self._zh.generate(input=chunk, batch_size=self.batch_size, fs=ASR_SAMPLE_RATE_HZ)
            out.extend(match_results(results, len(chunk)))
        return out

    def transcribe(self, batch: list[tuple[np.ndarray, int, str]]) -> list[str]:
        self.setup()
        out = [""] * len(batch)
        zh = [i for i, (_, _, lang) in enumerate(batch) if lang == "zh"]
        en = [i for i, (_, _, lang) in enumerate(batch) if lang == "en"]
        other = sorted(set(range(len(batch))) - set(zh) - set(en))
        if other:
            raise ValueError(f"funasr backend: unsupported language {batch[other[0]][2]!r} (zh and en only)")
        if zh:
            texts = self._decode_zh([_to_16k(batch[i][0], batch[i][1]) for i in zh])
            for i, text in zip(zh, texts, strict=True):
                out[i] = _finish_text(text, "zh")
        if en:
            if self._en is None:
                raise ValueError("funasr backend got English audio but asr.en_model_dir is not set")
            for i, text in zip(en, self._en.transcribe([batch[i] for i in en]), strict=True):
                out[i] = text
        return out


def match_results(results: list[dict[str, Any]], n: int) -> list[str]:
    """FunASR's results of one model batch of ``n`` clips -> one text per clip, in order.

    One result per clip is the normal case. A batch that decoded to nothing comes back as one
    empty result (``[{"text": ""}]``) or none: every clip is empty. FunASR gives every clip of a
    list input the same random key, so results cannot be matched by key; any other count is an
    error.
    """
    texts = [str(r.get("text", "") or "") for r in results]
    if len(texts) == n:
        return texts
    if not any(t.strip() for t in texts):
        return [""] * n
    raise RuntimeError(f"funasr returned {len(results)} results for {n} inputs")


def make_asr(cfg: ASRConfig) -> ASRBackend:
    """The ASR backend named in the config."""
    return registry.create("asr", cfg)


WHISPER_FILES: list[str | tuple[str, ...]] = [
    "model.bin",
    "config.json",
    ("tokenizer.json", "vocabulary.txt", "vocabulary.json"),
]


def _faster_whisper(cfg: ASRConfig) -> FasterWhisperASR:
    return FasterWhisperASR(
        cfg.model_dir,
        num_threads=cfg.num_threads,
        beam_size=cfg.beam_size,
        device=cfg.device or "cpu",
        pack=cfg.pack,
        window_s=cfg.window_s,
    )


def _diagnose_faster_whisper(cfg: ASRConfig) -> list[Finding]:
    if cfg.model_dir:
        return registry.files_present(cfg.model_dir, WHISPER_FILES)
    ok = is_prepared("whisper")
    return [
        Finding("whisper base (embedded)", ok, str(whisper_dir(check=False)) if ok else "run `make models`")
    ]


def _funasr(cfg: ASRConfig) -> FunASRASR:
    if not cfg.model_dir:
        raise ValueError("asr.backend 'funasr' needs asr.model_dir (a local Paraformer-zh directory)")
    return FunASRASR(
        cfg.model_dir,
        cfg.en_model_dir,
        device=cfg.device or "cuda",
        batch_size=cfg.batch_size,
        en_beam_size=cfg.beam_size,
        num_threads=cfg.num_threads,
    )


def _diagnose_funasr(cfg: ASRConfig) -> list[Finding]:
    out = registry.files_present(cfg.model_dir, ["config.yaml", "model.pt", ("tokens.json", "tokens.txt")])
    out.append(registry.module_present("funasr", "pip install 'kespeechchat[gpu]'"))
    if cfg.en_model_dir:
        en = registry.files_present(cfg.en_model_dir, WHISPER_FILES)
        out += [Finding(f.item, f.ok, f.detail, component="asr (en)") for f in en]
    else:
        out.append(
            Finding(
                "en_model_dir",
                False,
                "funasr reads only Chinese; set asr.en_model_dir to a Whisper directory",
                component="asr (en)",
            )
        )
    return out + registry.cuda_present(cfg.device or "cuda")


registry.register(
    registry.Backend(
        "asr",
        "faster_whisper",
        _faster_whisper,
        "Whisper base (CTranslate2) on faster-whisper",
        "MIT",
        _diagnose_faster_whisper,
        embedded=True,
    )
)
registry.register(
    registry.Backend(
        "asr", "funasr", _funasr, "Paraformer-zh on FunASR", "see the model's card", _diagnose_funasr
    )
)
