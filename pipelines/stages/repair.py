"""repair: re-synthesise the turns that fail the select thresholds, with another seed, and re-score them.

Between verify and select. For each failing turn (``select.turn_failure`` on the verify scores) it
synthesises attempt ``tts_attempts + 1`` (CosyVoice: another sampling seed; Kokoro: a seeded speed
and pause perturbation), scores it exactly as verify does (``SpeechScorer``) and keeps the new
audio and scores. It goes round by round over the whole shard, so every round's clips are
transcribed in one ASR batch, until each turn passes or has had ``1 + retry.retries`` attempts.
A dialogue with a turn out of attempts is lost, so its other failing turns are not retried.

Repair never rejects: select still decides, on the scores repair leaves. Rows that pass go through
untouched, and the models are loaded only when a shard has something to repair. Its config hash
includes the select thresholds, so a threshold change reruns repair (which re-synthesises only
what now fails) and select, never verify.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from kespeechchat.audio import encode_flac
from kespeechchat.backends.tts import make_tts, split_sentences, tts_config_section, turn_seed
from kespeechchat.stage import Resources, Stage, StageOutput
from pipelines.stages.select import row_failures, turn_failure, turn_values
from pipelines.stages.synthesize import TurnSynthesisError, synthesize_turn
from pipelines.stages.verify import SCORE_COLUMNS, Clip, SpeechScorer, verify_config_section
from pipelines.voices import library_fingerprint, load_run_library


class RepairStage(Stage):
    name = "repair"
    version = "2"
    description = "Re-synthesise turns that fail the thresholds (another seed, up to retry.retries times) and re-score them."
    inputs = (
        "dialogue_id",
        "language",
        "spoken_texts",
        "voice_ids",
        "audio_flac",
        "sample_rate_hz",
        "durations_s",
        "tts_attempts",
        *SCORE_COLUMNS,
    )
    # rewritten for the turns it redoes (unchanged elsewhere)
    outputs = ("audio_flac", "durations_s", "tts_attempts", *SCORE_COLUMNS)
    resources = Resources(cpus=1.0, memory_mb=3500)

    def config_section(self) -> dict[str, Any]:

        if self.cfg.retry.retries == 0:
            return {"retries": 0}
        return {
            "retry": self.cfg.retry.model_dump(),
            "select": self.cfg.select.model_dump(),
            "tts": tts_config_section(self.cfg.tts),
            "verify": verify_config_section(self.cfg),
            "seed": self.cfg.seed,
            "library": library_fingerprint(self.cfg, self.runtime.run_dir),
        }

    def setup(self) -> None:
        self.tts: Any = None
        self.scorer: SpeechScorer | None = None

    def _models(self) -> tuple[Any, SpeechScorer]:
        """TTS and scorers, loaded on first need: most shards of a good run need neither."""
        if self.tts is None:
            tts = make_tts(self.cfg.tts, speed_jitter=self.cfg.retry.speed_jitter)
            tts.setup()
            self.voices = {v.voice_id: v for v in load_run_library(self.cfg, self.runtime.run_dir)}
            self.tts = tts
        if self.scorer is None:
            scorer = SpeechScorer(self.cfg, self.runtime.run_dir)
            scorer.setup()
            self.scorer = scorer
        return self.tts, self.scorer

    def process(self, table: pa.Table, shard: int) -> StageOutput:
        self.check_inputs(table)
        rows = table.to_pylist()
        work = _RepairRounds(self, rows)
        for _round in range(self.cfg.retry.retries):
            todo = work.todo()
            if not todo:
                break
            work.round(todo)
        return self.build_output(table, rows, [], work.metrics())


@dataclass
class _Sentences:
    """A misheard turn redone sentence by sentence: the best rendering of each sentence so far."""

    texts: list[str]
    audio: list[np.ndarray | None]
    errors: list[float]

    def todo(self) -> list[int]:
        """Sentences to (re)do: never made, or heard with any error."""
        return [j for j, (a, e) in enumerate(zip(self.audio, self.errors, strict=True)) if a is None or e > 0]

    def keep(self, j: int, audio: np.ndarray, error: float) -> None:
        if self.audio[j] is None or error < self.errors[j]:
            self.audio[j], self.errors[j] = audio, error

    def joined(self, pause: np.ndarray) -> np.ndarray | None:
        if any(a is None for a in self.audio):
            return None
        parts: list[np.ndarray] = []
        for a in self.audio:
            if parts:
                parts.append(pause)
            parts.append(a)
        return np.concatenate(parts)


class _RepairRounds:
    """The repair of one shard, round by round. A turn is redone whole (another seed or speed), or,
    when it is misheard and has several sentences (``retry.by_sentence``), sentence by sentence:
    every sentence alone at first, then only the sentences still misheard, keeping each sentence's
    best rendering. A new rendering of a misheard turn replaces the old one only if it is heard no
    worse; other faults (silence, clipping, a wrong voice) always take the new rendering."""

    def __init__(self, stage: RepairStage, rows: list[dict[str, Any]]):
        self.stage = stage
        self.rows = rows
        self.sel = stage.cfg.select
        self.max_attempts = 1 + stage.cfg.retry.retries
        self.sentences: dict[tuple[int, int], _Sentences] = {}
        self.touched: set[int] = set()
        self.tried = self.sentences_made = 0
        self.resynth_s = self.tts_s = 0.0
        self.t_start = time.perf_counter()

    def todo(self) -> list[tuple[int, int, str]]:
        """(row, turn, reason) of every failing turn of a dialogue that can still pass."""

        out: list[tuple[int, int, str]] = []
        for r, row in enumerate(self.rows):
            fails = row_failures(self.sel, row)
            if not fails or any(row["tts_attempts"][i] >= self.max_attempts for i, _ in fails):
                continue  # passes, or lost anyway: a turn is out of attempts
            out += [(r, i, why) for i, why in fails]
        return out

    def round(self, todo: list[tuple[int, int, str]]) -> None:

        tts, scorer = self.stage._models()
        whole: list[tuple[int, int, np.ndarray]] = []
        pieces: list[tuple[int, int, int, np.ndarray]] = []
        for r, i, why in todo:
            row = self.rows[r]
            self.tried += 1
            self.touched.add(r)
            texts = split_sentences(row["spoken_texts"][i], row["language"])
            if why == "asr_mismatch" and len(texts) > 1 and self.stage.cfg.retry.by_sentence:
                state = self.sentences.setdefault(
                    (r, i), _Sentences(texts, [None] * len(texts), [math.inf] * len(texts))
                )
                for j in state.todo():
                    audio = self._synthesize(r, i, state.texts[j], sentence=j + 1)
                    if audio is not None:
                        pieces.append((r, i, j, audio))
                row["tts_attempts"][i] = int(row["tts_attempts"][i]) + 1
                continue
            audio = self._synthesize(r, i, row["spoken_texts"][i])
            row["tts_attempts"][i] = int(row["tts_attempts"][i]) + 1
            if audio is not None:
                whole.append((r, i, audio))
        self._keep_sentences(pieces, scorer)
        pause = np.zeros(int(getattr(tts, "sentence_pause_s", 0.25) * tts.sample_rate_hz), np.float32)
        redone = {(r, i) for r, i, _, _ in pieces}
        for (r, i), state in self.sentences.items():
            joined = state.joined(pause)
            if joined is not None and (r, i) in redone:
                whole.append((r, i, joined))
        self._score_and_keep(whole, scorer)

    def _synthesize(self, r: int, i: int, text: str, sentence: int = 0) -> np.ndarray | None:
        """One new rendering of a turn (or of its ``sentence``-th sentence), at the turn's next attempt."""

        row = self.rows[r]
        recipe = self.stage.voices.get(row["voice_ids"][i])
        if recipe is None:
            raise KeyError(
                f"dialogue {row['dialogue_id']}: voice {row['voice_ids'][i]!r} is not in the run's library"
            )
        tts = self.stage.tts
        if int(tts.sample_rate_hz) != int(row["sample_rate_hz"]):
            raise RuntimeError(
                f"dialogue {row['dialogue_id']}: audio is {row['sample_rate_hz']} Hz but the TTS makes "
                f"{tts.sample_rate_hz} Hz; rerun synthesize"
            )
        seed = turn_seed(self.stage.cfg.seed, row["dialogue_id"], i)
        if sentence:
            seed = turn_seed(seed, f"sentence-{sentence}", int(row["tts_attempts"][i]))
        attempt = int(row["tts_attempts"][i]) + 1
        t0 = time.perf_counter()
        try:
            audio, _ = synthesize_turn(tts, text, row["language"], recipe, seed, attempt, attempt)
        except TurnSynthesisError:
            return None  # the attempt is spent; the old audio and scores stay
        finally:
            self.tts_s += time.perf_counter() - t0
        self.resynth_s += len(audio) / int(tts.sample_rate_hz)
        self.sentences_made += bool(sentence)
        return audio

    def _keep_sentences(self, pieces: list[tuple[int, int, int, np.ndarray]], scorer: SpeechScorer) -> None:

        sr = int(self.stage.tts.sample_rate_hz)
        clips = []
        for r, i, j, audio in pieces:
            row = self.rows[r]
            text = self.sentences[(r, i)].texts[j]
            clips.append(Clip(audio, sr, text, row["language"], row["voice_ids"][i]))
        for (r, i, j, audio), sc in zip(pieces, scorer.score(clips) if clips else [], strict=True):
            err = (
                sc.error_rate if not isinstance(sc, Exception) and math.isfinite(sc.error_rate) else math.inf
            )
            self.sentences[(r, i)].keep(j, audio, err)

    def _score_and_keep(self, made: list[tuple[int, int, np.ndarray]], scorer: SpeechScorer) -> None:

        sr = int(self.stage.tts.sample_rate_hz)
        clips = [
            Clip(
                a, sr, self.rows[r]["spoken_texts"][i], self.rows[r]["language"], self.rows[r]["voice_ids"][i]
            )
            for r, i, a in made
        ]
        for (r, i, audio), sc in zip(made, scorer.score(clips) if clips else [], strict=True):
            row = self.rows[r]
            if isinstance(sc, Exception):
                continue  # could not be scored: keep the previous audio and scores (still failing)
            old = turn_values(row, i)
            new = sc.as_columns()
            text, lang = row["spoken_texts"][i], row["language"]
            if (
                turn_failure(self.sel, lang, text, old) == "asr_mismatch"
                and turn_failure(self.sel, lang, text, {**new, "durations_s": len(audio) / sr})
                and not new["error_rates"] <= old["error_rates"]
            ):
                continue  # heard worse than what it replaces: keep the old rendering
            row["audio_flac"][i] = encode_flac(audio, sr)
            row["durations_s"][i] = len(audio) / sr
            for col, v in new.items():
                row[col][i] = v

    def metrics(self) -> dict[str, float]:

        fixed = sum(1 for r in self.touched if not row_failures(self.sel, self.rows[r]))
        return {
            "turns_resynthesised": float(self.tried),
            "sentences_resynthesised": float(self.sentences_made),
            "dialogues_touched": float(len(self.touched)),
            "dialogues_fixed": float(fixed),
            "resynthesised_audio_s": round(self.resynth_s, 3),
            "tts_s": round(self.tts_s, 3),
            "wall_s": round(time.perf_counter() - self.t_start, 3),
        }
