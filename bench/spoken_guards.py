"""How often the spoken stage's guards fired in a run: re-asks, fallbacks to the rewrite (by reason),
glosses dropped, markup rejects; and the notes of the dialogues that fell back.

    .venv/bin/python bench/spoken_guards.py [runs/demo]
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

from _common import REPO, report


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir", type=Path, nargs="?", default=REPO / "runs" / "demo")
    args = ap.parse_args()

    import pyarrow.parquet as pq

    spoken = args.run_dir / "spoken"
    markers = sorted((spoken / "_markers").glob("shard-*.json"))
    if not markers:
        raise SystemExit(f"{spoken}: no finished shards")
    metrics: Counter = Counter()
    rows_in = 0
    for p in markers:
        m = json.loads(p.read_text())
        rows_in += m["rows_in"]
        metrics.update({k: float(v) for k, v in m.get("metrics", {}).items()})
    rejects = Counter()
    for p in sorted((spoken / "rejected").glob("*.parquet")):
        rejects.update(pq.read_table(p, columns=["reject_reason"]).column("reject_reason").to_pylist())
    notes = []
    for p in sorted((spoken / "data").glob("*.parquet")):
        t = pq.read_table(p)
        if "spoken_notes" in t.column_names:
            notes += [
                (d, n)
                for d, n in zip(t["dialogue_id"].to_pylist(), t["spoken_notes"].to_pylist(), strict=True)
                if n
            ]
    reasks = metrics["llm_http_requests"] - metrics["llm_requests"]  # every extra HTTP call is a retry
    print(f"{args.run_dir}: {rows_in} dialogues through spoken, {metrics['llm_requests']:.0f} LLM requests")
    print(f"  extra requests (re-asks and transport retries): {reasks:.0f}")
    print(
        f"  fallbacks to the rewrite: {metrics['spoken_fallbacks']:.0f} "
        f"(drift {metrics['spoken_drift_fallbacks']:.0f}, markup {metrics['spoken_markup_fallbacks']:.0f})"
    )
    print(f"  glosses dropped: {metrics['glosses_dropped']:.0f}")
    print(f"  rejected: {dict(rejects) or 'none'}")
    for d, n in notes:
        print(f"  {d}: {n}")
    report(
        "spoken guards: share of dialogues that fell back to the rewrite",
        metrics["spoken_fallbacks"] / rows_in if rows_in else 0.0,
        "share",
        note=f"{rows_in} dialogues; re-asks {reasks:.0f}; glosses dropped {metrics['glosses_dropped']:.0f}; "
        f"markup rejects {rejects.get('spoken_markup', 0)}",
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
