"""filter: rules on the rewritten text (length, language, leftovers), then an LLM judge.

The judge answers yes/no questions (harmful? code or formulas? does it make sense?); the first
answer that fails names the reason (``judge_unsafe``, ``judge_not_speakable``, ``judge_unclear``).
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa

from kespeechchat.llm.tasks import judge_request, parse_judge
from kespeechchat.rules import check_dialogue
from kespeechchat.stage import Resources, StageOutput, reject
from pipelines.stages.llm_base import LLMStage


class FilterStage(LLMStage):
    name = "filter"
    version = "1"
    description = (
        "Rule filters, then an LLM judge (safety, clarity, can it be spoken); every drop has a reason."
    )
    inputs = ("dialogue_id", "language", "roles", "rewritten_texts")
    outputs = ("filter_notes",)
    resources = Resources(cpus=0.1, memory_mb=300)  # waits on HTTP or is cheap: leave the cores to TTS/ASR
    prompt_name = "judge"

    def needs_llm(self) -> bool:
        return self.cfg.filter.llm_judge

    def config_section(self) -> dict[str, Any]:
        section: dict[str, Any] = {"filter": self.cfg.filter.model_dump()}
        if self.needs_llm():
            section["llm"] = self.llm_config_section()
        return section

    def process(self, table: pa.Table, shard: int) -> StageOutput:

        self.check_inputs(table)
        kept: list[dict[str, Any]] = []
        rejected: list[dict[str, Any]] = []
        todo: list[dict[str, Any]] = []
        for row in table.to_pylist():
            hit = check_dialogue(row["roles"], row["rewritten_texts"], row["language"], self.cfg.filter)
            if hit is not None:
                rejected.append(reject(row, hit.reason, hit.detail))
            else:
                todo.append(row)
        metrics: dict[str, float] = {}
        if not self.needs_llm():
            kept = [{**row, "filter_notes": "rules_only"} for row in todo]
            return self.build_output(table, kept, rejected, metrics)
        requests = []
        for row in todo:
            req = judge_request(row["roles"], row["rewritten_texts"], row["language"])
            req["validate"] = parse_judge
            requests.append(req)
        results, metrics = self.ask_all(requests)
        for row, res in zip(todo, results, strict=True):
            if res.error:
                rejected.append(reject(row, res.error, res.detail))
                continue
            keep, why = parse_judge(res.value)
            if keep:
                kept.append({**row, "filter_notes": why})
            else:
                rejected.append(reject(row, f"judge_{why}", str(res.value)[:500]))
        return self.build_output(table, kept, rejected, metrics)
