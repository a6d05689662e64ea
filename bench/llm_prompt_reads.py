"""How much prompt the managed llama.cpp server read in a finished run, from its own log.

    python bench/llm_prompt_reads.py runs/demo [more run dirs …]

Per run: the prompt tokens the LLM stages sent (their markers' ``tokens_in``), the prompt tokens the
server evaluated (``prompt eval time = … / N tokens`` lines of ``logs/llama-server.log``), the share
that came from its prefix cache, how many requests read a whole prompt (over ``--whole`` tokens:
the stages' system prompts and examples are 300–600 tokens, a request that found its prefix reads
under 200), the tokens generated, and when the last LLM stage unit finished (seconds after the run's
first unit started). This is what ``llm.prefix_concurrency`` changes; compare runs of the same
recipe.
"""

from __future__ import annotations

import argparse
import json
import re
from datetime import datetime
from pathlib import Path

LLM_STAGES = ("rewrite", "filter", "spoken")
_PROMPT = re.compile(r"prompt eval time = +[0-9.]+ ms / +(\d+) tokens")
_EVAL = re.compile(r"\|\s+eval time = +[0-9.]+ ms / +(\d+) tokens")


def _markers(run: Path) -> list[dict]:
    out = []
    for f in sorted(run.glob("*/_markers/shard-*.json")):
        m = json.loads(f.read_text())
        if "finished_at" in m:
            end = datetime.strptime(m["finished_at"], "%Y-%m-%dT%H:%M:%S%z").timestamp()
            out.append({**m, "_start": end - float(m["duration_s"]), "_end": end})
    return out


def measure(run: Path, whole: int) -> dict:
    log = (run / "logs" / "llama-server.log").read_text(errors="replace")
    evaluated = [int(n) for n in _PROMPT.findall(log)]
    markers = _markers(run)
    llm = [m for m in markers if m["stage"] in LLM_STAGES]
    sent = sum(float(m.get("metrics", {}).get("tokens_in", 0)) for m in llm)
    t0 = min(m["_start"] for m in markers)
    return {
        "run": str(run),
        "requests": len(evaluated),
        "prompt_tokens_sent": int(sent),
        "prompt_tokens_evaluated": sum(evaluated),
        "from_prefix_cache": round(1 - sum(evaluated) / sent, 3) if sent else None,
        "whole_prompt_reads": sum(n > whole for n in evaluated),
        "tokens_generated": sum(int(n) for n in _EVAL.findall(log)),
        "llm_stages_done_s": round(max(m["_end"] for m in llm) - t0),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument(
        "--whole", type=int, default=200, help="a prompt read over this many tokens is a whole one"
    )
    args = ap.parse_args()
    rows = [measure(r, args.whole) for r in args.runs]
    keys = list(rows[0])
    print("| " + " | ".join(keys) + " |")
    print("|" + "---|" * len(keys))
    for r in rows:
        print("| " + " | ".join(str(r[k]) for k in keys) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
