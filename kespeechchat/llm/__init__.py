"""The LLM layer: a managed llama.cpp server, an async OpenAI client for JSON replies, and the text tasks.

Importing this package is cheap: ``openai`` and ``llama_cpp`` are imported only when used.
"""

from __future__ import annotations

from kespeechchat.llm.client import JsonResult, LLMClient, LLMError, request_key, response_format
from kespeechchat.llm.server import ManagedLlamaServer
from kespeechchat.llm.tasks import (
    Prompt,
    judge_request,
    load_prompt,
    parse_judge,
    parse_rewrite,
    parse_spoken,
    prompt_versions,
    prompts_dir,
    rewrite_request,
    spoken_request,
)

__all__ = [
    "JsonResult",
    "LLMClient",
    "LLMError",
    "ManagedLlamaServer",
    "Prompt",
    "judge_request",
    "load_prompt",
    "parse_judge",
    "parse_rewrite",
    "parse_spoken",
    "prompt_versions",
    "prompts_dir",
    "request_key",
    "response_format",
    "rewrite_request",
    "spoken_request",
]
