"""filter: rules on the rewritten text (length, language, leftovers), then an LLM judge.

The judge answers yes/no questions (harmful? code or formulas? does it make sense?); the first
answer that fails names the reason (``judge_unsafe``, ``judge_not_speakable``, ``judge_unclear``).
"""

from __future__ import annotations

from typing import Any

from kespeechchat.llm.tasks import judge_request, parse_judge
from kespeechchat.rules import RULES_VERSION, check_dialogue
from kespeechchat.stage import Resources
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

    section = "filter"

    def needs_llm(self) -> bool:
        return self.cfg.filter.llm_judge

    def extra_config(self) -> dict[str, Any]:
        return {"rules": RULES_VERSION}

    def prefilter(self, row: dict[str, Any]) -> tuple[str, str] | None:
        hit = check_dialogue(row["roles"], row["rewritten_texts"], row["language"], self.cfg.filter)
        return None if hit is None else (hit.reason, hit.detail)

    def without_llm(self, row: dict[str, Any]) -> dict[str, Any]:
        return {**row, "filter_notes": "rules_only"}

    def request(self, row: dict[str, Any]) -> dict[str, Any]:
        req = judge_request(row["roles"], row["rewritten_texts"], row["language"])
        req["validate"] = parse_judge
        return req

    def accept(self, row: dict[str, Any], value: Any) -> tuple[dict[str, Any] | None, tuple[str, str] | None]:
        keep, why = parse_judge(value)
        if keep:
            return {**row, "filter_notes": why}, None
        return None, (f"judge_{why}", str(value)[:500])
