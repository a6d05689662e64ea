"""Output tokens/s through the rewrite stage vs plain loads on the same server, in the same run.

    python bench/llm_throughput.py                      # embedded llama.cpp server, 6 dialogues
    python bench/llm_throughput.py --server fake        # loopback fake with vLLM-like latency, 256 requests
    python bench/llm_throughput.py --server URL --model M --api-key-env VLLM_API_KEY --concurrency 64

Three ways to send the same rewrite requests (same messages, JSON schema, max_tokens, temperature,
seed) to the same server, one after another:

- ``stage``: ``RewriteStage.process`` on a table of the dialogues (rules, our async client with
  bounded concurrency, schema and reply checks, re-asks, the on-disk cache in a fresh directory);
- ``plain``: ``openai.AsyncOpenAI`` with a semaphore of the same concurrency, nothing else (the
  best a hand-written concurrent script gets);
- ``sequential``: the sync ``openai`` client, one request at a time (what a simple loop does).

Figures: generated tokens per second of wall time; ratios stage/plain (goal >= 0.9) and
stage/sequential. On the managed llama.cpp server the stage keeps one request per prompt family
in flight (``llm.prefix_concurrency``: the server's cached prefix serves one slot at a time), the
plain way sends them all at once; on 2 cores batched decoding itself gains little, so most of what
separates the ways is how often a prompt is read again. The generated lengths differ between the
ways (batching is not bit-for-bit repeatable), which moves tok/s by tens of percent from run to
run. ``--server fake`` answers after a fixed delay no matter how many requests are open (as a
batching vLLM server does up to its batch size), which measures what our client costs at high
concurrency.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import REPO, SAMPLE_DATA, machine, report

sys.path.insert(0, str(REPO / "tests"))  # the loopback fake server lives with the tests


def sample_rows(n: int, max_chars: int) -> list[dict]:
    """n short dialogues from the shared Alpaca files (half zh, half en) that pass the rules."""
    from kespeechchat.config import FilterConfig, SourceConfig
    from kespeechchat.ingest import ingest_sources
    from kespeechchat.rules import check_dialogue

    text = SAMPLE_DATA / "text"
    n_zh = n // 2
    sources = [
        SourceConfig(
            path=str(text / "zh_llamafactory_alpaca_zh_demo.json"),
            limit=4 * n,
            max_chars=max_chars,
            languages=["zh"],
        ),
        SourceConfig(
            path=str(text / "en_llamafactory_alpaca_en_demo.json"),
            limit=4 * n,
            max_chars=max_chars,
            languages=["en"],
        ),
    ]
    rows, _, _ = ingest_sources(sources, 0)
    ok = [
        r
        for r in rows
        if check_dialogue(r["roles"], r["source_texts"], r["language"], FilterConfig()) is None
    ]
    zh = [r for r in ok if r["language"] == "zh"][:n_zh]
    en = [r for r in ok if r["language"] == "en"][: n - n_zh]
    return zh + en


def synthetic_rows(n: int) -> list[dict]:
    """n distinct small dialogues for the fake server (its latency does not depend on the text)."""
    return [
        {
            "dialogue_id": f"d-{i:016x}",
            "source_file": "synthetic",
            "source_index": i,
            "source_format": "alpaca",
            "language": "en",
            "roles": ["user", "assistant"],
            "source_texts": [
                f"Question number {i}: what is a good breakfast?",
                f"Oats with fruit are a good start, {i}.",
            ],
        }
        for i in range(n)
    ]


def bodies(rows: list[dict], cfg: Any, model: str, mode: str) -> list[dict]:
    """The exact chat-completion bodies the stage sends on a first ask."""
    from kespeechchat.llm.client import response_format
    from kespeechchat.llm.tasks import SPOKEN_TEXT_PATTERN, rewrite_request

    out = []
    for r in rows:
        req = rewrite_request(
            r["roles"], r["source_texts"], r["language"], cfg.rewrite, text_pattern=SPOKEN_TEXT_PATTERN
        )
        out.append(
            {
                "model": model,
                "messages": req["messages"],
                "max_tokens": req["max_tokens"],
                "temperature": cfg.llm.temperature,
                "seed": cfg.seed,
                "response_format": response_format(req["schema"], mode),
            }
        )
    return out


def run_stage(
    rows: list[dict],
    cfg: Any,
    endpoint: str,
    key: str,
    model: str,
    mode: str,
    warmup: list[dict] | None = None,
) -> tuple[int, float]:
    from kespeechchat.schema import table_from_rows
    from kespeechchat.stage import Runtime
    from pipelines.ingest import DIALOGUE_COLUMNS
    from pipelines.stages.rewrite import RewriteStage

    with tempfile.TemporaryDirectory(prefix="bench-llm-") as d:
        rt = Runtime(
            run_dir=Path(d),
            llm_endpoints=[endpoint],
            llm_api_key=key,
            llm_model=model,
            llm_structured_output=mode,
        )
        stage = RewriteStage(cfg, rt)
        stage.setup()
        if warmup:  # a worker's first shard loads the language-id model and imports; not timed
            stage.process(table_from_rows(warmup, DIALOGUE_COLUMNS), 0)
        table = table_from_rows(rows, DIALOGUE_COLUMNS)
        t0 = time.perf_counter()
        out = stage.process(table, 0)
        wall = time.perf_counter() - t0
    reasons = out.rejected.column("reject_reason").to_pylist()
    print(f"  stage: kept {out.kept.num_rows}/{len(rows)} {reasons or ''} metrics {out.metrics}", flush=True)
    return int(out.metrics.get("tokens_out", 0)), wall


# prompt tokens sent by the plain way, and taken from the server's cache
PROMPT_CACHE = {"prompt": 0, "cached": 0}


def run_plain(reqs: list[dict], endpoint: str, key: str, concurrency: int) -> tuple[int, float]:
    import openai

    async def main() -> tuple[int, float]:
        client = openai.AsyncOpenAI(
            base_url=endpoint,
            api_key=key,
            max_retries=0,
            timeout=600,
            http_client=openai.DefaultAsyncHttpxClient(trust_env=False),
        )
        sem = asyncio.Semaphore(concurrency)

        async def one(body: dict) -> int:
            async with sem:
                resp = await client.chat.completions.create(**body)
                details = getattr(resp.usage, "prompt_tokens_details", None)
                PROMPT_CACHE["prompt"] += int(resp.usage.prompt_tokens or 0)
                PROMPT_CACHE["cached"] += int(getattr(details, "cached_tokens", 0) or 0)
                return int(resp.usage.completion_tokens)

        t0 = time.perf_counter()
        toks = await asyncio.gather(*(one(b) for b in reqs))
        wall = time.perf_counter() - t0
        await client.close()
        return sum(toks), wall

    return asyncio.run(main())


def run_sequential(reqs: list[dict], endpoint: str, key: str) -> tuple[int, float]:
    import openai

    client = openai.OpenAI(
        base_url=endpoint,
        api_key=key,
        max_retries=0,
        timeout=600,
        http_client=openai.DefaultHttpxClient(trust_env=False),
    )
    t0 = time.perf_counter()
    toks = 0
    for body in reqs:
        toks += int(client.chat.completions.create(**body).usage.completion_tokens)
    wall = time.perf_counter() - t0
    client.close()
    return toks, wall


def fake_server(delay_s: float, tokens_out: int):
    """The loopback fake answering every request after ``delay_s``, whatever the concurrency."""
    from llm_fake import FakeOpenAIServer, FakeReply, dialogue_responder

    echo = dialogue_responder()

    def respond(body: dict) -> FakeReply:
        r = echo(body)
        r.delay_s, r.tokens_out = delay_s, tokens_out
        return r

    return FakeOpenAIServer(api_key="bench-key", responder=respond)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--server", default="embedded", help="'embedded' (managed llama.cpp), 'fake', or a base URL (…/v1)"
    )
    ap.add_argument("--n", type=int, default=None, help="requests per way (default: 6 embedded, 256 fake)")
    ap.add_argument(
        "--concurrency", type=int, default=None, help="open requests (default: 2 embedded, 32 fake)"
    )
    ap.add_argument("--model", default="default")
    ap.add_argument("--engine", default="auto", help="embedded server: auto, native (llama-server) or python")
    ap.add_argument("--api-key-env", default="OPENAI_API_KEY")
    ap.add_argument("--max-chars", type=int, default=220, help="longest sampled dialogue (embedded/URL)")
    ap.add_argument("--fake-delay-s", type=float, default=0.25)
    ap.add_argument("--order", default="sequential,plain,stage", help="order of the three ways")
    ap.add_argument(
        "--repeat", type=int, default=None, help="rounds of plain and stage (default: 1 embedded, 5 fake)"
    )
    args = ap.parse_args()

    from kespeechchat.config import load_config

    os.environ["NO_PROXY"] = "127.0.0.1,localhost"
    fake = args.server == "fake"
    n = args.n or (256 if fake else 6)
    conc = args.concurrency or (32 if fake else 4)
    repeat = args.repeat or (5 if fake else 1)
    cfg = load_config(REPO / "configs" / "demo.yaml")
    cfg.llm.concurrency = conc
    cfg.rewrite.max_tokens = 256
    cfg.llm.invalid_output_retries = 2
    rows = synthetic_rows(n + 1) if fake else sample_rows(n + 1, args.max_chars)
    rows, warmup = rows[:n], rows[n:]  # one more dialogue, not measured, warms the stage up

    server: Any = None
    if args.server == "embedded":
        from kespeechchat.llm.server import ManagedLlamaServer
        from kespeechchat.models import llm_gguf_path

        server = ManagedLlamaServer(
            llm_gguf_path(), n_ctx=cfg.llm.n_ctx, n_threads=cfg.llm.n_threads, slots=conc, engine=args.engine
        )
        server.start()
        mode = "json_object_schema"  # llama.cpp form, as the runner sends it (both engines take it)
        endpoint, key, model = server.base_url, server.api_key, server.model_name
        label = f"embedded llama.cpp, {server.engine} server, {server.slots} slot(s) (Qwen2.5-Coder-1.5B Q4)"
    elif fake:
        server = fake_server(args.fake_delay_s, 120).start()
        endpoint, key, model, mode = server.base_url, "bench-key", server.model, "json_schema"
        label = f"loopback fake, {args.fake_delay_s:g} s per request at any concurrency"
    else:
        endpoint, key, model, mode = (
            args.server,
            os.environ.get(args.api_key_env, "EMPTY"),
            args.model,
            "json_schema",
        )
        label = args.server
    # an endpoint we did not start: the stage treats it as one (no prompt-family bound)
    if args.server != "embedded":
        cfg.llm.backend, cfg.llm.endpoints = "openai", [endpoint]
    results: dict[str, tuple[int, float]] = {}
    try:
        reqs = bodies(rows, cfg, model, mode)
        if not fake:  # load the model weights and fill caches before anything is timed
            run_sequential(reqs[:1], endpoint, key)
        runs: dict[str, list[tuple[int, float]]] = {}
        for rnd in range(repeat):
            for way in args.order.split(","):
                if way == "sequential" and rnd > 0:
                    continue  # one request at a time is slow and steady: once is enough
                print(f"[{way}] {n} requests, concurrency {conc if way != 'sequential' else 1} …", flush=True)
                if way == "stage":
                    res = run_stage(rows, cfg, endpoint, key, model, mode, warmup)
                elif way == "plain":
                    res = run_plain(reqs, endpoint, key, conc)
                else:
                    res = run_sequential(reqs, endpoint, key)
                runs.setdefault(way, []).append(res)
                print(f"  {way}: {res[0]} tokens in {res[1]:.1f} s = {res[0] / res[1]:.1f} tok/s", flush=True)
        for way, rs in runs.items():  # the median round of each way (the machine is shared)
            results[way] = sorted(rs, key=lambda r: r[0] / r[1])[len(rs) // 2]
    finally:
        if server is not None:
            server.stop()

    rate = {k: t / w for k, (t, w) in results.items()}
    print(
        f"\n{machine()}; server: {label}; {n} rewrite requests; concurrency {conc}; median of {repeat} round(s)\n"
    )
    print("| way | output tokens | wall s | output tok/s | stage / way |")
    print("|---|---|---|---|---|")
    for k, (t, w) in results.items():
        vs = f"{rate['stage'] / rate[k]:.2f}" if "stage" in rate else "–"
        print(f"| {k} | {t} | {w:.1f} | {rate[k]:.1f} | {vs} |")
    short = "fake" if fake else ("llama.cpp" if args.server == "embedded" else "endpoint")
    if PROMPT_CACHE["prompt"]:
        hit = PROMPT_CACHE["cached"] / PROMPT_CACHE["prompt"]
        print(
            f"prompt-prefix cache: {PROMPT_CACHE['cached']} of {PROMPT_CACHE['prompt']} prompt tokens ({hit:.0%})"
        )
        report(f"prompt-prefix cache hit rate, plain load ({short})", hit, "share", note=label)
    if "stage" not in rate:
        return 0
    if "plain" in rate:
        report(
            f"LLM stage output tok/s vs plain concurrent load ({short})",
            rate["stage"],
            "tok/s",
            baseline=rate["plain"],
            ratio=rate["stage"] / rate["plain"],
            goal=">= 0.9",
            note=f"{n} requests, concurrency {conc}",
        )
    if "sequential" in rate:
        report(
            f"LLM stage output tok/s vs one request at a time ({short})",
            rate["stage"],
            "tok/s",
            baseline=rate["sequential"],
            ratio=rate["stage"] / rate["sequential"],
            note=f"{n} requests",
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
