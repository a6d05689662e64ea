"""Shared plumbing of the LLM text stages: one client per worker, batched calls, token accounting."""

from __future__ import annotations

from typing import Any

from kespeechchat.stage import Stage


class LLMStage(Stage):
    """A stage that sends one structured-output request per dialogue through the OpenAI API."""

    def setup(self) -> None:
        self.client = None
        if not self.needs_llm():
            return
        from kespeechchat.llm.client import LLMClient

        if not self.runtime.llm_endpoints:
            raise RuntimeError(f"stage {self.name}: no LLM endpoint (start the managed server or set llm.endpoints)")
        llm = self.cfg.llm
        self.client = LLMClient(
            self.runtime.llm_endpoints,
            api_key=self.runtime.llm_api_key,
            model=self.runtime.llm_model,
            concurrency=llm.concurrency,
            timeout_s=llm.timeout_s,
            max_retries=llm.max_retries,
            structured_output=self.runtime.llm_structured_output,
            cache_dir=self.runtime.run_dir / "_cache" / "llm",
        )

    def llm_config_section(self) -> dict[str, Any]:
        llm = self.cfg.llm
        return {"model": llm.model, "model_path": llm.model_path, "temperature": llm.temperature, "backend": llm.backend}

    def ask_all(self, requests: list[dict[str, Any]]) -> tuple[list[Any], dict[str, float]]:
        """Send the requests (kept in order); returns results and token metrics."""
        if not requests:
            return [], {}
        for r in requests:
            r.setdefault("temperature", self.cfg.llm.temperature)
            r.setdefault("invalid_retries", self.cfg.llm.invalid_output_retries)
            r.setdefault("seed", self.cfg.seed)
        results = self.client.complete_json_many(requests)
        metrics = {
            "llm_requests": float(len(results)),
            "llm_cache_hits": float(sum(1 for r in results if r.cached)),
            "tokens_in": float(sum(r.tokens_in for r in results)),
            "tokens_out": float(sum(r.tokens_out for r in results)),
        }
        return results, metrics
