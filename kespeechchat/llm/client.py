"""Async OpenAI-compatible client for JSON replies: bounded concurrency, retries, validation, cache.

One ``LLMClient`` talks to one or more endpoints (``vllm serve`` replicas, or the managed llama.cpp
server) in round robin. Every call asks for a JSON object that follows a schema and returns a
``JsonResult`` instead of raising for per-row problems, so a stage can keep the row with a reason:

- transient failures (HTTP 408/409/429/5xx, timeouts, dropped connections, unreadable bodies) are
  retried with exponential backoff and jitter, each retry on the next endpoint; when they run out
  the result carries ``error="llm_unavailable"``;
- a reply that is not JSON, not an object, does not follow the schema, was cut by ``max_tokens`` or
  fails the caller's ``validate()`` is re-asked with another seed; when re-asks run out the result
  carries ``error="llm_invalid_output"``;
- a request the server refuses as malformed (HTTP 400/413/422, e.g. a prompt longer than the
  context) gives ``error="llm_bad_request"``;
- a refused API key or an unknown model/URL (HTTP 401/403/404) is systemic and raises ``LLMError``.

Valid replies are cached on disk by request hash, so a rerun of a stage pays nothing twice.
The API key is sent only in the Authorization header: never logged, never put in an error.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import random
import re
import threading
import weakref
from collections.abc import AsyncIterator, Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

from kespeechchat.store import TMP_PREFIX, read_json

log = logging.getLogger(__name__)

T = TypeVar("T")

STRUCTURED_OUTPUT_MODES = ("json_schema", "json_object_schema")
RETRYABLE_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504})
SYSTEMIC_STATUS = frozenset({401, 403, 404})
MAX_BACKOFF_S = 30.0
MAX_RETRY_AFTER_S = 60.0
RETRY_MIN_TEMPERATURE = 0.7
CACHE_VERSION = 1
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})


class LLMError(RuntimeError):
    """A systemic LLM failure (key refused, model or URL unknown): stop the shard, do not reject rows."""


class _Unavailable(Exception):
    """Transport retries ran out."""

    def __init__(self, detail: str, sent: int):
        super().__init__(detail)
        self.sent = sent


class _BadRequest(Exception):
    """The server refused the request itself (4xx that retrying cannot fix)."""

    def __init__(self, detail: str, sent: int):
        super().__init__(detail)
        self.sent = sent


@dataclass
class JsonResult:
    """Outcome of one JSON request; ``error`` is None on success, else a reason code."""

    value: dict | None
    error: str | None
    detail: str = ""
    tokens_in: int = 0
    tokens_out: int = 0
    cached: bool = False
    attempts: int = 0  # HTTP requests made for this result (0 on a cache hit)

    @property
    def ok(self) -> bool:
        return self.error is None


def request_key(
    model: str, messages: list[dict], schema: dict, max_tokens: int, temperature: float, seed: int
) -> str:
    """sha256 of everything that determines a reply; the cache file name."""
    blob = json.dumps(
        {
            "model": model,
            "messages": messages,
            "schema": schema,
            "max_tokens": max_tokens,
            "temperature": temperature,
            "seed": seed,
        },
        sort_keys=True,
        ensure_ascii=False,
        separators=(",", ":"),
    )
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def response_format(schema: dict, mode: str, name: str = "reply") -> dict:
    """The ``response_format`` body of a request for a JSON object that follows ``schema``."""
    if mode == "json_schema":  # OpenAI / vLLM
        return {"type": "json_schema", "json_schema": {"name": name, "schema": schema, "strict": True}}
    if mode == "json_object_schema":  # llama.cpp (llama-cpp-python) grammar-constrained JSON
        return {"type": "json_object", "schema": schema}
    raise ValueError(f"structured_output {mode!r}: expected one of {STRUCTURED_OUTPUT_MODES}")


def _usage(resp: Any) -> tuple[int, int, int]:
    """(prompt, completion, cached prompt) tokens of a reply; the cached ones are the prompt prefix
    the server took from its cache (llama.cpp and vLLM report them)."""
    usage = getattr(resp, "usage", None)
    details = getattr(usage, "prompt_tokens_details", None)
    return (
        int(getattr(usage, "prompt_tokens", 0) or 0),
        int(getattr(usage, "completion_tokens", 0) or 0),
        int(getattr(details, "cached_tokens", 0) or 0),
    )


# --- schema checks -----------------------------------------------------------------------------


def check_schema(value: Any, schema: dict) -> None:
    """Raise ValueError naming the first place where ``value`` breaks ``schema``."""
    try:
        import jsonschema
    except ImportError:  # jsonschema comes with ray; keep a small check for lean installs
        _small_check(value, schema, "$")
        return
    validator_cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    error = jsonschema.exceptions.best_match(validator_cls(schema).iter_errors(value))
    if error is not None:
        where = "$" + "".join(f"[{p!r}]" for p in error.absolute_path)
        raise ValueError(f"schema: {where}: {error.message[:300]}")


_TYPES: dict[str, Callable[[Any], bool]] = {
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "boolean": lambda v: isinstance(v, bool),
    "null": lambda v: v is None,
}


def _small_check(value: Any, schema: dict, where: str) -> None:
    """The subset of JSON Schema our task schemas use: type, required, properties, items, sizes, enum, pattern."""
    types = schema.get("type")
    if types is not None:
        names = [types] if isinstance(types, str) else list(types)
        if not any(_TYPES[t](value) for t in names if t in _TYPES):
            raise ValueError(f"schema: {where}: expected {'/'.join(names)}, got {type(value).__name__}")
    if "const" in schema and value != schema["const"]:
        raise ValueError(f"schema: {where}: expected {schema['const']!r}")
    if "enum" in schema and value not in schema["enum"]:
        raise ValueError(f"schema: {where}: {value!r} is not one of {schema['enum']}")
    if isinstance(value, dict):
        props = schema.get("properties", {})
        for key in schema.get("required", []):
            if key not in value:
                raise ValueError(f"schema: {where}: missing required key {key!r}")
        if schema.get("additionalProperties") is False:
            extra = sorted(set(value) - set(props))
            if extra:
                raise ValueError(f"schema: {where}: unexpected keys {extra}")
        for key, sub in props.items():
            if key in value:
                _small_check(value[key], sub, f"{where}[{key!r}]")
    if isinstance(value, list):
        if "minItems" in schema and len(value) < schema["minItems"]:
            raise ValueError(f"schema: {where}: {len(value)} items, expected at least {schema['minItems']}")
        if "maxItems" in schema and len(value) > schema["maxItems"]:
            raise ValueError(f"schema: {where}: {len(value)} items, expected at most {schema['maxItems']}")
        if isinstance(schema.get("items"), dict):
            for i, item in enumerate(value):
                _small_check(item, schema["items"], f"{where}[{i}]")
    if isinstance(value, str):
        if "pattern" in schema and not re.search(schema["pattern"], value):
            raise ValueError(f"schema: {where}: does not match {schema['pattern']!r}")
        if "minLength" in schema and len(value) < schema["minLength"]:
            raise ValueError(f"schema: {where}: shorter than {schema['minLength']}")
        if "maxLength" in schema and len(value) > schema["maxLength"]:
            raise ValueError(f"schema: {where}: longer than {schema['maxLength']}")


def parse_reply(content: str | None, finish_reason: str | None, schema: dict) -> dict:
    """The JSON object in a reply, or ValueError saying why it is not usable."""
    if finish_reason == "length":
        raise ValueError("reply cut at max_tokens (finish_reason=length)")
    if content is None or not content.strip():
        raise ValueError("empty reply")
    text = content.strip()
    if text.startswith("```"):  # some servers wrap JSON in a fence even in JSON mode
        text = text.strip("`").removeprefix("json").strip()
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"not JSON: {e.msg} at char {e.pos}") from None
    if not isinstance(value, dict):
        raise ValueError(f"not a JSON object: {type(value).__name__}")
    check_schema(value, schema)
    return value


# --- the client --------------------------------------------------------------------------------


class _LoopState:
    """Clients and slots bound to one event loop (httpx connection pools cannot cross loops)."""

    def __init__(self, clients: list[Any], concurrency: int):
        self.clients = clients
        self.slots = asyncio.Semaphore(concurrency * len(clients))
        self.in_flight = [0] * len(clients)
        self.model_lock = asyncio.Lock()
        self.families: dict[str, asyncio.Semaphore] = {}  # prompt prefix -> requests of it in flight


class LLMClient:
    """JSON completions from OpenAI-compatible endpoints; see the module docstring for the error contract.

    ``concurrency`` is per endpoint. A llama.cpp server answers one request at a time and the time a
    request waits in its queue counts against ``timeout_s``, so give it concurrency 1 (or 2 to keep
    it busy); vLLM batches, so give it tens. Requests that share a prompt prefix (same task and
    language) in a row let llama.cpp reuse its KV cache: submit them grouped.

    ``prefix_concurrency`` bounds the requests of one prompt family (every message but the last)
    that are in flight at once; None leaves them unbounded. llama.cpp's server hands a cached prefix
    to one slot at a time, so family members started together each evaluate the whole prompt; one
    at a time, each finds the prefix its predecessor left (``make demo``: 6 whole-prompt reads
    instead of 20, 44 % fewer prompt tokens evaluated; bench/README.md). The re-asks of a request
    stay inside its turn.
    """

    def __init__(
        self,
        endpoints: list[str],
        *,
        api_key: str,
        model: str,
        concurrency: int = 4,
        timeout_s: float = 120,
        max_retries: int = 4,
        structured_output: str = "json_schema",
        cache_dir: Path | None = None,
        backoff_base_s: float = 0.5,
        prefix_concurrency: int | None = None,
    ):
        if not endpoints:
            raise ValueError("LLMClient needs at least one endpoint (a base URL ending in /v1)")
        if structured_output not in STRUCTURED_OUTPUT_MODES:
            raise ValueError(
                f"structured_output {structured_output!r}: expected one of {STRUCTURED_OUTPUT_MODES}"
            )
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        if prefix_concurrency is not None and prefix_concurrency < 1:
            raise ValueError("prefix_concurrency must be at least 1 (or None for no bound)")
        self.prefix_concurrency = prefix_concurrency
        self.endpoints = [e.rstrip("/") for e in endpoints]
        # the openai client insists on a key; servers without auth ignore it
        self._api_key = api_key or "none"
        self.model = model
        self.concurrency = concurrency
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.structured_output = structured_output
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.backoff_base_s = backoff_base_s
        self._rr = 0
        self._rng = random.Random()
        # one set of clients per event loop: complete_json_many may run in several threads at once
        self._states: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopState] = (
            weakref.WeakKeyDictionary()
        )
        self._states_lock = threading.Lock()
        self._stats_lock = threading.Lock()
        self.stats: dict[str, Any] = {
            "requests": 0,  # complete_json calls
            "http_requests": 0,  # chat completion requests sent
            "cache_hits": 0,
            "retries": 0,  # transport retries (429/5xx/timeouts/connection)
            "invalid_retries": 0,  # re-asks after an invalid reply
            "tokens_in": 0,
            "tokens_cached": 0,  # prompt tokens the server took from its prefix cache
            "tokens_out": 0,
            "errors": {},  # final error code -> count
            "transient": {},  # kind of transient failure (http_503, timeout, ...) -> count
        }

    def __repr__(self) -> str:  # no key here, ever
        return (
            f"LLMClient(endpoints={self.endpoints!r}, model={self.model!r}, concurrency={self.concurrency})"
        )

    # -- plumbing ----------------------------------------------------------------------------
    def _count(self, name: str, n: int = 1, *, bucket: str | None = None) -> None:
        with self._stats_lock:
            if bucket is None:
                self.stats[name] += n
            else:
                self.stats[bucket][name] = self.stats[bucket].get(name, 0) + n

    def _loop_state(self) -> _LoopState:
        loop = asyncio.get_running_loop()
        with self._states_lock:
            state = self._states.get(loop)
        if state is None:
            try:
                import openai
            except ImportError as e:  # a core dependency; say how to fix it in one line
                raise ImportError("the LLM client needs `openai`: pip install 'openai>=1.40'") from e
            clients = []
            for url in self.endpoints:
                host = urlsplit(url).hostname or ""
                http_client = (
                    openai.DefaultAsyncHttpxClient(trust_env=False) if host in LOOPBACK_HOSTS else None
                )  # a proxy from the environment must never see loopback traffic
                clients.append(
                    openai.AsyncOpenAI(
                        base_url=url,
                        api_key=self._api_key,
                        timeout=self.timeout_s,
                        max_retries=0,
                        http_client=http_client,
                    )
                )
            state = _LoopState(clients, self.concurrency)
            with self._states_lock:
                self._states[loop] = state
        return state

    @contextlib.asynccontextmanager
    async def _slot(self) -> AsyncIterator[int]:
        """A request slot on the next endpoint in round robin that has one free."""
        state = self._loop_state()
        await state.slots.acquire()
        n = len(state.clients)
        for k in range(n):  # the global semaphore guarantees one endpoint has room
            idx = (self._rr + k) % n
            if state.in_flight[idx] < self.concurrency:
                break
        self._rr = (idx + 1) % n
        state.in_flight[idx] += 1
        try:
            yield idx
        finally:
            state.in_flight[idx] -= 1
            state.slots.release()

    @contextlib.asynccontextmanager
    async def _family_turn(self, messages: list[dict]) -> AsyncIterator[None]:
        """Wait for a turn of the request's prompt family (``prefix_concurrency``)."""
        if self.prefix_concurrency is None:
            yield
            return
        state = self._loop_state()
        key = _prefix_key({"messages": messages})
        gate = state.families.get(key)
        if gate is None:
            gate = state.families[key] = asyncio.Semaphore(self.prefix_concurrency)
        async with gate:
            yield

    async def aclose(self) -> None:
        """Close the connection pools of the current event loop."""
        with self._states_lock:
            state = self._states.pop(asyncio.get_running_loop(), None)
        if state is not None:
            for c in state.clients:
                with contextlib.suppress(Exception):
                    await c.close()

    async def resolve_model(self) -> str:
        """The model name; 'auto' asks the first endpoint for the first model it serves."""
        if self.model != "auto":
            return self.model
        state = self._loop_state()
        async with state.model_lock:
            if self.model == "auto":
                import openai

                try:
                    page = await state.clients[0].models.list()
                except openai.APIStatusError as e:
                    raise LLMError(
                        f"{self.endpoints[0]}: GET /models answered HTTP {e.status_code}"
                    ) from None
                except openai.APIConnectionError:
                    raise LLMError(f"{self.endpoints[0]}: cannot list models (connection failed)") from None
                ids = [m.id for m in page.data]
                if not ids:
                    raise LLMError(f"{self.endpoints[0]}: serves no model")
                self.model = ids[0]
        return self.model

    def _backoff_s(self, attempt: int, retry_after_s: float | None) -> float:
        delay = min(self.backoff_base_s * (2**attempt), MAX_BACKOFF_S) * self._rng.uniform(0.5, 1.5)
        if retry_after_s is not None:
            delay = max(delay, min(retry_after_s, MAX_RETRY_AFTER_S))
        return delay

    async def _chat(self, body: dict[str, Any]) -> tuple[Any, int]:
        """One chat completion with transport retries; returns (response, HTTP requests made)."""
        import openai

        detail = ""
        sent = 0
        for attempt in range(self.max_retries + 1):
            retry_after_s: float | None = None
            async with self._slot() as idx:
                url = self.endpoints[idx]
                sent += 1
                self._count("http_requests")
                try:
                    resp = await self._loop_state().clients[idx].chat.completions.create(**body)
                    if not getattr(resp, "choices", None):
                        raise _BadBody("no choices in the response")
                    return resp, sent
                except openai.APIStatusError as e:
                    status = e.status_code
                    if status in SYSTEMIC_STATUS:
                        what = "the API key was refused" if status in (401, 403) else "unknown model or URL"
                        raise LLMError(f"{url}: HTTP {status} ({what}); model={body['model']!r}") from None
                    if status not in RETRYABLE_STATUS and status < 500:
                        raise _BadRequest(f"{url}: HTTP {status}: {_error_message(e)}", sent) from None
                    kind = f"http_{status}"
                    detail = f"{url}: HTTP {status}: {_error_message(e)}"
                    retry_after_s = _retry_after_s(e)
                except openai.APITimeoutError:
                    kind, detail = "timeout", f"{url}: no answer within {self.timeout_s:g} s"
                except openai.APIConnectionError as e:
                    kind, detail = "connection", f"{url}: connection failed ({type(e.__cause__).__name__})"
                except (openai.APIResponseValidationError, _BadBody, ValueError) as e:
                    # ValueError: JSONDecodeError, and UnicodeDecodeError when a garbage body
                    # makes the JSON decoder guess a UTF-16/32 encoding
                    kind, detail = "bad_response", f"{url}: unreadable response ({type(e).__name__})"
            self._count(kind, bucket="transient")
            log.debug("LLM transient failure %s (attempt %d)", self._redact(detail), attempt + 1)
            if attempt < self.max_retries:
                self._count("retries")
                await asyncio.sleep(self._backoff_s(attempt, retry_after_s))
        raise _Unavailable(f"{detail} (after {sent} attempts)", sent)

    # -- public API ----------------------------------------------------------------------------
    async def complete_json(
        self,
        messages: list[dict],
        schema: dict,
        *,
        max_tokens: int,
        temperature: float = 0.2,
        seed: int = 0,
        validate: Callable[[dict], None] | None = None,
        invalid_retries: int = 2,
    ) -> JsonResult:
        """Ask for a JSON object following ``schema``; never raises for a per-row problem.

        ``validate(value)`` may raise ValueError with a reason to reject a reply that follows the
        schema but is still unusable (wrong turn count, markdown left, …); that counts as invalid.
        Re-asks use another seed and at least temperature 0.7, so greedy decoding does not repeat
        the same mistake. On a cache hit tokens and attempts are 0 (nothing was spent).
        """
        self._count("requests")
        model = await self.resolve_model()
        key = request_key(model, messages, schema, max_tokens, temperature, seed)
        cached = self._cache_get(key, schema, validate)
        if cached is not None:
            self._count("cache_hits")
            return JsonResult(value=cached, error=None, detail="", cached=True)

        async with self._family_turn(messages):
            tokens_in = tokens_out = attempts = 0
            detail = ""
            for ask in range(invalid_retries + 1):
                body: dict[str, Any] = {
                    "model": model,
                    "messages": messages,
                    "max_tokens": max_tokens,
                    "temperature": temperature if ask == 0 else max(temperature, RETRY_MIN_TEMPERATURE),
                    "seed": seed if ask == 0 else seed + 7919 * ask,
                    "response_format": response_format(schema, self.structured_output),
                }
                try:
                    resp, sent = await self._chat(body)
                except _Unavailable as e:
                    return self._fail("llm_unavailable", str(e), tokens_in, tokens_out, attempts + e.sent)
                except _BadRequest as e:
                    return self._fail("llm_bad_request", str(e), tokens_in, tokens_out, attempts + e.sent)
                attempts += sent
                t_in, t_out, t_cached = _usage(resp)
                tokens_in, tokens_out = tokens_in + t_in, tokens_out + t_out
                self._count("tokens_in", t_in)
                self._count("tokens_cached", t_cached)
                self._count("tokens_out", t_out)
                choice = resp.choices[0]
                content = getattr(choice.message, "content", None)
                try:
                    value = parse_reply(content, choice.finish_reason, schema)
                    if validate is not None:
                        validate(value)
                except ValueError as e:
                    detail = f"{e}"[:500]
                    if ask < invalid_retries:
                        self._count("invalid_retries")
                    continue
                # file I/O in a worker thread: the event loop keeps the other requests moving
                await asyncio.to_thread(self._cache_put, key, value, tokens_in, tokens_out, attempts)
                return JsonResult(
                    value=value,
                    error=None,
                    detail="",
                    tokens_in=tokens_in,
                    tokens_out=tokens_out,
                    cached=False,
                    attempts=attempts,
                )
            return self._fail(
                "llm_invalid_output",
                f"{detail} (after {invalid_retries + 1} replies)",
                tokens_in,
                tokens_out,
                attempts,
            )

    def complete_json_many(self, requests: list[dict]) -> list[JsonResult]:
        """Run many ``complete_json`` calls (kwargs dicts) with bounded concurrency; order is kept.

        Requests are sent grouped by their prompt prefix (all messages but the last), so a server
        with a prefix cache (llama.cpp keeps the previous prompt's KV) skips re-reading the shared
        system prompt and example; results still come back in the order of ``requests``.
        """
        results: list[JsonResult | None] = [None] * len(requests)

        async def one(i: int) -> None:
            results[i] = await self.complete_json(**requests[i])

        async def run_all() -> None:
            try:  # tasks start in list order, so slots are taken in this order
                await asyncio.gather(
                    *(one(i) for i in sorted(range(len(requests)), key=lambda i: _prefix_key(requests[i])))
                )
            finally:
                await self.aclose()

        run_sync(run_all)
        done = [r for r in results if r is not None]
        if len(done) != len(requests):  # gather either fills every slot or raises
            raise RuntimeError("complete_json_many: a request ended without a result")
        return done

    # -- results and cache ----------------------------------------------------------------------
    def _fail(self, code: str, detail: str, tokens_in: int, tokens_out: int, attempts: int) -> JsonResult:
        self._count(code, bucket="errors")
        return JsonResult(
            value=None,
            error=code,
            detail=self._redact(detail),
            tokens_in=tokens_in,
            tokens_out=tokens_out,
            cached=False,
            attempts=attempts,
        )

    def _redact(self, text: str) -> str:
        """Details come from servers; make sure none of them can carry the key onwards."""
        return text.replace(self._api_key, "***") if len(self._api_key) >= 4 else text

    def _cache_path(self, key: str) -> Path | None:
        return None if self.cache_dir is None else self.cache_dir / key[:2] / f"{key}.json"

    def _cache_get(self, key: str, schema: dict, validate: Callable[[dict], None] | None) -> dict | None:
        path = self._cache_path(key)
        if path is None:
            return None
        entry = read_json(path)
        if not isinstance(entry, dict) or entry.get("key") != key or not isinstance(entry.get("value"), dict):
            return None
        try:  # the checks may have become stricter since the entry was written
            check_schema(entry["value"], schema)
            if validate is not None:
                validate(entry["value"])
        except ValueError:
            return None
        return entry["value"]

    def _cache_put(self, key: str, value: dict, tokens_in: int, tokens_out: int, attempts: int) -> None:
        path = self._cache_path(key)
        if path is not None:
            entry = {
                "version": CACHE_VERSION,
                "key": key,
                "model": self.model,
                "value": value,
                "tokens_in": tokens_in,
                "tokens_out": tokens_out,
                "attempts": attempts,
            }
            _write_cache_file(path, json.dumps(entry, ensure_ascii=False).encode("utf-8"))


