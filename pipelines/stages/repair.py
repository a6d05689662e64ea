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

import time
from typing import Any

import pyarrow as pa

from kespeechchat.stage import Resources, Stage, StageOutput
from pipelines.stages.verify import SCORE_COLUMNS, Clip, SpeechScorer, verify_config_section


class RepairStage(Stage):
    name = "repair"
    version = "1"
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
        from pipelines.voices import library_fingerprint

        if self.cfg.retry.retries == 0:
            return {"retries": 0}
        return {
            "retry": self.cfg.retry.model_dump(),
            "select": self.cfg.select.model_dump(),
            "tts": self.cfg.tts.model_dump(exclude={"num_threads"}),
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
            from kespeechchat.backends.tts import make_tts
            from pipelines.voices import load_run_library

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
        from kespeechchat.audio import encode_flac
        from kespeechchat.backends.tts import turn_seed
        from pipelines.stages.select import row_failures
        from pipelines.stages.synthesize import TurnSynthesisError, synthesize_turn

        self.check_inputs(table)
        rows = table.to_pylist()
        max_attempts = 1 + self.cfg.retry.retries
        sel = self.cfg.select
        tried = fixed = 0
        resynth_s = tts_s = 0.0
        t_start = time.perf_counter()
        rows_touched: set[int] = set()
        for _round in range(self.cfg.retry.retries):
            todo: list[tuple[int, int]] = []  # (row index, turn index)
            for r, row in enumerate(rows):
                fails = row_failures(sel, row)
                if not fails or any(row["tts_attempts"][i] >= max_attempts for i, _ in fails):
                    continue  # passes, or lost anyway: a turn is out of attempts
                todo += [(r, i) for i, _ in fails]
            if not todo:
                break
            tts, scorer = self._models()
            clips: list[Clip] = []
            made: list[tuple[int, int, Any, int]] = []
            for r, i in todo:
                row = rows[r]
                lang = row["language"]
                recipe = self.voices.get(row["voice_ids"][i])
                if recipe is None:
                    raise KeyError(
                        f"dialogue {row['dialogue_id']}: voice {row['voice_ids'][i]!r} is not in the run's library"
                    )
                if int(tts.sample_rate_hz) != int(row["sample_rate_hz"]):
                    raise RuntimeError(
                        f"dialogue {row['dialogue_id']}: audio is {row['sample_rate_hz']} Hz but the TTS makes "
                        f"{tts.sample_rate_hz} Hz; rerun synthesize"
                    )
                seed = turn_seed(self.cfg.seed, row["dialogue_id"], i)
                first = int(row["tts_attempts"][i]) + 1
                tried += 1
                t0 = time.perf_counter()
                try:
                    audio, attempt = synthesize_turn(
                        tts, row["spoken_texts"][i], lang, recipe, seed, first, first
                    )
                except TurnSynthesisError:
                    row["tts_attempts"][i] = first  # the attempt was spent; the old audio and scores stay
                    rows_touched.add(r)
                    continue
                finally:
                    tts_s += time.perf_counter() - t0
                made.append((r, i, audio, attempt))
                clips.append(
                    Clip(audio, int(tts.sample_rate_hz), row["spoken_texts"][i], lang, row["voice_ids"][i])
                )
            scores = scorer.score(clips) if clips else []
            for (r, i, audio, attempt), sc in zip(made, scores, strict=True):
                row = rows[r]
                row["tts_attempts"][i] = attempt
                rows_touched.add(r)
                if isinstance(sc, Exception):
                    continue  # could not be scored: keep the previous audio and scores (still failing)
                sr = int(row["sample_rate_hz"])
                row["audio_flac"][i] = encode_flac(audio, sr)
                row["durations_s"][i] = len(audio) / sr
                resynth_s += len(audio) / sr
                for col, v in sc.as_columns().items():
                    row[col][i] = v
        for r in rows_touched:
            if not row_failures(sel, rows[r]):
                fixed += 1
        metrics = {
            "turns_resynthesised": float(tried),
            "dialogues_touched": float(len(rows_touched)),
            "dialogues_fixed": float(fixed),
            "resynthesised_audio_s": round(resynth_s, 3),
            "tts_s": round(tts_s, 3),
            "wall_s": round(time.perf_counter() - t_start, 3),
        }
        return self.build_output(table, rows, [], metrics)
