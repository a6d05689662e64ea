"""spoken: an LLM spoken-style pass on answers, then deterministic text normalisation per language.

The LLM pass touches assistant turns only: user turns are taken from the rewrite as they are,
and an answer whose length moved far from its input is re-asked (see ``parse_spoken``). Text
normalisation (WeTextProcessing plus tested fixes) then writes numbers, units, dates and symbols
as words, so the TTS reads them and the ASR check compares like with like.

Guards (``kespeechchat.speakable``): a reply with markup, or one that drifted from the rewrite (a
sentence added or dropped), is re-asked; still wrong after ``llm.invalid_output_retries``, the
rule-normalised rewrite is used and ``spoken_notes`` says why. Bracketed glosses in the other script
are dropped, and a turn that still carries list markers or markdown is rejected (``spoken_markup``).
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa

from kespeechchat.llm.tasks import parse_spoken, spoken_request
from kespeechchat.speakable import check_turns, finish_spoken, markup
from kespeechchat.stage import Resources, StageOutput, reject
from kespeechchat.textnorm import warm_up
from pipelines.stages.llm_base import LLMStage


class SpokenStage(LLMStage):
    name = "spoken"
    version = "3"
    description = (
        "Spoken-style answers (LLM) and text normalisation (numbers, units, dates, symbols -> words)."
    )
    inputs = ("dialogue_id", "language", "roles", "rewritten_texts")
    outputs = ("spoken_texts", "spoken_notes")
    resources = Resources(cpus=0.25, memory_mb=600)
    prompt_name = "spoken"

    def needs_llm(self) -> bool:
        return self.cfg.spoken.mode == "llm"

    section = "spoken"

    def extra_config(self) -> dict[str, Any]:
        return {"textnorm": "wetext-2"}

    def setup(self) -> None:

        super().setup()
        warm_up()  # load (and on first use compile) the grammars once per worker

    def process(self, table: pa.Table, shard: int) -> StageOutput:

        self.check_inputs(table)
        rows = table.to_pylist()
        rejected: list[dict[str, Any]] = []
        metrics: dict[str, float] = {}
        texts_by_row: list[list[str] | None] = [list(r["rewritten_texts"]) for r in rows]
        notes: list[str | None] = [None] * len(rows)
        # row -> (turns, normalised turns and glosses dropped) of the reply that passed the guard
        accepted: dict[int, tuple[list[str], tuple[list[str], int] | None]] = {}
        if self.needs_llm():
            sources: dict[int, list[str] | None] = {}

            def validator(i: int, row: dict[str, Any]):
                def check(value: Any) -> None:
                    texts = parse_spoken(
                        value, row["roles"], language=row["language"], source_texts=row["rewritten_texts"]
                    )
                    if i not in sources:  # the rewrite, normalised once for every reply to this row
                        sources[i] = self._finish_or_none(row["rewritten_texts"], row["language"])
                    accepted[i] = (texts, self.guard(row, texts, sources[i]))

                return check

            requests = []
            for i, r in enumerate(rows):
                req = spoken_request(
                    r["roles"],
                    r["rewritten_texts"],
                    r["language"],
                    self.cfg.spoken,
                    text_pattern=self.text_pattern,
                )
                req["validate"] = validator(i, r)
                requests.append(req)
            results, metrics = self.ask_all(requests)
            for i, (r, res) in enumerate(zip(rows, results, strict=True)):
                if res.error == "llm_invalid_output":
                    # Re-asked and still wrong (drift, markup, a changed user turn, bad JSON): the
                    # rule-normalised rewrite says what was meant; the note says why it is used.
                    notes[i] = f"fallback_to_rewrite: {res.detail}"[:500]
                    metrics["spoken_fallbacks"] = metrics.get("spoken_fallbacks", 0.0) + 1
                    kind = res.detail.split(":", 1)[0]
                    if kind in ("spoken_drift", "spoken_markup"):
                        metrics[f"{kind}_fallbacks"] = metrics.get(f"{kind}_fallbacks", 0.0) + 1
                    accepted.pop(i, None)
                elif res.error:
                    rejected.append(reject(r, res.error, res.detail))
                    texts_by_row[i] = None
                else:
                    texts_by_row[i] = accepted[i][0]
        kept: list[dict[str, Any]] = []
        for i, (r, texts, note) in enumerate(zip(rows, texts_by_row, notes, strict=True)):
            if texts is None:
                continue
            done = accepted.get(i, (None, None))[1]
            try:
                spoken, glosses = done if done is not None else self.finish(texts, r["language"])
            except Exception as e:  # a grammar failure is a bad row, not a dead shard
                rejected.append(reject(r, "textnorm_error", f"{type(e).__name__}: {e}"))
                continue
            if glosses:
                metrics["glosses_dropped"] = metrics.get("glosses_dropped", 0.0) + glosses
            empty = [i for i, t in enumerate(spoken) if not t]
            if empty:
                rejected.append(reject(r, "empty_after_normalisation", f"turns {empty} are empty"))
                continue
            hit = next(((i, m) for i, t in enumerate(spoken) if (m := markup(t))), None)
            if hit:  # also user turns and fallbacks: markup never reaches the TTS
                rejected.append(reject(r, "spoken_markup", f"turn {hit[0]}: {hit[1]}"))
                continue
            kept.append({**r, "spoken_texts": spoken, "spoken_notes": note})
        return self.build_output(table, kept, rejected, metrics)

    @staticmethod
    def finish(texts: list[str], language: str) -> tuple[list[str], int]:
        """Glosses dropped, then text normalisation: the texts the TTS reads; and the glosses dropped."""
        return finish_spoken(texts, language)

    def _finish_or_none(self, texts: list[str], language: str) -> list[str] | None:
        try:
            return self.finish(list(texts), language)[0]
        except Exception:  # reported as textnorm_error when the row is built
            return None

    def guard(
        self, row: dict[str, Any], texts: list[str], source: list[str] | None
    ) -> tuple[list[str], int] | None:
        """Raise ValueError (the reason to re-ask) on markup in the reply or drift from the rewrite
        (``source``, normalised alike); else the reply's normalised turns and glosses dropped, or None
        when normalisation itself fails (the row is then rejected with ``textnorm_error``)."""
        lang = row["language"]
        for i, t in enumerate(texts):
            m = markup(t)
            if m:
                raise ValueError(f"spoken_markup: turn {i}: {m}")
        try:
            done = self.finish(texts, lang)
        except Exception:
            return None
        if source is not None:
            hit = check_turns(row["roles"], source, done[0], lang)
            if hit:
                raise ValueError(f"{hit[0]}: {hit[1]}")
        return done
