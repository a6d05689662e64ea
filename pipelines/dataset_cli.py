"""Dataset commands: `card`, `export-hf`, `inspect`. They parse arguments and call library functions."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from kespeechchat.store import RunStore
from pipelines.card import write_card
from pipelines.hub import check_repo_id, export_folder, load_run_config, push, ready_to_push
from pipelines.package import read_utterances, write_wavs


def _run_dir(arg: str, runs_dir: str) -> Path:
    for p in (Path(arg), Path(runs_dir) / arg):
        if RunStore(p).config_path.exists():
            return p
    raise SystemExit(
        f"error: no run directory {arg!r} (looked for config.yaml in {arg} and {runs_dir}/{arg})"
    )


def cmd_card(args: argparse.Namespace) -> int:

    run = _run_dir(args.run, args.runs_dir)
    path = write_card(RunStore(run).dataset_dir, load_run_config(run), run)
    print(path)
    return 0


def cmd_export_hf(args: argparse.Namespace) -> int:

    run = _run_dir(args.run, args.runs_dir)
    check_repo_id(args.repo_id)
    if args.push:  # fail on network, token or offline mode before spending time on the export
        ready_to_push(timeout_s=args.timeout)
    report = export_folder(run, args.repo_id, args.out)
    splits = ", ".join(f"{k} {v}" for k, v in report["splits"].items())
    print(
        f"export: {report['folder']}  ({len(report['files'])} files, {report['bytes'] / 1e6:.1f} MB; rows: {splits})"
    )
    if not args.push:
        print(
            f"to publish: kespeechchat export-hf {args.run} --repo-id {args.repo_id} --push   (token from HF_TOKEN)"
        )
        return 0
    result = push(report["folder"], args.repo_id, private=args.private, timeout_s=args.timeout)
    print(f"published: {result['repo_url']}")
    return 0


def _short(text: Any, n: int) -> str:
    s = "" if text is None else str(text).replace("\n", " ")
    return s if len(s) <= n else s[: n - 1] + "…"


def cmd_inspect(args: argparse.Namespace) -> int:

    run = _run_dir(args.run, args.runs_dir)
    dataset = RunStore(run).dataset_dir
    columns = None if args.wav_dir else [
        "utterance_id", "dialogue_id", "turn_index", "role", "language", "voice_id", "speaker_id",
        "duration_s", "error_rate", "error_kind", "speaker_similarity", "text", "asr_text",
    ]  # fmt: skip
    if args.n < 1:
        raise SystemExit("error: --n must be at least 1")
    t = read_utterances(
        dataset, columns, split=args.split, limit=None if args.dialogue else args.n, dialogue_id=args.dialogue
    )
    rows = t.to_pylist()
    if args.dialogue:
        if not rows:
            raise SystemExit(f"error: no dialogue {args.dialogue!r} in {dataset}")
        rows.sort(key=lambda r: r["turn_index"])
    wavs = write_wavs(rows, args.wav_dir) if args.wav_dir else []
    if args.json:
        for r in rows:
            r.pop("audio", None)
        print(json.dumps(rows, ensure_ascii=False, indent=1))
    else:
        for r in rows:
            print(
                f"{r['split']:<10} {r['utterance_id']:<22} {r['language']} {r['role']:<9} {r['voice_id']:<15} "
                f"{r['duration_s']:5.2f}s {r['error_kind'].upper()} {r['error_rate']:.3f} sim {r['speaker_similarity']:.3f}"
            )
            print(f"{'':<10} text: {_short(r['text'], 110)}")
            print(f"{'':<10} asr:  {_short(r['asr_text'], 110)}")
        print(f"{len(rows)} row(s) from {dataset}")
    for p in wavs:
        print(f"wrote {p}", file=sys.stderr if args.json else sys.stdout)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    c = sub.add_parser("card", help="(re)write the dataset card README.md and its plots for a run")
    c.add_argument("run", help="run directory or run name")
    c.add_argument("--runs-dir", default="runs")
    c.set_defaults(func=cmd_card)

    e = sub.add_parser("export-hf", help="prepare a Hugging Face dataset repo folder; --push uploads it")
    e.add_argument("run", help="run directory or run name")
    e.add_argument("--repo-id", required=True, metavar="ORG/NAME", help="dataset repository on the Hub")
    e.add_argument(
        "--private",
        action="store_true",
        help="create the repository private (an existing one keeps its visibility)",
    )
    e.add_argument(
        "--push", action="store_true", help="create the repo and upload (token from HF_TOKEN, never printed)"
    )
    e.add_argument("--out", help="export folder (default <run>/export/<org>__<name>)")
    e.add_argument(
        "--timeout", type=float, default=10.0, help="seconds to wait for the Hub to connect or answer"
    )
    e.add_argument("--runs-dir", default="runs")
    e.set_defaults(func=cmd_export_hf)

    i = sub.add_parser("inspect", help="show a few rows of the dataset; --wav-dir writes them as WAV files")
    i.add_argument("run", help="run directory or run name")
    i.add_argument("--n", type=int, default=5, help="rows to show")
    i.add_argument("--split", help="only this split")
    i.add_argument("--dialogue", metavar="ID", help="every turn of one dialogue, in order")
    i.add_argument("--wav-dir", metavar="DIR", help="write the shown rows as <utterance_id>.wav here")
    i.add_argument("--json", action="store_true", help="rows as JSON (without audio)")
    i.add_argument("--runs-dir", default="runs")
    i.set_defaults(func=cmd_inspect)
