"""Text-to-speech backends: Kokoro-82M ONNX (embedded, CPU) and CosyVoice 2 (production, GPU).

A backend turns (text, language, voice recipe) into float32 mono audio at ``sample_rate_hz``.
The voice is a recipe (``kespeechchat.voice.VoiceRecipe``, built by ``voice_library``), not a waveform: Kokoro mixes its
shipped style tensors with the recipe's weights, CosyVoice conditions on the recipe's speaker
embedding; both then apply the recipe's WORLD pitch/formant transform.

``attempt`` numbers the tries at one turn (1 = first). A retry must be able to come out
differently: CosyVoice samples its speech tokens, so each attempt gets its own sampling seed;
Kokoro is deterministic, so attempts after the first scale the speed (and sentence pause) by a
small factor drawn from the seed and the attempt, which changes every duration the model predicts.
"""

from __future__ import annotations

import importlib.util
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

from kespeechchat.backends import registry
from kespeechchat.backends.kokoro_style import style_from_parts
from kespeechchat.backends.lazy import LazyModel, needs_extra
from kespeechchat.backends.onnx import ShrinkingSession
from kespeechchat.backends.registry import Finding
from kespeechchat.backends.speaker import diagnose_campplus
from kespeechchat.backends.world import transform
from kespeechchat.backends.zh_g2p import ZH_G2P_VERSION, ZhG2P
from kespeechchat.langid import HAN_RANGES
from kespeechchat.models import (
    KOKORO_MODEL_FILE,
    KOKORO_VOCAB_FILE,
    KOKORO_VOICES_FILE,
    is_prepared,
    kokoro_dir,
)

if TYPE_CHECKING:
    from kespeechchat.config import TTSConfig
    from kespeechchat.voice import VoiceRecipe

LANGUAGES = ("zh", "en")
KOKORO_SAMPLE_RATE_HZ = 24000
KOKORO_MAX_PHONEMES = 510
SENTENCE_PAUSE_S = 0.25
# Kokoro's speed input outside this range is refused by kokoro-onnx.
KOKORO_SPEED_RANGE = (0.5, 2.0)

_SENTENCE_END = {
    "zh": re.compile(r"(?<=[。！？；!?;…])\s*|\n+"),
    "en": re.compile(r"(?<=[.!?;…])\s+|\n+"),
}
_HAN = HAN_RANGES
_LATIN_RUN = re.compile(r"[A-Za-z][A-Za-z'\- ]*[A-Za-z]|[A-Za-z]")
_HAN_RUN = re.compile(rf"[{_HAN}][{_HAN}，、：“”‘’（）《》 ]*")


@runtime_checkable
class TTSBackend(Protocol):
    """What a synthesize stage needs from a TTS model."""

    name: str
    sample_rate_hz: int

    def setup(self) -> None: ...

    def synthesize(
        self, text: str, language: str, voice: VoiceRecipe, seed: int = 0, attempt: int = 1
    ) -> np.ndarray: ...


def turn_seed(seed: int, dialogue_id: str, turn_index: int) -> int:
    """The synthesis seed of one turn: the same on every machine and every rerun, different per turn."""
    import hashlib

    h = hashlib.sha256(f"{seed}:{dialogue_id}:{turn_index}".encode()).digest()
    return int.from_bytes(h[:4], "big") & 0x7FFFFFFF


def attempt_seed(seed: int, attempt: int) -> int:
    """Seed of attempt ``attempt`` (1-based) of a turn whose seed is ``seed``; attempt 1 keeps it."""
    if attempt < 1:
        raise ValueError(f"attempt counts from 1, got {attempt}")
    if attempt == 1:
        return int(seed) & 0x7FFFFFFF
    ss = np.random.SeedSequence([int(seed) & 0x7FFFFFFF, int(attempt)])
    return int(ss.generate_state(1)[0]) & 0x7FFFFFFF


