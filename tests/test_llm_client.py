"""LLMClient against a loopback fake OpenAI server: request form, retries, validation, cache, concurrency."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path

import pytest
from llm_fake import FakeOpenAIServer, FakeReply, dialogue_responder

from kespeechchat.llm.client import JsonResult, LLMClient, LLMError, _small_check, check_schema, request_key

KEY = "sk-test-secret-0123456789"
SCHEMA = {
    "type": "object",
    "properties": {"answer": {"type": "string"}, "n": {"type": "integer"}},
    "required": ["answer", "n"],
    "additionalProperties": False,
}
MESSAGES = [{"role": "system", "content": "Reply in JSON."}, {"role": "user", "content": "hello"}]
GOOD = {"answer": "hi", "n": 1}


@pytest.fixture
def srv():
    with FakeOpenAIServer(api_key=KEY) as s:
        yield s


def make_client(*servers: FakeOpenAIServer, **kw) -> LLMClient:
    kw.setdefault("api_key", KEY)
    kw.setdefault("model", "fake-model")
    kw.setdefault("backoff_base_s", 0.01)
    kw.setdefault("timeout_s", 10)
    return LLMClient([s.base_url for s in servers], **kw)


def ask(client: LLMClient, **kw) -> JsonResult:
    req = {"messages": MESSAGES, "schema": SCHEMA, "max_tokens": 64, **kw}
    return client.complete_json_many([req])[0]


# --- request form ----------------------------------------------------------------------------------


def test_json_schema_form_and_request_fields(srv):
    srv.push(FakeReply.json_content(GOOD, tokens_in=11, tokens_out=7))
    res = ask(make_client(srv, structured_output="json_schema"), temperature=0.3, seed=5)
    assert res.ok and res.value == GOOD
    assert (res.tokens_in, res.tokens_out, res.attempts, res.cached) == (11, 7, 1, False)
    (req,) = srv.chat_requests()
    assert req.headers["authorization"] == f"Bearer {KEY}"
    body = req.body
    assert body["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "reply", "schema": SCHEMA, "strict": True},
    }
    assert (body["model"], body["messages"], body["max_tokens"], body["temperature"], body["seed"]) == (
        "fake-model",
        MESSAGES,
        64,
        0.3,
        5,
    )


def test_llama_cpp_form(srv):
    srv.push(FakeReply.json_content(GOOD))
    assert ask(make_client(srv, structured_output="json_object_schema")).ok
    assert srv.chat_requests()[0].body["response_format"] == {"type": "json_object", "schema": SCHEMA}


def test_unknown_structured_output_mode_is_refused(srv):
    with pytest.raises(ValueError, match="structured_output"):
        make_client(srv, structured_output="grammar")


def test_model_auto_asks_the_server(srv):
    srv.push(FakeReply.json_content(GOOD))
    client = make_client(srv, model="auto")
    assert ask(client).ok
    assert client.model == "fake-model"
    assert srv.chat_requests()[0].body["model"] == "fake-model"


# --- transport retries -------------------------------------------------------------------------------


def test_retries_5xx_429_and_dropped_connections(srv):
    srv.push(
        FakeReply.error(503),
        FakeReply.error(429, headers={"Retry-After": "0"}),
        FakeReply(drop_connection=True),
        FakeReply.error(502),
        FakeReply.json_content(GOOD),
    )
    client = make_client(srv, max_retries=4)
    res = ask(client)
    assert res.ok and res.value == GOOD
    assert res.attempts == 5
    assert len(srv.chat_requests()) == 5
    assert client.stats["retries"] == 4
    assert client.stats["transient"] == {"http_503": 1, "http_429": 1, "connection": 1, "http_502": 1}


def test_timeout_is_retried(srv):
    srv.push(FakeReply.json_content(GOOD, delay_s=5), FakeReply.json_content(GOOD))
    client = make_client(srv, timeout_s=0.5)
    res = ask(client)
    assert res.ok and res.attempts == 2
    assert client.stats["transient"] == {"timeout": 1}


def test_unreadable_body_is_retried(srv):
    srv.push(
        FakeReply(raw_body=b"<html>502 bad gateway</html>"),
        FakeReply(raw_body=b'{"foo": 1}'),
        FakeReply(raw_body=b"\x00\xffnot json"),  # the JSON decoder guesses UTF-16 and fails to decode
        FakeReply.json_content(GOOD),
    )
    client = make_client(srv)
    res = ask(client)
    assert res.ok and res.attempts == 4
    assert client.stats["transient"] == {"bad_response": 3}


def test_exhausted_retries_give_llm_unavailable(srv):
    srv.push(*[FakeReply.error(500, "engine overloaded") for _ in range(3)], FakeReply.json_content(GOOD))
    client = make_client(srv, max_retries=2)
    res = ask(client)
    assert res.error == "llm_unavailable" and res.value is None
    assert "HTTP 500" in res.detail and "engine overloaded" in res.detail
    assert res.attempts == 3 and len(srv.chat_requests()) == 3
    assert srv.pending == 1  # the fourth, valid reply was never asked for
    assert client.stats["errors"] == {"llm_unavailable": 1}


def test_bad_request_is_not_retried(srv):
    srv.push(FakeReply.error(400, "Requested tokens exceed context window"), FakeReply.json_content(GOOD))
    client = make_client(srv)
    res = ask(client)
    assert res.error == "llm_bad_request" and "context window" in res.detail
    assert len(srv.chat_requests()) == 1


def test_refused_key_is_systemic_and_never_leaks(srv):
    client = make_client(srv, api_key="sk-wrong-key-abcdef")
    with pytest.raises(LLMError, match="401") as info:
        ask(client)
    assert "sk-wrong-key-abcdef" not in str(info.value) and "sk-wrong-key-abcdef" not in repr(client)


def test_key_never_in_details_or_logs(srv, caplog):
    caplog.set_level(logging.DEBUG)
    srv.push(*[FakeReply.error(503, f"upstream saw Bearer {KEY}") for _ in range(2)])
    res = ask(make_client(srv, max_retries=1))
    assert res.error == "llm_unavailable"
    assert KEY not in res.detail and "***" in res.detail
    assert KEY not in caplog.text


# --- invalid replies -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad, reason",
    [
        (FakeReply(content="Sure! Here is the JSON you asked for."), "not JSON"),
        (FakeReply(content='{"answer": "hi", "n'), "not JSON"),
        (FakeReply.json_content(GOOD, finish_reason="length"), "max_tokens"),
        (FakeReply.json_content([GOOD]), "not a JSON object"),
        (FakeReply.json_content({"answer": "hi"}), "n"),
        (FakeReply.json_content({"answer": "hi", "n": "one"}), "integer"),
        (FakeReply(content=""), "empty"),
    ],
)
def test_invalid_reply_is_reasked_with_a_new_seed(srv, bad, reason):
    srv.push(bad, FakeReply.json_content(GOOD))
    client = make_client(srv)
    res = ask(client, seed=3, temperature=0.0)
    assert res.ok and res.value == GOOD and res.attempts == 2
    first, second = (r.body for r in srv.chat_requests())
    assert first["seed"] == 3 and second["seed"] != 3
    assert first["temperature"] == 0.0 and second["temperature"] >= 0.7
    assert client.stats["invalid_retries"] == 1


def test_invalid_replies_run_out(srv):
    srv.push(*[FakeReply(content="not json") for _ in range(3)])
    client = make_client(srv)
    res = ask(client, invalid_retries=2)
    assert res.error == "llm_invalid_output" and "not JSON" in res.detail
    assert res.attempts == 3 and len({r.body["seed"] for r in srv.chat_requests()}) == 3
    assert client.stats["errors"] == {"llm_invalid_output": 1}


def test_validate_rejects_and_reasks(srv):
    srv.push(FakeReply.json_content({"answer": "", "n": 1}), FakeReply.json_content(GOOD))

    def validate(v: dict) -> None:
        if not v["answer"]:
            raise ValueError("empty answer")

    res = ask(make_client(srv), validate=validate)
    assert res.ok and res.value == GOOD and res.attempts == 2


# --- cache ------------------------------------------------------------------------------------------------


def test_cache_hit_costs_no_request(srv, tmp_path: Path):
    srv.push(FakeReply.json_content(GOOD))
    res1 = ask(make_client(srv, cache_dir=tmp_path), seed=1)
    assert res1.ok and not res1.cached
    key = request_key("fake-model", MESSAGES, SCHEMA, 64, 0.2, 1)
    entry = json.loads((tmp_path / key[:2] / f"{key}.json").read_text())
    assert entry["value"] == GOOD and entry["key"] == key

    client2 = make_client(srv, cache_dir=tmp_path)  # a rerun: new client, same cache
    res2 = ask(client2, seed=1)
    assert res2.ok and res2.cached and res2.value == GOOD
    assert (res2.attempts, res2.tokens_in, res2.tokens_out) == (0, 0, 0)
    assert len(srv.chat_requests()) == 1
    assert client2.stats["cache_hits"] == 1 and client2.stats["http_requests"] == 0

    srv.push(FakeReply.json_content({"answer": "other", "n": 2}))
    res3 = ask(client2, seed=2)  # another seed is another request
    assert not res3.cached and res3.value == {"answer": "other", "n": 2}


def test_cache_keeps_only_valid_replies(srv, tmp_path: Path):
    srv.push(*[FakeReply(content="nope") for _ in range(3)])
    assert ask(make_client(srv, cache_dir=tmp_path)).error == "llm_invalid_output"
    assert not list(tmp_path.rglob("*.json"))


def test_cached_reply_failing_a_stricter_validate_is_asked_again(srv, tmp_path: Path):
    srv.push(FakeReply.json_content(GOOD), FakeReply.json_content({"answer": "long answer", "n": 1}))
    assert ask(make_client(srv, cache_dir=tmp_path)).ok

    def validate(v: dict) -> None:
        if len(v["answer"]) < 5:
            raise ValueError("too short")

    res = ask(make_client(srv, cache_dir=tmp_path), validate=validate)
    assert not res.cached and res.value["answer"] == "long answer"
    assert len(srv.chat_requests()) == 2


# --- concurrency, round robin, order --------------------------------------------------------------------------


def _numbered_requests(n: int) -> list[dict]:
    return [
        {"messages": [{"role": "user", "content": f"item {i}"}], "schema": SCHEMA, "max_tokens": 16}
        for i in range(n)
    ]


def _echo_number(delay_s: float):
    def respond(body: dict) -> FakeReply:
        i = int(body["messages"][-1]["content"].split()[-1])
        return FakeReply.json_content({"answer": f"item {i}", "n": i}, delay_s=delay_s)

    return respond


def test_round_robin_bounded_concurrency_and_order():
    with (
        FakeOpenAIServer(api_key=KEY, responder=_echo_number(0.3)) as a,
        FakeOpenAIServer(api_key=KEY, responder=_echo_number(0.3)) as b,
    ):
        client = make_client(a, b, concurrency=2)
        results = client.complete_json_many(_numbered_requests(12))
        assert [r.value["n"] for r in results] == list(range(12))
        assert len(a.chat_requests()) == 6 and len(b.chat_requests()) == 6
        assert a.max_in_flight == 2 and b.max_in_flight == 2  # the bound is reached and never passed
        assert client.stats["requests"] == 12 and client.stats["http_requests"] == 12


def test_requests_are_sent_grouped_by_prompt_prefix(srv):
    srv.responder = _echo_number(0.0)
    requests = []
    for i in range(6):  # alternating system prompts, as a shard mixing zh and en dialogues would
        system = {"role": "system", "content": "prompt A" if i % 2 == 0 else "prompt B"}
        requests.append(
            {
                "messages": [system, {"role": "user", "content": f"item {i}"}],
                "schema": SCHEMA,
                "max_tokens": 16,
            }
        )
    results = make_client(srv, concurrency=1).complete_json_many(requests)
    assert [r.value["n"] for r in results] == list(range(6))  # results in request order
    systems = [r.body["messages"][0]["content"] for r in srv.chat_requests()]
    assert systems in (["prompt A"] * 3 + ["prompt B"] * 3, ["prompt B"] * 3 + ["prompt A"] * 3)
    firsts = [int(r.body["messages"][-1]["content"].split()[-1]) for r in srv.chat_requests()]
    assert [n for n in firsts if n % 2 == 0] == [0, 2, 4]  # stable within a group


def test_failover_to_a_healthy_endpoint():
    def always_down(body: dict) -> FakeReply:
        return FakeReply.error(503)

    with (
        FakeOpenAIServer(api_key=KEY, responder=always_down) as down,
        FakeOpenAIServer(api_key=KEY, responder=_echo_number(0.0)) as up,
    ):
        client = make_client(down, up, concurrency=1, max_retries=3)
        results = client.complete_json_many(_numbered_requests(6))
        assert all(r.ok for r in results)
        assert [r.value["n"] for r in results] == list(range(6))
        assert len(down.chat_requests()) >= 1 and len(up.chat_requests()) == 6


def test_many_from_inside_a_running_loop(srv):
    srv.responder = _echo_number(0.0)
    client = make_client(srv)

    async def caller() -> list[JsonResult]:
        return client.complete_json_many(_numbered_requests(3))

    results = asyncio.run(caller())
    assert [r.value["n"] for r in results] == [0, 1, 2]


def test_one_client_used_from_two_threads(srv):
    from concurrent.futures import ThreadPoolExecutor

    srv.responder = _echo_number(0.1)
    client = make_client(srv, concurrency=2)
    with ThreadPoolExecutor(max_workers=2) as pool:
        a, b = pool.map(client.complete_json_many, [_numbered_requests(4), _numbered_requests(4)[::-1]])
    assert [r.value["n"] for r in a] == [0, 1, 2, 3] and [r.value["n"] for r in b] == [3, 2, 1, 0]
    assert client.stats["requests"] == 8


def test_async_api_and_dialogue_responder(srv):
    from kespeechchat.config import RewriteConfig
    from kespeechchat.llm.tasks import parse_rewrite, rewrite_request

    srv.responder = dialogue_responder(lambda role, text: text.upper())
    roles, texts = ["user", "assistant"], ["what is tea?", "a drink."]
    req = rewrite_request(roles, texts, "en", RewriteConfig())

    async def run() -> JsonResult:
        client = make_client(srv)
        try:
            return await client.complete_json(
                **req, validate=lambda v: parse_rewrite(v, roles, language="en")
            )
        finally:
            await client.aclose()

    res = asyncio.run(run())
    assert parse_rewrite(res.value, roles) == ["WHAT IS TEA?", "A DRINK."]


# --- schema checks -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value, ok",
    [
        (GOOD, True),
        ({"answer": "x"}, False),
        ({"answer": "x", "n": 1, "extra": 0}, False),
        ({"answer": 1, "n": 1}, False),
        ({"answer": "x", "n": True}, False),
        ({"answer": "x", "n": 1.5}, False),
    ],
)
def test_small_check_agrees_with_jsonschema(value, ok):
    def outcome(fn) -> bool:
        try:
            fn()
            return True
        except ValueError:
            return False

    assert outcome(lambda: check_schema(value, SCHEMA)) is ok
    assert outcome(lambda: _small_check(value, SCHEMA, "$")) is ok


def test_small_check_arrays_and_enums():
    from kespeechchat.llm.tasks import turns_schema

    schema = turns_schema(2)
    good = {"turns": [{"role": "user", "text": "a"}, {"role": "assistant", "text": "b"}]}
    _small_check(good, schema, "$")
    for bad in (
        {"turns": good["turns"][:1]},
        {"turns": good["turns"] * 2},
        {"turns": [{"role": "robot", "text": "a"}, {"role": "assistant", "text": "b"}]},
        {"turns": [{"role": "user", "text": "a"}, {"role": "assistant", "text": "see https://x.org"}]},
    ):
        with pytest.raises(ValueError):
            _small_check(bad, schema, "$")
        with pytest.raises(ValueError):
            check_schema(bad, schema)


def _family_requests(n: int) -> list[dict]:
    return [
        {
            "messages": [
                {"role": "system", "content": "prompt A" if i % 2 == 0 else "prompt B"},
                {"role": "user", "content": f"item {i}"},
            ],
            "schema": SCHEMA,
            "max_tokens": 16,
        }
        for i in range(n)
    ]


class _FamilyCounter:
    """A responder that records how many requests of each system prompt were in flight at once."""

    def __init__(self, delay_s: float, invalid_first: frozenset[int] = frozenset()):
        import threading

        self.lock = threading.Lock()
        self.now: dict[str, int] = {}
        self.peak: dict[str, int] = {}
        self.delay_s = delay_s
        self.invalid_first = set(invalid_first)

    def __call__(self, body: dict) -> FakeReply:
        import time

        family = body["messages"][0]["content"]
        i = int(body["messages"][-1]["content"].split()[-1])
        with self.lock:
            self.now[family] = self.now.get(family, 0) + 1
            self.peak[family] = max(self.peak.get(family, 0), self.now[family])
            invalid = i in self.invalid_first
            self.invalid_first.discard(i)
        time.sleep(self.delay_s)  # the fake serves each request on its own thread
        with self.lock:
            self.now[family] -= 1
        if invalid:
            return FakeReply.json_content({"answer": "no number"})
        return FakeReply.json_content({"answer": f"item {i}", "n": i})


def test_prefix_concurrency_bounds_each_prompt_family_and_keeps_re_asks_in_the_turn(srv):
    counter = _FamilyCounter(0.15, invalid_first=frozenset({0}))
    srv.responder = counter
    client = make_client(srv, concurrency=4, prefix_concurrency=1)
    results = client.complete_json_many(_family_requests(8))
    assert [r.value["n"] for r in results] == list(range(8))
    assert counter.peak == {"prompt A": 1, "prompt B": 1}  # one per family, a re-ask included
    assert srv.max_in_flight == 2  # the two families still overlap
    assert client.stats["invalid_retries"] == 1 and client.stats["http_requests"] == 9


def test_without_prefix_concurrency_a_family_fills_the_endpoint(srv):
    counter = _FamilyCounter(0.15)
    srv.responder = counter
    results = make_client(srv, concurrency=4).complete_json_many(_family_requests(8))
    assert [r.value["n"] for r in results] == list(range(8))
    assert max(counter.peak.values()) > 1 and srv.max_in_flight == 4
    with pytest.raises(ValueError, match="prefix_concurrency"):
        make_client(srv, prefix_concurrency=0)
