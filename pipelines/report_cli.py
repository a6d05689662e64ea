"""`kespeechchat report RUN` (a page to listen to) and `kespeechchat plan` (what a big run costs)."""

from __future__ import annotations

import argparse
import json

from kespeechchat.config import load_config
from pipelines.listen import ReportOptions, write_report
from pipelines.plan import (
    DEFAULT_FIGURES,
    PlanError,
    format_plan,
    load_figures,
    make_plan,
    parse_assumptions,
    plan_to_dict,
)
from pipelines.report import load_run_config, resolve_run


def _count_or_all(value: str) -> int | None:
    if value == "all":
        return None
    n = int(value)
    if n < 0:
        raise argparse.ArgumentTypeError("must be >= 0 or 'all'")
    return n


def cmd_report(args: argparse.Namespace) -> int:
    run = resolve_run(args.run, args.runs_dir)
    opts = ReportOptions(accepted=args.accepted, rejected=args.rejected, seed=args.seed, max_mb=args.max_mb)
    result = write_report(run, args.out, opts)
    print(result.describe())
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    run = resolve_run(args.from_run, args.runs_dir) if args.from_run else None
    if args.config:
        cfg = load_config(args.config, args.set)
    elif run is not None:
        cfg = load_run_config(run)
    else:
        raise SystemExit("error: give --config C or --from-run RUN")
    try:
        plan = make_plan(
            cfg,
            hours=args.hours,
            dialogues=args.dialogues,
            figures=load_figures(args.figures),
            run_dir=run,
            shape_name=args.shape,
            assumed=parse_assumptions(args.assume),
            gpus=args.gpus,
            cpus=args.cpus,
        )
    except PlanError as e:
        print(f"error: cannot plan without sources: {e}")
        return 2
    print(json.dumps(plan_to_dict(plan), indent=2) if args.json else format_plan(plan))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    r = sub.add_parser(
        "report",
        help="an offline HTML page of a run: listen to accepted and rejected dialogues, with filters",
    )
    r.add_argument("run", help="run directory or run name")
    r.add_argument("--runs-dir", default="runs")
    r.add_argument("--out", help="folder for index.html and its audio (default RUN/report)")
    r.add_argument(
        "--accepted",
        type=_count_or_all,
        default=200,
        help="accepted dialogues shown, a seeded sample (or 'all')",
    )
    r.add_argument(
        "--rejected", type=_count_or_all, default=200, help="rejected dialogues with audio shown (or 'all')"
    )
    r.add_argument("--seed", type=int, default=0, help="seed of the samples")
    r.add_argument("--max-mb", type=float, default=200.0, help="size limit of the audio in the report")
    r.set_defaults(func=cmd_report)

    p = sub.add_parser(
        "plan", help="GPU-hours, core-hours and days of a big run, from measured figures with their sources"
    )
    p.add_argument("--config", "-c", help="YAML recipe of the big run (default: the --from-run run's config)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config value")
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("--hours", type=float, help="accepted audio hours wanted")
    target.add_argument("--dialogues", type=float, help="accepted dialogues wanted")
    p.add_argument(
        "--from-run", metavar="RUN", help="take shares kept, work per dialogue and throughputs from a run"
    )
    p.add_argument("--runs-dir", default="runs")
    p.add_argument(
        "--figures", default=str(DEFAULT_FIGURES), help="measured figures (YAML) with their sources"
    )
    p.add_argument("--shape", help="reference shape in the figures file (without --from-run)")
    p.add_argument(
        "--assume",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a figure: rate.STAGE, pass.STAGE, work.STAGE or audio_s_per_dialogue",
    )
    p.add_argument("--gpus", type=int, default=8, help="GPUs of the cluster")
    p.add_argument("--cpus", type=int, default=64, help="CPU cores of the cluster for CPU stages")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_plan)