def retry_perturbation(seed: int, attempt: int, jitter: float) -> tuple[float, float]:
    """(speed factor, pause factor) of a deterministic backend's attempt; (1, 1) on the first.

    The speed factor's distance from 1 is drawn in [jitter/2, jitter] with a random sign, so a
    retry never lands on (nearly) the rendering that just failed.
    """
    if attempt <= 1 or jitter <= 0:
        return 1.0, 1.0
    rng = np.random.default_rng(np.random.SeedSequence([int(seed) & 0x7FFFFFFF, int(attempt), 7]))
    sign = 1.0 if rng.random() < 0.5 else -1.0
    speed = 1.0 + sign * float(rng.uniform(0.5 * jitter, jitter))
    pause = float(np.clip(1.0 + float(rng.uniform(-2.0 * jitter, 2.0 * jitter)), 0.5, 1.5))
    return speed, pause


def output_problem(audio: np.ndarray) -> tuple[str, str] | None:
    """(reason, detail) when a backend's output is unusable before any scoring, else None.

    ``tts_empty``: no samples; ``tts_nonfinite``: NaN or inf samples (FLAC would silently zero them).
    """
    a = np.asarray(audio)
    if a.size == 0:
        return "tts_empty", "the TTS returned no samples"
    bad = int(a.size - np.count_nonzero(np.isfinite(a)))
    if bad:
        return "tts_nonfinite", f"{bad} of {a.size} samples are NaN or inf"
    return None


def split_sentences(text: str, language: str) -> list[str]:
    """Split at sentence ends (zh: 。！？；, en: . ! ? ;) and newlines; drops empty pieces."""
    pattern = _SENTENCE_END.get(language, _SENTENCE_END["en"])
    return [s.strip() for s in pattern.split(text) if s and s.strip()]


def _check_text(text: str, language: str) -> None:
    if not isinstance(text, str) or not text.strip():
        raise ValueError("cannot synthesize empty text")
    if language not in LANGUAGES:
        raise ValueError(f"unsupported language {language!r}; expected one of {LANGUAGES}")


def _apply_world(audio: np.ndarray, sr: int, voice: VoiceRecipe) -> np.ndarray:
    pitch, formant = float(voice.pitch_ratio), float(voice.formant_ratio)
    if pitch == 1.0 and formant == 1.0:
        return audio

    return transform(audio, sr, pitch, formant)


# --- Kokoro -----------------------------------------------------------------------------------


