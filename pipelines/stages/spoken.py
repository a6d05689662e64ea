"""spoken: an LLM spoken-style pass on answers, then deterministic text normalisation per language."""

from __future__ import annotations

from typing import Any

import pyarrow as pa

from kespeechchat.stage import Resources, StageOutput, reject
from pipelines.stages.llm_base import LLMStage


class SpokenStage(LLMStage):
    name = "spoken"
    version = "1"
    description = "Spoken-style answers (LLM) and text normalisation (numbers, units, dates, symbols -> words)."
    inputs = ("dialogue_id", "language", "roles", "rewritten_texts")
    outputs = ("spoken_texts",)
    resources = Resources(cpus=0.5, memory_mb=600)

    def needs_llm(self) -> bool:
        return self.cfg.spoken.mode == "llm"

    def config_section(self) -> dict[str, Any]:
        from kespeechchat.llm.tasks import load_prompt

        section: dict[str, Any] = {"spoken": self.cfg.spoken.model_dump(), "textnorm": "wetext-1"}
        if self.needs_llm():
            section["llm"] = self.llm_config_section()
            section["prompts"] = {lang: load_prompt("spoken", lang).version for lang in ("zh", "en")}
        return section

    def process(self, table: pa.Table, shard: int) -> StageOutput:
        from kespeechchat.llm.tasks import parse_spoken, spoken_request
        from kespeechchat.textnorm import normalize

        self.check_inputs(table)
        rows = table.to_pylist()
        kept: list[dict[str, Any]] = []
        rejected: list[dict[str, Any]] = []
        metrics: dict[str, float] = {}
        texts_by_row: list[list[str] | None] = [list(r["rewritten_texts"]) for r in rows]
        if self.needs_llm():
            requests = []
            for r in rows:
                req = spoken_request(r["roles"], r["rewritten_texts"], r["language"], self.cfg.spoken)
                roles, lang = r["roles"], r["language"]
                req["validate"] = lambda v, roles=roles, lang=lang: parse_spoken(v, roles, language=lang)
                requests.append(req)
            results, metrics = self.ask_all(requests)
            for i, (r, res) in enumerate(zip(rows, results)):
                if res.error:
                    rejected.append(reject(r, res.error, res.detail))
                    texts_by_row[i] = None
                else:
                    texts_by_row[i] = parse_spoken(res.value, r["roles"], language=r["language"])
        for r, texts in zip(rows, texts_by_row):
            if texts is None:
                continue
            try:
                spoken = [normalize(t, r["language"]).strip() for t in texts]
            except Exception as e:  # a grammar failure is a bad row, not a dead shard
                rejected.append(reject(r, "textnorm_error", f"{type(e).__name__}: {e}"))
                continue
            empty = [i for i, t in enumerate(spoken) if not t]
            if empty:
                rejected.append(reject(r, "empty_after_normalisation", f"turns {empty} are empty"))
                continue
            kept.append({**r, "spoken_texts": spoken})
        return self.build_output(table, kept, rejected, metrics)
