"""The skeleton of the LLM text stages: rules first, one request per remaining dialogue, then each
reply accepted or rejected; one client per worker, batched calls, token accounting.

A text stage says only what differs: its config section (``section``), its rule prefilter
(``prefilter``), the row it keeps when the LLM is switched off (``without_llm``), its request
(``request``) and what a reply becomes (``accept``). ``spoken`` adds its own guard and fallback on
top of the same plumbing.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa

from kespeechchat.llm.client import LLMClient
from kespeechchat.llm.tasks import SPOKEN_TEXT_PATTERN, load_prompt
from kespeechchat.stage import Stage, StageOutput, reject
from kespeechchat.store import RunStore


class LLMStage(Stage):
    """A stage that sends one structured-output request per dialogue through the OpenAI API.

    Requests of one shard go out together through ``LLMClient.complete_json_many`` (bounded
    concurrency per endpoint, round robin, retries, a reply cache under ``<run>/_cache/llm``); a row
    whose request fails gets the client's reason (``llm_unavailable``, ``llm_invalid_output``,
    ``llm_bad_request``), a systemic failure (``LLMError``) stops the shard.
    """

    prompt_name: str = ""
    section: str = ""  # the stage's own config section, part of its config hash

    # -- what a text stage specialises ---------------------------------------------------------------
    def needs_llm(self) -> bool:
        raise NotImplementedError

    def extra_config(self) -> dict[str, Any]:
        """More of the config hash than the stage's section and the LLM's (e.g. prefilter limits)."""
        return {}

    def prefilter(self, row: dict[str, Any]) -> tuple[str, str] | None:
        """(reason, detail) when cheap rules reject the row before any request; None to go on."""
        return None

    def without_llm(self, row: dict[str, Any]) -> dict[str, Any]:
        """The kept row when the stage's LLM is switched off."""
        raise NotImplementedError

    def request(self, row: dict[str, Any]) -> dict[str, Any]:
        """The structured-output request of a row, with its ``validate`` callable."""
        raise NotImplementedError

    def accept(self, row: dict[str, Any], value: Any) -> tuple[dict[str, Any] | None, tuple[str, str] | None]:
        """(kept row, None) or (None, (reason, detail)) for a valid reply."""
        raise NotImplementedError

    # -- the skeleton ----------------------------------------------------------------------------------
    def config_section(self) -> dict[str, Any]:
        section: dict[str, Any] = {
            self.section: getattr(self.cfg, self.section).model_dump(),
            **self.extra_config(),
        }
        if self.needs_llm():
            section["llm"] = self.llm_config_section()
        return section

    def process(self, table: pa.Table, shard: int) -> StageOutput:
        self.check_inputs(table)
        kept: list[dict[str, Any]] = []
        rejected: list[dict[str, Any]] = []
        todo: list[dict[str, Any]] = []
        for row in table.to_pylist():
            hit = self.prefilter(row)
            if hit is not None:
                rejected.append(reject(row, *hit))
            else:
                todo.append(row)
        if not self.needs_llm():
            return self.build_output(table, [self.without_llm(r) for r in todo], rejected, {})
        results, metrics = self.ask_all([self.request(r) for r in todo])
        for row, res in zip(todo, results, strict=True):
            if res.error:
                rejected.append(reject(row, res.error, res.detail))
                continue
            out, why = self.accept(row, res.value)
            if out is not None:
                kept.append(out)
            else:
                rejected.append(reject(row, *why))
        return self.build_output(table, kept, rejected, metrics)

    def setup(self) -> None:
        self.client = None
        if not self.needs_llm():
            return

        if not self.runtime.llm_endpoints:
            raise RuntimeError(
                f"stage {self.name}: no LLM endpoint (start the managed server or set llm.endpoints)"
            )
        llm = self.cfg.llm
        self.client = LLMClient(
            self.runtime.llm_endpoints,
            api_key=self.runtime.llm_api_key,
            model=self.runtime.llm_model,
            concurrency=llm.concurrency,
            timeout_s=llm.timeout_s,
            max_retries=llm.max_retries,
            structured_output=self.runtime.llm_structured_output,
            cache_dir=RunStore(self.runtime.run_dir).cache_dir / "llm",
            prefix_concurrency=llm.prefix_concurrency or (1 if llm.backend == "llamacpp" else None),
        )

    def teardown(self) -> None:
        self.client = None

    def llm_config_section(self) -> dict[str, Any]:
        """What changes the replies: model, sampling, the schema's text constraint and the prompt files.

        A prompt's version is the hash of its file, so editing ``configs/prompts/judge_zh.txt``
        changes the hash of the filter stage only, and only that stage (and what its new output
        feeds) runs again.
        """

        llm = self.cfg.llm
        section: dict[str, Any] = {
            "model": llm.model,
            "model_path": llm.model_path,
            "temperature": llm.temperature,
            "backend": llm.backend,
            "text_pattern": llm.text_pattern,
        }
        if self.prompt_name:
            section["prompts"] = {lang: load_prompt(self.prompt_name, lang).version for lang in ("zh", "en")}
        return section

    @property
    def text_pattern(self) -> str | None:
        """The JSON-schema pattern of turn texts, or None where the config switches it off."""

        return SPOKEN_TEXT_PATTERN if self.cfg.llm.text_pattern else None

    def ask_all(self, requests: list[dict[str, Any]]) -> tuple[list[Any], dict[str, float]]:
        """Send the requests (results keep their order); returns results and token metrics."""
        if not requests:
            return [], {}
        if self.client is None:
            raise RuntimeError(f"stage {self.name}: setup() was not called")
        for r in requests:
            r.setdefault("temperature", self.cfg.llm.temperature)
            r.setdefault("invalid_retries", self.cfg.llm.invalid_output_retries)
            r.setdefault("seed", self.cfg.seed)
        results = self.client.complete_json_many(requests)
        metrics = {
            "llm_requests": float(len(results)),
            "llm_cache_hits": float(sum(1 for r in results if r.cached)),
            "llm_http_requests": float(sum(r.attempts for r in results)),
            "tokens_in": float(sum(r.tokens_in for r in results)),
            "tokens_out": float(sum(r.tokens_out for r in results)),
        }
        return results, metrics
