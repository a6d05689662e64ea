"""synthesize: TTS of every turn in its assigned voice -> FLAC bytes (16-bit, backend rate) and duration.

Each turn has its own seed (``turn_seed``: run seed, dialogue id, turn index), so a rerun gives the
same audio and a retry can ask for another rendering. Output that is unusable before any scoring
(no samples, NaN/inf samples) is re-synthesised right here with the next attempt, up to
``retry.retries`` more times; if it stays broken, the dialogue is rejected as ``tts_empty`` or
``tts_nonfinite``. Everything subtler (silence, loops, wrong words, wrong voice) is scored by
verify and retried by repair. ``tts_attempts`` counts the attempts each turn took.

Also makes sure each voice used has its reference probe audio (for speaker verification).
"""

from __future__ import annotations

import time
from typing import Any

import pyarrow as pa

from kespeechchat.audio import encode_flac
from kespeechchat.backends.tts import make_tts, output_problem, tts_config_section, turn_seed
from kespeechchat.stage import Resources, Stage, StageOutput, reject
from kespeechchat.store import ENVIRONMENT_ERRNOS
from pipelines.voices import library_fingerprint, load_run_library
from voice_library.refs import ensure_ref

# A shard whose every dialogue fails with an exception has a broken model, not bad rows.
SYSTEMIC_MIN_ROWS = 3


class TurnSynthesisError(RuntimeError):
    """A turn could not be synthesised; ``reason`` is the reject reason."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason


def synthesize_turn(
    tts: Any, text: str, language: str, recipe: Any, seed: int, first_attempt: int, max_attempts: int
) -> tuple[Any, int]:
    """(audio, attempt that produced it); retries output that is empty or not finite.

    Raises ``TurnSynthesisError`` with the reason of the last attempt when none is usable.
    Exceptions of the backend (bad text, unknown voice) are not retried: they are deterministic.
    """

    problem = ("tts_empty", "no attempt made")
    for attempt in range(first_attempt, max_attempts + 1):
        audio = tts.synthesize(text, language, recipe, seed=seed, attempt=attempt)
        problem = output_problem(audio)
        if problem is None:
            return audio, attempt
    raise TurnSynthesisError(
        problem[0], f"{problem[1]} (after {max_attempts - first_attempt + 1} attempt(s))"
    )


class SynthesizeStage(Stage):
    name = "synthesize"
    version = "2"
    description = "TTS of each turn with its voice recipe; FLAC 16-bit at the backend's rate."
    inputs = ("dialogue_id", "language", "roles", "spoken_texts", "voice_ids")
    outputs = ("audio_flac", "sample_rate_hz", "durations_s", "tts_attempts")
    resources = Resources(cpus=1.0, memory_mb=1500)

    def config_section(self) -> dict[str, Any]:

        return {
            "tts": tts_config_section(self.cfg.tts),
            "seed": self.cfg.seed,
            "retries": self.cfg.retry.retries,
            "library": library_fingerprint(self.cfg, self.runtime.run_dir),
        }

    def setup(self) -> None:

        self.tts = make_tts(self.cfg.tts, speed_jitter=self.cfg.retry.speed_jitter)
        self.tts.setup()
        self.voices = {v.voice_id: v for v in load_run_library(self.cfg, self.runtime.run_dir)}

    def process(self, table: pa.Table, shard: int) -> StageOutput:

        self.check_inputs(table)
        sr = int(self.tts.sample_rate_hz)
        max_attempts = 1 + self.cfg.retry.retries
        kept, rejected = [], []
        audio_s = tts_s = 0.0
        errors: list[str] = []
        for row in table.to_pylist():
            lang = row["language"]
            flacs, durs, attempts = [], [], []
            try:
                if len(row["voice_ids"]) != len(row["spoken_texts"]):
                    raise ValueError(
                        f"{len(row['spoken_texts'])} turns but {len(row['voice_ids'])} voice ids"
                    )
                for i, (text, vid) in enumerate(zip(row["spoken_texts"], row["voice_ids"], strict=True)):
                    recipe = self.voices.get(vid)
                    if recipe is None:
                        raise KeyError(f"voice {vid!r} of turn {i} is not in the run's library")
                    ensure_ref(self.runtime.run_dir, self.tts, recipe, lang, seed=self.cfg.seed)
                    t0 = time.perf_counter()
                    try:
                        audio, attempt = synthesize_turn(
                            self.tts,
                            text,
                            lang,
                            recipe,
                            turn_seed(self.cfg.seed, row["dialogue_id"], i),
                            1,
                            max_attempts,
                        )
                    finally:
                        tts_s += time.perf_counter() - t0
                    flacs.append(encode_flac(audio, sr))
                    durs.append(len(audio) / sr)
                    attempts.append(attempt)
            except TurnSynthesisError as e:
                rejected.append(reject(row, e.reason, f"turn {len(flacs)}: {e}"))
                continue
            except OSError as e:
                if e.errno in ENVIRONMENT_ERRNOS:  # a full disk fails the unit, it is not the row's fault
                    raise
                errors.append(f"{type(e).__name__}: {e}")
                rejected.append(reject(row, "tts_error", f"turn {len(flacs)}: {type(e).__name__}: {e}"))
                continue
            except Exception as e:  # one bad row must not sink the shard
                errors.append(f"{type(e).__name__}: {e}")
                rejected.append(reject(row, "tts_error", f"turn {len(flacs)}: {type(e).__name__}: {e}"))
                continue
            audio_s += sum(durs)
            kept.append(
                {
                    **row,
                    "audio_flac": flacs,
                    "sample_rate_hz": sr,
                    "durations_s": durs,
                    "tts_attempts": attempts,
                }
            )
        if table.num_rows >= SYSTEMIC_MIN_ROWS and len(errors) == table.num_rows:
            raise RuntimeError(
                f"synthesize failed on every dialogue of shard {shard}; first error: {errors[0]}"
            )
        return self.build_output(table, kept, rejected, {"audio_s": audio_s, "tts_s": round(tts_s, 3)})
