"""select: thresholds from the config decide which dialogues are kept; no model runs here.

A dialogue is kept when every turn passes; otherwise it is rejected with the reason of its
first failing turn, and the detail lists every failing turn with its values and attempts.
The same ``turn_failure`` decides which turns the repair stage re-synthesises.

Reasons, in the order they are checked (broken audio first, then content, then voice, then quality):

=====================  ==============================================================
``audio_empty``        no audio at all
``audio_silence``      share of near-silent 20 ms frames above ``max_silence_ratio``
``audio_clipping``     share of full-scale samples above ``max_clipping_ratio``
``audio_repetition``   share of the speech repeating earlier speech of the clip above
                       ``max_repeat_ratio``: a TTS loop (said twice or more)
``speaking_rate_slow`` spoken characters per second of speech under the language's minimum:
                       a loop or a stall (the text takes far too long)
``speaking_rate_fast`` over the maximum: dropped or truncated text
``asr_mismatch``       CER (zh) / WER (en) above the bound
``speaker_mismatch``   cosine to the voice's reference under ``min_speaker_similarity``
                       (``min_speaker_similarity_short`` for turns under ``speaker_short_s``)
``low_quality``        DNSMOS OVRL under ``min_dnsmos_ovrl``
=====================  ==============================================================

A NaN score means "not measured" (e.g. a turn too short to embed) and is not gated.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pyarrow as pa

from kespeechchat.config import SelectConfig
from kespeechchat.metrics import spoken_chars
from kespeechchat.stage import Resources, Stage, StageOutput, reject

REASONS = (
    "audio_empty",
    "audio_silence",
    "audio_clipping",
    "audio_repetition",
    "speaking_rate_slow",
    "speaking_rate_fast",
    "asr_mismatch",
    "speaker_mismatch",
    "low_quality",
)


def _f32(x: Any) -> float:
    """A score or a bound at the precision the shards store scores in (float32), so that a verdict is
    the same before and after the row is written: 0.1 computed in float64 is 0.10000000149 once stored."""
    return float("nan") if x is None else float(np.float32(x))


def speaker_bound(cfg: SelectConfig, duration_s: float) -> float:
    """The speaker-similarity bound of a turn: short turns embed noisily and get the looser one."""
    if duration_s < cfg.speaker_short_s:
        return min(cfg.min_speaker_similarity, cfg.min_speaker_similarity_short)
    return cfg.min_speaker_similarity


def turn_failure(cfg: SelectConfig, language: str, text: str, scores: dict[str, Any]) -> str | None:
    """The reason one turn fails, or None. ``scores`` holds one turn's value of each score column."""

    duration = _f32(scores.get("durations_s"))
    if not duration > 0:
        return "audio_empty"
    if _f32(scores.get("silence_ratios")) > _f32(cfg.max_silence_ratio):
        return "audio_silence"
    if _f32(scores.get("clipping_ratios")) > _f32(cfg.max_clipping_ratio):
        return "audio_clipping"
    if _f32(scores.get("repeat_ratios")) > _f32(cfg.max_repeat_ratio):
        return "audio_repetition"
    cps = _f32(scores.get("chars_per_s"))
    if math.isfinite(cps) and spoken_chars(text, language) >= cfg.rate_min_chars.get(language, 0):
        if cps < _f32(cfg.min_chars_per_s.get(language, 0.0)):
            return "speaking_rate_slow"
        if cps > _f32(cfg.max_chars_per_s.get(language, math.inf)):
            return "speaking_rate_fast"
    limit = cfg.max_cer_zh if language == "zh" else cfg.max_wer_en
    if not _f32(scores.get("error_rates")) <= _f32(limit):  # NaN fails: an error rate is always measured
        return "asr_mismatch"
    if _f32(scores.get("speaker_similarities")) < _f32(speaker_bound(cfg, duration)):
        return "speaker_mismatch"
    if cfg.min_dnsmos_ovrl is not None and _f32(scores.get("dnsmos_ovrl")) < _f32(cfg.min_dnsmos_ovrl):
        return "low_quality"
    return None


TURN_COLUMNS = (
    "durations_s",
    "error_rates",
    "speaker_similarities",
    "silence_ratios",
    "clipping_ratios",
    "chars_per_s",
    "dnsmos_ovrl",
    "repeat_ratios",
)


def turn_values(row: dict[str, Any], i: int) -> dict[str, Any]:
    """Turn ``i``'s value of every score column the row has."""
    return {c: row[c][i] for c in TURN_COLUMNS if row.get(c) is not None}


def describe_turn(i: int, why: str, v: dict[str, Any], attempts: int | None) -> str:
    def f(key: str, fmt: str) -> str:
        x = v.get(key)
        return "nan" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, fmt)

    return (
        f"turn {i}: {why} (error_rate={f('error_rates', '.3f')} speaker_sim={f('speaker_similarities', '.3f')} "
        f"silence={f('silence_ratios', '.2f')} clipping={f('clipping_ratios', '.3f')} "
        f"repeat={f('repeat_ratios', '.2f')} "
        f"chars_per_s={f('chars_per_s', '.1f')} dnsmos={f('dnsmos_ovrl', '.2f')} attempts={attempts})"
    )


def row_failures(cfg: SelectConfig, row: dict[str, Any]) -> list[tuple[int, str]]:
    """(turn index, reason) of every failing turn of a dialogue row."""
    out = []
    for i, text in enumerate(row["spoken_texts"]):
        why = turn_failure(cfg, row["language"], text, turn_values(row, i))
        if why:
            out.append((i, why))
    return out


class SelectStage(Stage):
    name = "select"
    version = "3"
    description = "Apply thresholds (silence, clipping, repetition, speaking rate, CER/WER, speaker similarity, DNSMOS)."
    inputs = (
        "dialogue_id",
        "language",
        "spoken_texts",
        "durations_s",
        "error_rates",
        "speaker_similarities",
        "silence_ratios",
        "clipping_ratios",
        "chars_per_s",
    )
    outputs = ()
    resources = Resources(cpus=0.1, memory_mb=300)  # waits on HTTP or is cheap: leave the cores to TTS/ASR

    def config_section(self) -> dict[str, Any]:
        return {"select": self.cfg.select.model_dump()}

    def process(self, table: pa.Table, shard: int) -> StageOutput:
        self.check_inputs(table)
        cfg = self.cfg.select
        kept, rejected = [], []
        kept_first = 0
        turns_retried = 0
        for row in table.to_pylist():
            attempts = row.get("tts_attempts") or [1] * len(row["spoken_texts"])
            fails = row_failures(cfg, row)
            if fails:
                detail = "; ".join(
                    describe_turn(i, why, turn_values(row, i), attempts[i]) for i, why in fails
                )
                rejected.append(reject(row, fails[0][1], detail))
                continue
            kept.append(row)
            retried = sum(1 for a in attempts if a > 1)
            turns_retried += retried
            kept_first += int(retried == 0)
        metrics = {
            "kept_first_attempt": float(kept_first),
            "kept_after_retry": float(len(kept) - kept_first),
            "kept_turns_retried": float(turns_retried),
        }
        return self.build_output(table, kept, rejected, metrics)
