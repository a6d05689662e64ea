"""rewrite: instruction-style text -> natural spoken request and answer, keeping the meaning.

Cheap content rules run first (code, formulas, tables, URLs, …) so the LLM never pays for text
that cannot be spoken anyway; source length is bounded by the LLM context, not by speech limits.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa

from kespeechchat.llm.tasks import parse_rewrite, rewrite_request
from kespeechchat.rules import check_dialogue
from kespeechchat.stage import Resources, StageOutput, reject
from pipelines.stages.llm_base import LLMStage

# Source turns are long before the rewrite shortens them; only bound them by what the LLM can read.
_PREFILTER_LIMITS = {"max_turn_chars_zh": 4000, "max_turn_chars_en": 12000}


class RewriteStage(LLMStage):
    name = "rewrite"
    version = "1"
    description = "LLM rewrite of each dialogue into spoken requests and answers (content rules first)."
    inputs = ("dialogue_id", "language", "roles", "source_texts")
    outputs = ("rewritten_texts",)
    resources = Resources(cpus=0.1, memory_mb=300)  # waits on HTTP or is cheap: leave the cores to TTS/ASR
    prompt_name = "rewrite"

    def needs_llm(self) -> bool:
        return self.cfg.rewrite.mode == "llm"

    def config_section(self) -> dict[str, Any]:
        section: dict[str, Any] = {
            "rewrite": self.cfg.rewrite.model_dump(),
            "prefilter": self._prefilter_cfg().model_dump(),
        }
        if self.needs_llm():
            section["llm"] = self.llm_config_section()
        return section

    def _prefilter_cfg(self):
        return self.cfg.filter.model_copy(update=_PREFILTER_LIMITS)

    def process(self, table: pa.Table, shard: int) -> StageOutput:

        self.check_inputs(table)
        prefilter = self._prefilter_cfg()
        kept: list[dict[str, Any]] = []
        rejected: list[dict[str, Any]] = []
        todo: list[dict[str, Any]] = []
        for row in table.to_pylist():
            hit = check_dialogue(row["roles"], row["source_texts"], row["language"], prefilter)
            if hit is not None:
                rejected.append(reject(row, hit.reason, hit.detail))
            else:
                todo.append(row)
        metrics: dict[str, float] = {}
        if not self.needs_llm():
            kept = [{**row, "rewritten_texts": list(row["source_texts"])} for row in todo]
            return self.build_output(table, kept, rejected, metrics)

        def validator(row: dict[str, Any]):
            return lambda v: parse_rewrite(v, row["roles"], language=row["language"])

        requests = []
        for row in todo:
            req = rewrite_request(
                row["roles"],
                row["source_texts"],
                row["language"],
                self.cfg.rewrite,
                text_pattern=self.text_pattern,
            )
            req["validate"] = validator(row)
            requests.append(req)
        results, metrics = self.ask_all(requests)
        for row, res in zip(todo, results, strict=True):
            if res.error:
                rejected.append(reject(row, res.error, res.detail))
            else:
                texts = parse_rewrite(res.value, row["roles"], language=row["language"])
                kept.append({**row, "rewritten_texts": texts})
        return self.build_output(table, kept, rejected, metrics)
