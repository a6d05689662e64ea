"""spoken: an LLM spoken-style pass on answers, then deterministic text normalisation per language.

The LLM pass touches assistant turns only: user turns are taken from the rewrite as they are,
and an answer whose length moved far from its input is re-asked (see ``parse_spoken``). Text
normalisation (WeTextProcessing plus tested fixes) then writes numbers, units, dates and symbols
as words, so the TTS reads them and the ASR check compares like with like.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa

from kespeechchat.stage import Resources, StageOutput, reject
from pipelines.stages.llm_base import LLMStage


class SpokenStage(LLMStage):
    name = "spoken"
    version = "2"
    description = (
        "Spoken-style answers (LLM) and text normalisation (numbers, units, dates, symbols -> words)."
    )
    inputs = ("dialogue_id", "language", "roles", "rewritten_texts")
    outputs = ("spoken_texts",)
    resources = Resources(cpus=0.25, memory_mb=600)
    prompt_name = "spoken"

    def needs_llm(self) -> bool:
        return self.cfg.spoken.mode == "llm"

    def config_section(self) -> dict[str, Any]:
        section: dict[str, Any] = {"spoken": self.cfg.spoken.model_dump(), "textnorm": "wetext-1"}
        if self.needs_llm():
            section["llm"] = self.llm_config_section()
        return section

    def setup(self) -> None:
        from kespeechchat.textnorm import warm_up

        super().setup()
        warm_up()  # load (and on first use compile) the grammars once per worker

    def process(self, table: pa.Table, shard: int) -> StageOutput:
        from kespeechchat.llm.tasks import parse_spoken, spoken_request
        from kespeechchat.textnorm import normalize

        self.check_inputs(table)
        rows = table.to_pylist()
        rejected: list[dict[str, Any]] = []
        metrics: dict[str, float] = {}
        texts_by_row: list[list[str] | None] = [list(r["rewritten_texts"]) for r in rows]
        if self.needs_llm():

            def validator(row: dict[str, Any]):
                return lambda v: parse_spoken(
                    v, row["roles"], language=row["language"], source_texts=row["rewritten_texts"]
                )

            requests = []
            for r in rows:
                req = spoken_request(
                    r["roles"],
                    r["rewritten_texts"],
                    r["language"],
                    self.cfg.spoken,
                    text_pattern=self.text_pattern,
                )
                req["validate"] = validator(r)
                requests.append(req)
            results, metrics = self.ask_all(requests)
            for i, (r, res) in enumerate(zip(rows, results, strict=True)):
                if res.error:
                    rejected.append(reject(r, res.error, res.detail))
                    texts_by_row[i] = None
                else:
                    texts_by_row[i] = parse_spoken(
                        res.value, r["roles"], language=r["language"], source_texts=r["rewritten_texts"]
                    )
        kept: list[dict[str, Any]] = []
        for r, texts in zip(rows, texts_by_row, strict=True):
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