class KokoroTTS(LazyModel):
    """Kokoro-82M v1.0 int8 ONNX through kokoro-onnx, one onnxruntime session per worker.

    zh text goes through ``kespeechchat.backends.zh_g2p`` (misaki's phoneme set with polyphone
    dictionary and tone sandhi; ``zh_frontend="misaki"`` for misaki's own), en text through espeak-ng phonemes; Latin runs inside
    zh text are phonemised as English and Han runs inside en text as Chinese. Kokoro itself is
    deterministic: ``seed`` only matters for attempts after the first (``retry_perturbation``).
    """

    name = "kokoro"
    sample_rate_hz = KOKORO_SAMPLE_RATE_HZ

    def __init__(
        self,
        model_dir: str | None = None,
        num_threads: int = 1,
        *,
        sentence_pause_s: float = SENTENCE_PAUSE_S,
        speed_jitter: float = 0.06,
        zh_frontend: str = "sandhi",
    ):
        if zh_frontend not in ("sandhi", "misaki"):
            raise ValueError(f"zh_frontend {zh_frontend!r}: expected 'sandhi' or 'misaki'")
        self.zh_frontend = zh_frontend
        self.model_dir = model_dir
        self.num_threads = int(num_threads)
        self.sentence_pause_s = float(sentence_pause_s)
        self.speed_jitter = float(speed_jitter)
        self._kokoro: Any = None
        self._zh_g2p: Callable[[str], str] | None = None
        self._styles: dict[Any, np.ndarray] = {}

    # The base voices shipped with the model, e.g. jf_alpha … jm_kumo.
    @property
    def base_voices(self) -> list[str]:
        self.setup()
        return list(self._voices.keys())

    def _load(self) -> None:
        with needs_extra("Kokoro TTS needs kokoro-onnx and misaki[zh]", "embedded"):
            import onnxruntime as ort
            from kokoro_onnx import Kokoro
            from kokoro_onnx.session import resolve_providers
            from misaki.zh import ZHG2P

        d = Path(self.model_dir) if self.model_dir else kokoro_dir()
        model, voices, vocab = d / KOKORO_MODEL_FILE, d / KOKORO_VOICES_FILE, d / KOKORO_VOCAB_FILE
        for p in (model, voices):
            if not p.is_file():
                raise FileNotFoundError(f"Kokoro model directory {d} lacks {p.name}")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = self.num_threads
        opts.inter_op_num_threads = self.num_threads
        session = ShrinkingSession(
            ort.InferenceSession(str(model), sess_options=opts, providers=resolve_providers())
        )
        kokoro = Kokoro.from_session(
            session, str(voices), vocab_config=str(vocab) if vocab.is_file() else None
        )
        with np.load(voices) as npz:
            self._voices = {k: np.asarray(npz[k], dtype=np.float32) for k in npz.files}
        if self.zh_frontend == "sandhi":
            self._zh_g2p = ZhG2P()
        else:
            legacy = ZHG2P()
            self._zh_g2p = lambda t: legacy(t)[0]
        self._kokoro = kokoro

    def style(self, voice: VoiceRecipe) -> np.ndarray:
        """The recipe's style tensor (510, 1, 256): the affine blend of the base voices, and the
        recipe's separate prosody blend and length-direction offsets when it has them
        (``kespeechchat.backends.kokoro_style``)."""

        self.setup()
        weights = tuple(sorted((str(k), float(v)) for k, v in voice.base_weights.items()))
        if not weights:
            raise ValueError(f"voice {voice.voice_id} has no base weights")
        pw = getattr(voice, "prosody_weights", None)
        so = getattr(voice, "style_offsets", None)
        key = (
            weights,
            tuple(sorted((str(k), float(v)) for k, v in pw.items())) if pw else None,
            tuple(float(x) for x in so) if so else None,
        )
        cached = self._styles.get(key)
        if cached is not None:
            return cached
        unknown = [k for k in {k for k, _ in weights} | set(pw or {}) if k not in self._voices]
        if unknown:
            raise ValueError(
                f"voice {voice.voice_id}: unknown Kokoro base voices {sorted(unknown)}; have {list(self._voices)}"
            )
        mix = style_from_parts(
            self._voices, dict(weights), pw or None, list(so) if so else None, who=f"voice {voice.voice_id}"
        )
        self._styles[key] = mix
        return mix

    def phonemize(self, text: str, language: str) -> str:
        """Kokoro phonemes of one sentence in ``language`` (mixed zh/en runs handled)."""
        self.setup()
        primary = self._zh_phonemes if language == "zh" else self._en_phonemes
        foreign_run, foreign = (
            (_LATIN_RUN, self._en_phonemes) if language == "zh" else (_HAN_RUN, self._zh_phonemes)
        )
        pieces: list[str] = []
        pos = 0
        for m in foreign_run.finditer(text):
            if m.start() > pos:
                pieces.append(primary(text[pos : m.start()]))
            pieces.append(foreign(m.group(0)))
            pos = m.end()
        if pos < len(text):
            pieces.append(primary(text[pos:]))
        return " ".join(p.strip() for p in pieces if p and p.strip())

    def _zh_phonemes(self, text: str) -> str:
        if not text.strip():
            return ""
        assert self._zh_g2p is not None
        phonemes = self._zh_g2p(text) or ""
        return self._kokoro.tokenizer.known(phonemes)

    def _en_phonemes(self, text: str) -> str:
        if not text.strip():
            return ""
        return self._kokoro.tokenizer.phonemize(text, "en-us")

    def phoneme_chunks(self, text: str, language: str) -> list[str]:
        """Phoneme chunks of whole sentences, each within Kokoro's 510-phoneme context if possible."""
        chunks: list[str] = []
        cur = ""
        for sentence in split_sentences(text, language):
            ph = self.phonemize(sentence, language)
            if not re.search(r"\w", ph):  # punctuation alone is not speech
                continue
            if cur and len(cur) + 1 + len(ph) > KOKORO_MAX_PHONEMES:
                chunks.append(cur)
                cur = ph
            else:
                cur = f"{cur} {ph}" if cur else ph
        if cur:
            chunks.append(cur)
        return chunks  # a single sentence over the limit is split by kokoro-onnx at clause/word bounds

    def synthesize(
        self, text: str, language: str, voice: VoiceRecipe, seed: int = 0, attempt: int = 1
    ) -> np.ndarray:
        """Speak ``text`` with the recipe's style mix, speed and WORLD transform; float32 mono.

        Attempt 1 is the recipe exactly; later attempts scale speed and pause by
        ``retry_perturbation(seed, attempt, speed_jitter)``.
        """
        _check_text(text, language)
        self.setup()
        style = self.style(voice)
        speed = float(voice.speed)
        if not KOKORO_SPEED_RANGE[0] <= speed <= KOKORO_SPEED_RANGE[1]:
            raise ValueError(
                f"voice {voice.voice_id}: speed {speed} outside Kokoro's range {KOKORO_SPEED_RANGE}"
            )
        speed_factor, pause_factor = retry_perturbation(seed, attempt, self.speed_jitter)
        speed = float(np.clip(speed * speed_factor, *KOKORO_SPEED_RANGE))
        chunks = self.phoneme_chunks(text, language)
        if not chunks:
            raise ValueError(f"no speakable phonemes in {text[:60]!r}")
        pause = np.zeros(int(self.sentence_pause_s * pause_factor * self.sample_rate_hz), dtype=np.float32)
        parts: list[np.ndarray] = []
        for i, ph in enumerate(chunks):
            audio, sr = self._kokoro.create(ph, voice=style, speed=speed, is_phonemes=True)
            if sr != self.sample_rate_hz:  # pragma: no cover - fixed by the model
                raise RuntimeError(f"Kokoro returned {sr} Hz, expected {self.sample_rate_hz}")
            if i:
                parts.append(pause)
            parts.append(np.asarray(audio, dtype=np.float32).ravel())
        out = np.concatenate(parts)
        return _apply_world(out, self.sample_rate_hz, voice)


