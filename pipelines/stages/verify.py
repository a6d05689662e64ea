"""verify: scores only (audio sanity, ASR error rate, speaker similarity, DNSMOS); select decides.

Score first, decide later: changing a threshold never re-runs these models. Per turn it writes

* ``silence_ratios``, ``clipping_ratios``: signal checks, measured before any model runs;
* ``repeat_ratios``: share of the speech that repeats earlier speech of the clip
  (``kespeechchat.audio.repetition_ratio``): a TTS loop that says its text twice, which Whisper
  often transcribes once and which a fast voice hides from the speaking-rate bound;
* ``chars_per_s``: spoken characters (``kespeechchat.metrics.spoken_chars``) per second of
  non-silent audio, which catches loops (too slow) and dropped text (too fast);
* ``asr_texts``, ``error_rates``: what the recogniser heard and its CER (zh) / WER (en) against
  the spoken text, after the same normalisation on both sides; all clips of a shard go to the
  recogniser in one batch (Whisper packs them into shared 30 s windows), and a clip whose batched
  transcript scores worse than ``asr.recheck_above`` is decoded again alone, keeping the better
  transcript (its neighbours in a window can make Whisper mishear it);
* ``speaker_similarities``: cosine between the utterance and its voice's reference probe;
* ``dnsmos_ovrl``: the DNSMOS overall score, an artefact detector.

NaN means "not measured" (a clip too short to embed or to score); select does not gate on it.
``SpeechScorer`` is shared with the repair stage, so a retried turn is scored exactly the same way.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from kespeechchat.audio import audio_sanity, decode_audio, load_audio, repetition_ratio, resample
from kespeechchat.backends.asr import make_asr
from kespeechchat.backends.quality import make_quality
from kespeechchat.backends.speaker import cosine, make_speaker
from kespeechchat.config import RunConfig
from kespeechchat.metrics import error_rate, spoken_chars
from kespeechchat.stage import Resources, Stage, StageOutput, reject
from kespeechchat.store import ENVIRONMENT_ERRNOS
from voice_library.refs import ref_path

ASR_RATE_HZ = 16000
# Less speech than this gives a speaker embedding too noisy to judge a voice by.
MIN_SPEAKER_SPEECH_S = 0.3
SCORE_COLUMNS = (
    "asr_texts",
    "error_rates",
    "speaker_similarities",
    "silence_ratios",
    "clipping_ratios",
    "chars_per_s",
    "dnsmos_ovrl",
    "repeat_ratios",
)
NAN = float("nan")


@dataclass(frozen=True)
class Clip:
    """One utterance to score: audio as synthesised, what it should say, whose voice it should be."""

    audio: np.ndarray
    sample_rate_hz: int
    text: str
    language: str
    voice_id: str


@dataclass(frozen=True)
class TurnScores:
    asr_text: str
    error_rate: float
    speaker_similarity: float
    silence_ratio: float
    clipping_ratio: float
    chars_per_s: float
    dnsmos_ovrl: float
    repeat_ratio: float = NAN

    def as_columns(self) -> dict[str, Any]:
        """Values keyed by the per-turn list column each goes into."""
        return dict(zip(SCORE_COLUMNS, (self.asr_text, *self.numbers()), strict=True))

    def numbers(self) -> tuple[float, ...]:
        return (
            self.error_rate,
            self.speaker_similarity,
            self.silence_ratio,
            self.clipping_ratio,
            self.chars_per_s,
            self.dnsmos_ovrl,
            self.repeat_ratio,
        )


def verify_config_section(cfg: RunConfig) -> dict[str, Any]:
    """What changes the scores (worker threads do not)."""
    return {
        "asr": cfg.asr.model_dump(exclude={"num_threads"}),
        "speaker": cfg.speaker.model_dump(exclude={"num_threads"}),
        "quality": cfg.quality.model_dump(exclude={"num_threads"}),
        # the scorer's own rules (kespeechchat.metrics); v4: symbols between numbers read every way
        "metrics": "v4",
    }


class SpeechScorer:
    """The ASR, speaker encoder and quality model of one worker, loaded once; scores clips in batches."""

    def __init__(self, cfg: RunConfig, run_dir: Path):
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.asr: Any = None
        self.speaker: Any = None
        self.quality: Any = None
        self._refs: dict[str, np.ndarray] = {}
        self.timings: dict[str, float] = {
            "asr_s": 0.0,
            "speaker_s": 0.0,
            "quality_s": 0.0,
            "asr_rechecked": 0.0,
        }

    def setup(self) -> None:

        if self.asr is not None:
            return
        asr = make_asr(self.cfg.asr)
        asr.setup()
        speaker = make_speaker(self.cfg.speaker)
        speaker.setup()
        quality = make_quality(self.cfg.quality)
        if quality is not None:
            quality.setup()
        self.asr, self.speaker, self.quality = asr, speaker, quality

    def ref_embedding(self, voice_id: str, language: str) -> np.ndarray:
        """Embedding of the voice's reference probe (``voices/refs``), computed once per worker."""

        key = f"{voice_id}-{language}"
        if key not in self._refs:
            path = ref_path(self.run_dir, voice_id, language)
            if not path.exists():
                raise FileNotFoundError(
                    f"{path}: reference audio of voice {voice_id} missing (rerun synthesize)"
                )
            x, sr = load_audio(path)
            self._refs[key] = self.speaker.embed(x, sr)
        return self._refs[key]

    def transcribe(self, clips16: list[np.ndarray], languages: list[str]) -> list[str | Exception]:
        """One batch for all clips; if the batch fails, clip by clip so only bad clips are lost."""
        idx = [i for i, x in enumerate(clips16) if x.size >= ASR_RATE_HZ // 10]
        out: list[str | Exception] = [""] * len(clips16)  # under 0.1 s there is nothing to hear
        batch = [(clips16[i], ASR_RATE_HZ, languages[i]) for i in idx]
        if not batch:
            return out
        t0 = time.perf_counter()
        try:
            hyps: list[str | Exception] = list(self.asr.transcribe(batch))
            if len(hyps) != len(batch):
                raise RuntimeError(f"ASR returned {len(hyps)} transcripts for {len(batch)} clips")
        except Exception as e:
            hyps = []
            for item in batch:
                try:
                    hyps.extend(self.asr.transcribe([item]))
                except Exception as e2:
                    hyps.append(e2)
            if all(isinstance(h, Exception) for h in hyps):
                raise RuntimeError(f"ASR failed on every clip: {type(e).__name__}: {e}") from e
        self.timings["asr_s"] += time.perf_counter() - t0
        for i, h in zip(idx, hyps, strict=True):
            out[i] = h
        return out

    def _error_rates(
        self, clips: list[Clip], clips16: list[np.ndarray], hyps: list[str | Exception]
    ) -> list[float | Exception]:
        """Error rate of each transcript (in place: ``hyps``), re-decoding alone the clips that score
        worse than ``asr.recheck_above`` when they were decoded in a batch."""

        out: list[float | Exception] = []
        for c, h in zip(clips, hyps, strict=True):
            try:
                out.append(float(error_rate(c.text, h, c.language)) if isinstance(h, str) else h)
            except Exception as e:  # e.g. a language without a metric
                out.append(e)
        bound = self.cfg.asr.recheck_above
        if bound is None or len(clips) < 2:
            return out
        t0 = time.perf_counter()
        for i, (c, er) in enumerate(zip(clips, out, strict=True)):
            if isinstance(er, float) and er > bound and clips16[i].size >= ASR_RATE_HZ // 10:
                try:
                    alone = self.asr.transcribe([(clips16[i], ASR_RATE_HZ, c.language)])[0]
                except Exception:
                    continue  # the batched transcript stands
                self.timings["asr_rechecked"] += 1
                er2 = float(error_rate(c.text, alone, c.language))
                if er2 < er:
                    hyps[i], out[i] = alone, er2
        self.timings["asr_s"] += time.perf_counter() - t0
        return out

    def score(self, clips: list[Clip]) -> list[TurnScores | Exception]:
        """Scores of each clip, in order; an Exception in place of a clip that could not be scored."""

        self.setup()
        sanity = [audio_sanity(c.audio, c.sample_rate_hz) for c in clips]
        clips16 = [
            resample(np.nan_to_num(c.audio), c.sample_rate_hz, ASR_RATE_HZ)
            if c.sample_rate_hz != ASR_RATE_HZ
            else np.nan_to_num(c.audio)
            for c in clips
        ]
        hyps = self.transcribe(clips16, [c.language for c in clips])
        errors = self._error_rates(clips, clips16, hyps)
        out: list[TurnScores | Exception] = []
        for c, s, x16, hyp, er in zip(clips, sanity, clips16, hyps, errors, strict=True):
            if isinstance(hyp, Exception):
                out.append(hyp)
                continue
            if isinstance(er, Exception):
                out.append(er)
                continue
            try:
                speech_s = s.duration_s * (1.0 - s.silence_ratio)
                n_chars = spoken_chars(c.text, c.language)
                cps = n_chars / speech_s if speech_s > 0 else NAN
                sim = NAN
                if s.finite and speech_s >= MIN_SPEAKER_SPEECH_S:
                    t0 = time.perf_counter()
                    sim = cosine(
                        self.speaker.embed(x16, ASR_RATE_HZ), self.ref_embedding(c.voice_id, c.language)
                    )
                    self.timings["speaker_s"] += time.perf_counter() - t0
                mos = NAN
                if self.quality is not None:
                    t0 = time.perf_counter()
                    mos = self.quality.score(x16, ASR_RATE_HZ).ovrl
                    self.timings["quality_s"] += time.perf_counter() - t0
                out.append(
                    TurnScores(
                        asr_text=hyp,
                        error_rate=er,
                        speaker_similarity=float(sim),
                        silence_ratio=float(s.silence_ratio),
                        clipping_ratio=float(s.clipping_ratio),
                        chars_per_s=float(cps),
                        dnsmos_ovrl=float(mos),
                        repeat_ratio=repetition_ratio(x16, ASR_RATE_HZ) if s.finite else NAN,
                    )
                )
            except OSError as e:  # the machine (a full disk), not the clip: the unit fails and is redone
                if e.errno in ENVIRONMENT_ERRNOS:
                    raise
                out.append(e)
            except Exception as e:  # one clip's failure must not sink the shard
                out.append(e)
        return out


def finite_mean(values: list[float]) -> float:
    v = [x for x in values if isinstance(x, float) and math.isfinite(x)]
    return float(np.mean(v)) if v else NAN


class VerifyStage(Stage):
    name = "verify"
    version = "4"
    description = (
        "Audio sanity, ASR (CER/WER vs the spoken text), speaker similarity vs the voice reference, DNSMOS."
    )
    inputs = ("dialogue_id", "language", "spoken_texts", "voice_ids", "audio_flac", "sample_rate_hz")
    outputs = SCORE_COLUMNS
    resources = Resources(cpus=1.0, memory_mb=2500)

    def config_section(self) -> dict[str, Any]:
        return verify_config_section(self.cfg)

    def setup(self) -> None:
        self.scorer = SpeechScorer(self.cfg, self.runtime.run_dir)
        self.scorer.setup()

    def process(self, table: pa.Table, shard: int) -> StageOutput:

        self.check_inputs(table)
        kept, rejected = [], []
        todo: list[tuple[dict[str, Any], int]] = []  # (row, index of its first clip)
        clips: list[Clip] = []
        for row in table.to_pylist():
            n = len(row["spoken_texts"])
            if len(row["audio_flac"]) != n or len(row["voice_ids"]) != n:
                rejected.append(
                    reject(
                        row,
                        "verify_error",
                        f"dialogue {row['dialogue_id']}: {n} turns but {len(row['audio_flac'])} audio clips "
                        f"and {len(row['voice_ids'])} voices",
                    )
                )
                continue
            try:
                decoded = [decode_audio(b) for b in row["audio_flac"]]
            except Exception as e:
                rejected.append(reject(row, "audio_undecodable", f"{type(e).__name__}: {e}"))
                continue
            todo.append((row, len(clips)))
            for (x, sr), text, vid in zip(decoded, row["spoken_texts"], row["voice_ids"], strict=True):
                clips.append(Clip(x, sr, text, row["language"], vid))
        scores = self.scorer.score(clips) if clips else []
        for row, start in todo:
            mine = scores[start : start + len(row["spoken_texts"])]
            bad = [(i, s) for i, s in enumerate(mine) if isinstance(s, Exception)]
            if bad:
                i, e = bad[0]
                rejected.append(reject(row, "verify_error", f"turn {i}: {type(e).__name__}: {e}"))
                continue
            cols: dict[str, list[Any]] = {c: [] for c in SCORE_COLUMNS}
            for s in mine:
                for c, v in s.as_columns().items():
                    cols[c].append(v)
            kept.append({**row, **cols})
        audio_s = float(sum(c.audio.size / c.sample_rate_hz for c in clips))
        metrics = {
            "clips": float(len(clips)),
            "audio_s": audio_s,
            **{k: round(v, 3) for k, v in self.scorer.timings.items()},
        }
        for k in self.scorer.timings:
            self.scorer.timings[k] = 0.0
        return self.build_output(table, kept, rejected, metrics)
