"""``kespeechchat ingest-check FILE…``: what ingest makes of a user's own files, before any run.

Per file (or folder of shards): the layouts detected, records read, dialogues kept, and the rejects
by reason with one example each (record, detail and the start of the record). Nothing is written.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from kespeechchat.config import ColumnMapping, SourceConfig
from kespeechchat.ingest import IngestReject, ingest_source


def check_file(source: SourceConfig) -> dict[str, Any]:
    """Ingest one source alone (duplicates are looked for inside it only) and summarise it."""
    _, rejects, stats = ingest_source(source, seed=0, seen_ids={}, dedup=None)
    examples: dict[str, IngestReject] = {}
    for r in rejects:
        examples.setdefault(r.reason, r)
    return {
        "path": source.path,
        "layouts": stats["formats"],
        "records": stats["records"],
        "kept": stats["kept"],
        "languages": stats["languages"],
        "rejected": stats["rejected"],
        "examples": {
            reason: {
                "file": r.source_file,
                "record": r.record_index,
                "detail": r.detail,
                "excerpt": r.raw_excerpt[:120],
            }
            for reason, r in examples.items()
        },
    }


def format_report(rep: dict[str, Any]) -> str:
    layouts = ", ".join(f"{k} {v}" for k, v in rep["layouts"].items()) or "none recognised"
    langs = ", ".join(f"{k} {v}" for k, v in rep["languages"].items())
    lines = [
        f"{rep['path']}",
        f"  layout: {layouts}",
        f"  {rep['records']} records read -> {rep['kept']} dialogues kept"
        + (f" ({langs})" if langs else "")
        + f", {sum(rep['rejected'].values())} rejected",
    ]
    for reason, n in sorted(rep["rejected"].items(), key=lambda kv: (-kv[1], kv[0])):
        ex = rep["examples"][reason]
        where = f"{ex['file']}#{ex['record']}" if ex["record"] is not None else ex["file"]
        lines.append(f"  {reason:<18} {n:>6}  e.g. {where}: {ex['detail'][:140]}")
    return "\n".join(lines)


def cmd_ingest_check(args: argparse.Namespace) -> int:
    columns = ColumnMapping.model_validate(json.loads(args.columns)) if args.columns else None
    reports = [
        check_file(SourceConfig(path=p, format=args.format, preference=args.preference, columns=columns))
        for p in args.files
    ]
    if args.json:
        print(json.dumps(reports, ensure_ascii=False, indent=1))
    else:
        print("\n\n".join(format_report(r) for r in reports))
    return 0 if all(r["kept"] for r in reports) else 2


def register(subparsers: Any) -> None:
    c = subparsers.add_parser(
        "ingest-check",
        help="what ingest makes of your files: layout, records, dialogues kept, rejects by reason",
    )
    c.add_argument(
        "files", nargs="+", help="files or folders of shards (.json/.jsonl/.parquet, .gz/.zst too)"
    )
    c.add_argument("--format", default="auto", help="layout (default: detected per record)")
    c.add_argument("--preference", choices=["chosen", "rejected"], default="chosen")
    c.add_argument("--columns", help='column mapping as JSON, e.g. {"messages": "dialog", "role": "speaker"}')
    c.add_argument("--json", action="store_true")
    c.set_defaults(func=cmd_ingest_check)