def _write_cache_file(path: Path, data: bytes) -> None:
    """Write to a temporary name and rename: a reader sees the old file or the whole new one.

    No fsync: an entry lost to a power cut is only asked again (an empty or torn file reads as a
    miss), and fsyncing every reply cost a fifth of the stage's time at 32 open requests.
    """
    tmp = path.with_name(f"{TMP_PREFIX}{path.name}.{os.getpid()}.{threading.get_ident()}")
    try:
        try:
            tmp.write_bytes(data)
        except FileNotFoundError:  # first entry of its folder
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


class _BadBody(Exception):
    """A 200 response without the parts of a chat completion."""


def _prefix_key(request: dict) -> str:
    """Hash of everything before the last message: requests sharing it share a cacheable prefix."""
    head = request.get("messages", [])[:-1]
    return hashlib.sha1(json.dumps(head, sort_keys=True, ensure_ascii=False).encode("utf-8")).hexdigest()


def _error_message(e: Any) -> str:
    """The server's own error message (openai puts the ``error`` object of the body in ``e.body``)."""
    body = getattr(e, "body", None)
    if isinstance(body, dict):
        inner = body["error"] if isinstance(body.get("error"), dict) else body
        msg = inner.get("message") or inner.get("detail")
        if msg:
            return str(msg)[:300]
    return type(e).__name__


def _retry_after_s(e: Any) -> float | None:
    response = getattr(e, "response", None)
    value = response.headers.get("retry-after") if response is not None else None
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def run_sync(make: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run a coroutine to completion from sync code, also when the caller already runs a loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(make())
    with ThreadPoolExecutor(max_workers=1) as pool:  # cannot nest loops: use a fresh one in a thread
        return pool.submit(lambda: asyncio.run(make())).result()
