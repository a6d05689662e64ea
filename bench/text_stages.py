"""The text side on the shared data: ingest + dedup + rule filters on everything, LLM stages on a sample.

    python bench/text_stages.py                       # LLM stages on 8 dialogues (4 zh, 4 en)
    python bench/text_stages.py --llm-sample 16 --json /tmp/text_stages.json --check /tmp/rule_check.md

1. ingest every file of ``<shared>/data/text`` with the run's dedup (exact + near-duplicates);
2. the rewrite stage's content rules (code, formulas, tables, URLs, tool calls, placeholders,
   emoji runs, turn counts and lengths, language) on every ingested dialogue;
3. ``--check FILE``: 50 random rule rejections and 50 random keeps, written out to be read by a
   person (are the rejections right? is anything unspeakable kept?);
4. rewrite -> filter -> spoken with the embedded LLM (a managed llama.cpp server on loopback, the
   demo config's LLM settings) on a deterministic sample of dialogues that passed the rules:
   the embedded model needs 5-30 s per call on 2 CPU cores, so all 2,777 dialogues would take
   many hours. The table says how many went in.

Prints a Markdown table (and ``BENCH`` lines for run_all.py); ``--json`` saves every number.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import time
from collections import Counter
from pathlib import Path
from typing import Any

from _common import REPO, SAMPLE_DATA, machine, report

TEXT_STAGES = ("rewrite", "filter", "spoken")


def ingest_all(data_dir: Path, cfg: Any) -> tuple[list[dict], list[Any], dict[str, Any]]:
    from kespeechchat.config import SourceConfig
    from kespeechchat.dedup import duplicate_kind
    from kespeechchat.ingest import ingest_sources
    from pipelines.ingest import make_deduper

    sources = [SourceConfig(path=str(p)) for p in sorted(data_dir.glob("*.json*"))]
    t0 = time.perf_counter()
    rows, rejects, stats = ingest_sources(sources, 0, make_deduper(cfg))
    wall = time.perf_counter() - t0
    reasons = Counter(r.reason for r in rejects)
    dup_kinds = Counter(duplicate_kind(r.detail) for r in rejects if r.reason == "duplicate")
    summary = {
        "files": [p.name for p in sorted(data_dir.glob("*.json*"))],
        "records": stats["totals"]["records"],
        "dialogues": len(rows),
        "rejected_by_reason": dict(reasons.most_common()),
        "duplicates_by_kind": dict(dup_kinds.most_common()),
        "languages": stats["totals"]["languages"],
        "wall_s": round(wall, 2),
    }
    return rows, rejects, summary


def rules_all(rows: list[dict], cfg: Any) -> tuple[list[dict], list[tuple[dict, Any]], dict[str, Any]]:
    from kespeechchat.rules import check_dialogue
    from pipelines.stages.rewrite import _PREFILTER_LIMITS

    prefilter = cfg.filter.model_copy(update=_PREFILTER_LIMITS)
    kept, rejected = [], []
    t0 = time.perf_counter()
    for r in rows:
        hit = check_dialogue(r["roles"], r["source_texts"], r["language"], prefilter)
        (kept.append(r) if hit is None else rejected.append((r, hit)))
    wall = time.perf_counter() - t0
    by_lang: dict[str, Counter] = {}
    for r, hit in rejected:
        by_lang.setdefault(hit.reason, Counter())[r["language"]] += 1
    reasons = Counter(hit.reason for _, hit in rejected)
    return (
        kept,
        rejected,
        {
            "in": len(rows),
            "kept": len(kept),
            "rejected_by_reason": dict(reasons.most_common()),
            "rejected_by_reason_and_language": {k: dict(v) for k, v in by_lang.items()},
            "wall_s": round(wall, 2),
            "ms_per_dialogue": round(1000 * wall / max(1, len(rows)), 3),
        },
    )


def _excerpt(texts: list[str], roles: list[str], limit: int = 700) -> str:
    out = []
    for role, text in zip(roles, texts, strict=True):
        t = text if len(text) <= limit else text[:limit] + f" … [{len(text)} chars]"
        out.append(f"**{role}**: " + t.replace("\n", "\n    "))
    return "\n\n".join(out)


def write_check(path: Path, kept: list[dict], rejected: list[tuple[dict, Any]], seed: int = 0) -> None:
    """50 random rejections and 50 random keeps, for a person to read and count."""
    rng = random.Random(seed)
    rej = rng.sample(rejected, min(50, len(rejected)))
    keep = rng.sample(kept, min(50, len(kept)))
    lines = [
        "# Rule filter hand check",
        "",
        f"{len(rej)} random rejections, then {len(keep)} random keeps.",
        "",
    ]
    for i, (r, hit) in enumerate(rej):
        lines += [
            f"## R{i + 1:02d} {hit.reason} — {r['source_file']}#{r['source_index']} ({r['language']})",
            "",
            f"detail: {hit.detail}",
            "",
            _excerpt(r["source_texts"], r["roles"]),
            "",
        ]
    for i, r in enumerate(keep):
        lines += [
            f"## K{i + 1:02d} kept — {r['source_file']}#{r['source_index']} ({r['language']})",
            "",
            _excerpt(r["source_texts"], r["roles"]),
            "",
        ]
    path.write_text("\n".join(lines), encoding="utf-8")


def llm_sample(kept: list[dict], n: int, seed: int = 0) -> list[dict]:
    """n dialogues that passed the rules, half zh and half en, chosen by a seeded hash of their id."""

    def key(r: dict) -> str:
        return hashlib.sha256(f"{seed}:{r['dialogue_id']}".encode()).hexdigest()

    zh = sorted((r for r in kept if r["language"] == "zh"), key=key)
    en = sorted((r for r in kept if r["language"] == "en"), key=key)
    n_zh = n // 2
    return zh[:n_zh] + en[: n - n_zh]


def run_llm_stages(rows: list[dict], cfg: Any, run_dir: Path) -> dict[str, Any]:
    from kespeechchat.llm.server import ManagedLlamaServer
    from kespeechchat.models import llm_gguf_path
    from kespeechchat.schema import table_from_rows
    from kespeechchat.stage import Runtime
    from pipelines.ingest import DIALOGUE_COLUMNS
    from pipelines.stages.filter import FilterStage
    from pipelines.stages.rewrite import RewriteStage
    from pipelines.stages.spoken import SpokenStage

    llm = cfg.llm
    server = ManagedLlamaServer(
        Path(llm.model_path) if llm.model_path else llm_gguf_path(),
        n_ctx=llm.n_ctx,
        n_threads=llm.n_threads,
        log_path=run_dir / "llama-server.log",
        start_timeout_s=llm.server_start_timeout_s,
    )
    results: dict[str, Any] = {"dialogues_in": len(rows), "stages": {}}
    t_all = time.perf_counter()
    with server:
        runtime = Runtime(
            run_dir=run_dir,
            llm_endpoints=[server.base_url],
            llm_api_key=server.api_key,
            llm_model=server.model_name,
            llm_structured_output="json_object_schema",
        )
        table = table_from_rows(rows, DIALOGUE_COLUMNS)
        samples: dict[str, list[dict]] = {}
        for cls in (RewriteStage, FilterStage, SpokenStage):
            stage = cls(cfg, runtime)
            stage.setup()
            t0 = time.perf_counter()
            out = stage.process(table, 0)
            wall = time.perf_counter() - t0
            stage.teardown()
            reasons = Counter(out.rejected.column("reject_reason").to_pylist())
            results["stages"][stage.name] = {
                "in": table.num_rows,
                "kept": out.kept.num_rows,
                "rejected_by_reason": dict(reasons.most_common()),
                "tokens_in": int(out.metrics.get("tokens_in", 0)),
                "tokens_out": int(out.metrics.get("tokens_out", 0)),
                "llm_requests": int(out.metrics.get("llm_requests", 0)),
                "llm_http_requests": int(out.metrics.get("llm_http_requests", 0)),
                "llm_cache_hits": int(out.metrics.get("llm_cache_hits", 0)),
                "wall_s": round(wall, 1),
            }
            samples[stage.name] = out.rejected.to_pylist()
            print(
                f"[{stage.name}] {json.dumps(results['stages'][stage.name], ensure_ascii=False)}", flush=True
            )
            table = out.kept
    results["wall_s"] = round(time.perf_counter() - t_all, 1)
    results["final"] = [
        {
            "dialogue_id": r["dialogue_id"],
            "language": r["language"],
            "source_texts": r["source_texts"],
            "rewritten_texts": r["rewritten_texts"],
            "spoken_texts": r["spoken_texts"],
        }
        for r in table.to_pylist()
    ]
    results["rejected"] = {
        name: [
            {
                "dialogue_id": r["dialogue_id"],
                "reason": r["reject_reason"],
                "detail": r["reject_detail"][:300],
            }
            for r in rej
        ]
        for name, rej in samples.items()
    }
    return results


def markdown(ing: dict, rules: dict, llm: dict | None, sample_n: int) -> str:
    def reasons(d: dict[str, int]) -> str:
        return ", ".join(f"{k} {v}" for k, v in d.items()) or "–"

    lines = [
        "| step | data | dialogues in | kept | rejected, by reason | tokens in / out | wall time |",
        "|---|---|---|---|---|---|---|",
        f"| ingest + dedup | all {len(ing['files'])} files | {ing['records']} records | {ing['dialogues']} | "
        f"{reasons(ing['rejected_by_reason'])} (duplicates: {reasons(ing['duplicates_by_kind'])}) | – | {ing['wall_s']} s |",
        f"| rule filters (before the LLM) | all | {rules['in']} | {rules['kept']} | {reasons(rules['rejected_by_reason'])} "
        f"| – | {rules['wall_s']} s |",
    ]
    if llm:
        for name in TEXT_STAGES:
            s = llm["stages"][name]
            lines.append(
                f"| {name} (embedded LLM) | sample of {sample_n} | {s['in']} | {s['kept']} | "
                f"{reasons(s['rejected_by_reason'])} | {s['tokens_in']} / {s['tokens_out']} | {s['wall_s']} s |"
            )
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=SAMPLE_DATA / "text")
    ap.add_argument("--config", type=Path, default=REPO / "configs" / "demo.yaml", help="LLM/stage settings")
    ap.add_argument("--llm-sample", type=int, default=8, help="dialogues through the LLM stages (0: none)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--run-dir", type=Path, default=None, help="LLM cache and server log (default: a temp dir)"
    )
    ap.add_argument("--check", type=Path, default=None, help="write the 50+50 hand-check sample here")
    ap.add_argument("--json", type=Path, default=None, help="write every number here")
    args = ap.parse_args()

    import tempfile

    from kespeechchat.config import load_config

    cfg = load_config(args.config)
    ing_rows, _, ing = ingest_all(args.data, cfg)
    print(f"ingest: {json.dumps(ing, ensure_ascii=False)}", flush=True)
    kept, rejected, rules = rules_all(ing_rows, cfg)
    print(f"rules: {json.dumps(rules, ensure_ascii=False)}", flush=True)
    if args.check:
        write_check(args.check, kept, rejected, args.seed)
        print(f"hand-check sample written to {args.check}")
    llm = None
    if args.llm_sample > 0:
        sample = llm_sample(kept, args.llm_sample, args.seed)
        run_dir = args.run_dir or Path(tempfile.mkdtemp(prefix="kespeechchat-bench-text-"))
        llm = run_llm_stages(sample, cfg, run_dir)
    table = markdown(ing, rules, llm, args.llm_sample)
    print(f"\n{machine()}\n\n{table}\n")
    if args.json:
        args.json.write_text(
            json.dumps(
                {"machine": machine(), "ingest": ing, "rules": rules, "llm": llm},
                ensure_ascii=False,
                indent=1,
            ),
            encoding="utf-8",
        )
    report("rule filters", rules["ms_per_dialogue"], "ms/dialogue", note=f"{rules['in']} dialogues")
    report("ingest + dedup", ing["wall_s"], "s", note=f"{ing['records']} records")
    if llm:
        s = llm["stages"]
        toks = sum(v["tokens_out"] for v in s.values())
        report(
            "text stages (embedded LLM)",
            llm["wall_s"] / max(1, llm["dialogues_in"]),
            "s/dialogue",
            note=f"{llm['dialogues_in']} in, {s['spoken']['kept']} kept, {toks} tokens out",
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