# --- CosyVoice 2 ------------------------------------------------------------------------------

COSYVOICE_SOURCE_ENV = "COSYVOICE_ROOT"
COSYVOICE_EMBEDDING_DIM = 192  # CAM++ x-vector the flow model is conditioned on


class CosyVoiceTTS(LazyModel):
    """CosyVoice 2 loaded with its own API from a source checkout and a local model directory.

    Voices are speaker embeddings (``recipe.speaker_embedding``, 192-d CAM++ x-vectors): each is
    registered in the frontend's ``spk2info`` and spoken with ``inference_sft``, which feeds the
    embedding to the LLM and the flow decoder (CosyVoice2's Qwen2 LM ignores it; the flow uses it).

    Not verified here (no GPU weights reachable from this project's machines): the audio quality of
    CosyVoice2-0.5B conditioned on an embedding alone, without prompt speech tokens; whether a
    given checkout's ``spk2info`` layout still matches. The loading path refuses to download: the
    model directory must exist locally with ``cosyvoice2.yaml``.
    """

    name = "cosyvoice"

    def __init__(
        self,
        model_dir: str,
        *,
        source_dir: str | None = None,
        load_jit: bool = False,
        load_trt: bool = False,
        fp16: bool = False,
        text_frontend: bool = True,
    ):
        self.model_dir = str(model_dir)
        self.source_dir = source_dir or os.environ.get(COSYVOICE_SOURCE_ENV)
        self.load_jit, self.load_trt, self.fp16 = load_jit, load_trt, fp16
        self.text_frontend = text_frontend
        self.sample_rate_hz = 24000  # CosyVoice 2's rate; replaced by the model's own after setup
        self._model: Any = None

    def _import(self) -> Any:
        if self.source_dir:
            root = Path(self.source_dir)
            for p in (root, root / "third_party" / "Matcha-TTS"):
                if p.is_dir() and str(p) not in sys.path:
                    sys.path.insert(0, str(p))
        try:
            from cosyvoice.cli.cosyvoice import CosyVoice2
        except ImportError as e:
            raise ImportError(
                f"CosyVoice 2 is not importable ({e}); install the extra `pip install 'kespeechchat[gpu]'`, "
                f"clone the CosyVoice source and point ${COSYVOICE_SOURCE_ENV} (or source_dir) at it "
                "(the PyPI package `cosyvoice` is not the real one)"
            ) from e
        return CosyVoice2

    def _load(self) -> None:
        d = Path(self.model_dir)
        if not (d / "cosyvoice2.yaml").is_file():
            # CosyVoice2 would treat a missing path as a hub id and download it; refuse instead.
            raise FileNotFoundError(
                f"CosyVoice 2 model directory {d} not found or lacks cosyvoice2.yaml "
                "(the model must be present locally; nothing is downloaded at run time)"
            )
        CosyVoice2 = self._import()
        model = CosyVoice2(str(d), load_jit=self.load_jit, load_trt=self.load_trt, fp16=self.fp16)
        if not hasattr(model.frontend, "spk2info") or model.frontend.spk2info is None:
            model.frontend.spk2info = {}
        self.sample_rate_hz = int(model.sample_rate)
        self._model = model

    def _speaker_id(self, voice: VoiceRecipe) -> str:
        """Register the recipe's embedding in the frontend once; the voice id is the speaker id."""
        emb = voice.speaker_embedding
        if emb is None:
            raise ValueError(f"voice {voice.voice_id} has no speaker_embedding; CosyVoice needs one")
        if len(emb) != COSYVOICE_EMBEDDING_DIM:
            raise ValueError(
                f"voice {voice.voice_id}: speaker_embedding has {len(emb)} values, expected {COSYVOICE_EMBEDDING_DIM}"
            )
        spk2info = self._model.frontend.spk2info
        if voice.voice_id not in spk2info:
            import torch

            device = getattr(self._model.frontend, "device", "cpu")
            spk2info[voice.voice_id] = {
                "embedding": torch.tensor([list(map(float, emb))], dtype=torch.float32, device=device)
            }
        return voice.voice_id

    def synthesize(
        self, text: str, language: str, voice: VoiceRecipe, seed: int = 0, attempt: int = 1
    ) -> np.ndarray:
        """Speak ``text`` (non-streaming; CosyVoice splits long text into sentences itself).

        The speech-token LM samples, so every attempt gets its own seed (``attempt_seed``) and the
        same (seed, attempt) reproduces the same audio on the same machine and model.
        """
        _check_text(text, language)
        if voice.speaker_embedding is None:
            raise ValueError(f"voice {voice.voice_id} has no speaker_embedding; CosyVoice needs one")
        self.setup()
        import random

        import torch

        spk = self._speaker_id(voice)
        s = attempt_seed(seed, attempt)
        random.seed(s)
        np.random.seed(s)
        torch.manual_seed(s)
        if torch.cuda.is_available():
            torch.cuda.manual_seed_all(s)
        parts = [
            out["tts_speech"].detach().float().cpu().numpy().ravel()
            for out in self._model.inference_sft(
                text, spk, stream=False, speed=float(voice.speed), text_frontend=self.text_frontend
            )
        ]
        if not parts:
            return np.zeros(0, dtype=np.float32)  # reported as tts_empty by the stage
        audio = np.concatenate(parts).astype(np.float32)
        return _apply_world(audio, self.sample_rate_hz, voice)


