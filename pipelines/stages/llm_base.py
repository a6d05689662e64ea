"""Shared plumbing of the LLM text stages: one client per worker, batched calls, token accounting."""

from __future__ import annotations

from typing import Any

from kespeechchat.llm.client import LLMClient
from kespeechchat.llm.tasks import SPOKEN_TEXT_PATTERN, load_prompt
from kespeechchat.stage import Stage
from kespeechchat.store import RunStore


class LLMStage(Stage):
    """A stage that sends one structured-output request per dialogue through the OpenAI API.

    Requests of one shard go out together through ``LLMClient.complete_json_many`` (bounded
    concurrency per endpoint, round robin, retries, a reply cache under ``<run>/_cache/llm``); a row
    whose request fails gets the client's reason (``llm_unavailable``, ``llm_invalid_output``,
    ``llm_bad_request``), a systemic failure (``LLMError``) stops the shard.
    """

    prompt_name: str = ""

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
