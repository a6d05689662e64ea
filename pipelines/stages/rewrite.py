"""rewrite: instruction-style text -> natural spoken request and answer, keeping the meaning.

Cheap content rules run first (code, formulas, tables, URLs, …) so the LLM never pays for text
that cannot be spoken anyway; source length is bounded by the LLM context, not by speech limits.
"""

from __future__ import annotations

from typing import Any

from kespeechchat.llm.tasks import parse_rewrite, rewrite_request
from kespeechchat.rules import RULES_VERSION, check_dialogue
from kespeechchat.stage import Resources
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

    section = "rewrite"

    def needs_llm(self) -> bool:
        return self.cfg.rewrite.mode == "llm"

    def extra_config(self) -> dict[str, Any]:
        return {"prefilter": self._prefilter_cfg().model_dump(), "rules": RULES_VERSION}

    def _prefilter_cfg(self):
        return self.cfg.filter.model_copy(update=_PREFILTER_LIMITS)

    def prefilter(self, row: dict[str, Any]) -> tuple[str, str] | None:
        hit = check_dialogue(row["roles"], row["source_texts"], row["language"], self._prefilter_cfg())
        return None if hit is None else (hit.reason, hit.detail)

    def without_llm(self, row: dict[str, Any]) -> dict[str, Any]:
        return {**row, "rewritten_texts": list(row["source_texts"])}

    def request(self, row: dict[str, Any]) -> dict[str, Any]:
        req = rewrite_request(
            row["roles"],
            row["source_texts"],
            row["language"],
            self.cfg.rewrite,
            text_pattern=self.text_pattern,
        )
        req["validate"] = lambda v: parse_rewrite(v, row["roles"], language=row["language"])
        return req

    def accept(self, row: dict[str, Any], value: Any) -> tuple[dict[str, Any] | None, tuple[str, str] | None]:
        return {**row, "rewritten_texts": parse_rewrite(value, row["roles"], language=row["language"])}, None
