"""select: thresholds from the config decide which dialogues are kept; no model runs here.

A dialogue is kept when every turn passes; otherwise it is rejected with the reason of its
first failing turn, and the detail lists every failing turn with its values.
"""

from __future__ import annotations

import math
from typing import Any

import pyarrow as pa

from kespeechchat.config import SelectConfig
from kespeechchat.stage import Resources, Stage, StageOutput, reject


def turn_failure(cfg: SelectConfig, language: str, er: float, sim: float, sil: float, clip: float, cps: float) -> str | None:
    """The reason one turn fails, or None. Order: broken audio first, then content, then voice."""
    if not math.isfinite(cps):
        return "audio_empty"
    if sil > cfg.max_silence_ratio:
        return "audio_silence"
    if clip > cfg.max_clipping_ratio:
        return "audio_clipping"
    lo, hi = cfg.min_chars_per_s.get(language, 0.0), cfg.max_chars_per_s.get(language, math.inf)
    if cps < lo:
        return "speaking_rate_slow"
    if cps > hi:
        return "speaking_rate_fast"
    limit = cfg.max_cer_zh if language == "zh" else cfg.max_wer_en
    if er > limit:
        return "asr_mismatch"
    if sim < cfg.min_speaker_similarity:
        return "speaker_mismatch"
    return None


class SelectStage(Stage):
    name = "select"
    version = "1"
    description = "Apply thresholds (CER/WER, speaker similarity, silence, clipping, speaking rate)."
    inputs = ("dialogue_id", "language", "error_rates", "speaker_similarities", "silence_ratios", "clipping_ratios", "chars_per_s")
    outputs = ()
    resources = Resources(cpus=0.25, memory_mb=300)

    def config_section(self) -> dict[str, Any]:
        return {"select": self.cfg.select.model_dump()}

    def process(self, table: pa.Table, shard: int) -> StageOutput:
        self.check_inputs(table)
        cfg = self.cfg.select
        kept, rejected = [], []
        for row in table.to_pylist():
            fails = []
            for i, vals in enumerate(
                zip(row["error_rates"], row["speaker_similarities"], row["silence_ratios"], row["clipping_ratios"], row["chars_per_s"])
            ):
                why = turn_failure(cfg, row["language"], *vals)
                if why:
                    er, sim, sil, clip, cps = vals
                    fails.append((why, f"turn {i}: {why} (error_rate={er:.3f} speaker_sim={sim:.3f} silence={sil:.2f} clipping={clip:.3f} chars_per_s={cps:.1f})"))
            if fails:
                rejected.append(reject(row, fails[0][0], "; ".join(f[1] for f in fails)))
            else:
                kept.append(row)
        return self.build_output(table, kept, rejected)