def tts_config_section(cfg: TTSConfig) -> dict[str, Any]:
    """What changes the audio a TTS config makes (worker threads do not): the config, and the version
    of our Chinese front end where the backend reads its phonemes."""

    out: dict[str, Any] = cfg.model_dump(exclude={"num_threads"})
    if cfg.backend == "kokoro" and cfg.zh_frontend == "sandhi":
        out["zh_g2p"] = ZH_G2P_VERSION
    return out


def make_tts(cfg: TTSConfig, *, speed_jitter: float = 0.06) -> TTSBackend:
    """The backend named in the config (not yet set up: call ``setup()`` in the worker).

    ``speed_jitter`` is ``retry.speed_jitter``: how much a deterministic backend's retries vary.
    """
    return registry.create("tts", cfg, speed_jitter=speed_jitter)


def _kokoro(cfg: TTSConfig, *, speed_jitter: float = 0.06) -> KokoroTTS:
    return KokoroTTS(
        model_dir=cfg.model_dir,
        num_threads=cfg.num_threads,
        sentence_pause_s=cfg.sentence_pause_s,
        speed_jitter=speed_jitter,
        zh_frontend=cfg.zh_frontend,
    )


def _diagnose_kokoro(cfg: TTSConfig) -> list[Finding]:
    if cfg.model_dir:
        return registry.files_present(cfg.model_dir, [KOKORO_MODEL_FILE, KOKORO_VOICES_FILE])
    ok = is_prepared("kokoro")
    return [Finding("kokoro (embedded)", ok, str(kokoro_dir(check=False)) if ok else "run `make models`")]


def _cosyvoice(cfg: TTSConfig, *, speed_jitter: float = 0.06) -> CosyVoiceTTS:
    if not cfg.model_dir:
        raise ValueError(
            "tts.model_dir is required for the cosyvoice backend (a local CosyVoice2 model directory)"
        )
    return CosyVoiceTTS(
        cfg.model_dir, source_dir=cfg.source_dir, load_jit=cfg.load_jit, load_trt=cfg.load_trt, fp16=cfg.fp16
    )


# what CosyVoice 2's loader reads from its model directory (alternatives in a tuple)
COSYVOICE_FILES: list[str | tuple[str, ...]] = [
    "cosyvoice2.yaml",
    "llm.pt",
    "flow.pt",
    ("hift.pt", "hifigan.pt"),
    "campplus.onnx",
    ("speech_tokenizer_v2.onnx", "speech_tokenizer_v1.onnx"),
]


def _diagnose_cosyvoice(cfg: TTSConfig) -> list[Finding]:
    out = registry.files_present(cfg.model_dir, COSYVOICE_FILES)
    if cfg.model_dir and (Path(cfg.model_dir) / "campplus.onnx").is_file():
        out += diagnose_campplus(cfg.model_dir)  # the CAM++ that makes the library's embeddings
    src = cfg.source_dir or os.environ.get(COSYVOICE_SOURCE_ENV)
    if src and (Path(src) / "cosyvoice" / "cli" / "cosyvoice.py").is_file():
        out.append(Finding("CosyVoice source", True, src))
    elif importlib.util.find_spec("cosyvoice") is not None:
        out.append(Finding("CosyVoice source", True, "importable"))
    else:
        out.append(
            Finding("CosyVoice source", False, "tts.source_dir (or $COSYVOICE_ROOT): a CosyVoice checkout")
        )
    if cfg.sample_rate_hz != 24000:
        out.append(
            Finding("sample rate", False, f"tts.sample_rate_hz {cfg.sample_rate_hz}; CosyVoice 2 makes 24000")
        )
    return out


registry.register(
    registry.Backend(
        "tts", "kokoro", _kokoro, "Kokoro-82M v1.0, int8 ONNX", "Apache-2.0", _diagnose_kokoro, embedded=True
    )
)
registry.register(
    registry.Backend(
        "tts",
        "cosyvoice",
        _cosyvoice,
        "CosyVoice 2 (0.5B)",
        "Apache-2.0",
        _diagnose_cosyvoice,
        voice_encoder="campplus",
        embedding_dim=COSYVOICE_EMBEDDING_DIM,
    )
)
