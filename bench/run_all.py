"""Run every benchmark script and print one table (`make bench`).

Each script prints `BENCH {json}` lines (see _common.report); this collects them, prints a
Markdown table with the machine it ran on, and writes it to bench/results/latest.md (and the rows
to latest.json). Given script names, it runs only those and replaces only their rows: the other
rows stay, each with the date it was measured.

    .venv/bin/python bench/run_all.py                      # everything (make bench)
    .venv/bin/python bench/run_all.py speaker_bound asr_real_speech
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from _common import REPO, machine

HERE = Path(__file__).resolve().parent
SKIP = {"run_all.py", "_common.py"}
# Scripts that read a finished run rather than make one: skipped (and said so) when it is not there.
NEEDS = {
    "speech_report.py": REPO / "runs" / "demo" / "dataset",
    "spoken_guards.py": REPO / "runs" / "demo" / "spoken" / "_markers",
}


def main() -> int:
    only = {a.removesuffix(".py") for a in sys.argv[1:]}
    scripts = sorted(p for p in HERE.glob("*.py") if p.name not in SKIP and (not only or p.stem in only))
    unknown = only - {p.stem for p in scripts}
    if unknown:
        raise SystemExit(f"no such benchmark script in {HERE}: {', '.join(sorted(unknown))}")
    store = HERE / "results" / "latest.json"
    ran = {p.name for p in scripts}
    kept: list[dict] = []
    if only and store.is_file():  # a partial run keeps the other scripts' rows
        kept = [r for r in json.loads(store.read_text(encoding="utf-8")) if r["script"] not in ran]
    rows, failed, skipped = [], [], []
    t0 = time.perf_counter()
    for script in scripts:
        print(f"== {script.name}", flush=True)
        need = NEEDS.get(script.name)
        if need is not None and not need.exists():
            print(f"skipped: needs {need.relative_to(REPO)} (make demo first)", flush=True)
            skipped.append(script.name)
            continue
        proc = subprocess.run([sys.executable, str(script)], cwd=REPO, capture_output=True, text=True)
        sys.stdout.write(proc.stdout[-3000:])
        if proc.returncode != 0:
            failed.append(script.name)
            sys.stdout.write(proc.stderr[-3000:])
        for line in proc.stdout.splitlines():
            if line.startswith("BENCH "):
                rows.append({"script": script.name, **json.loads(line[6:])})
    head = f"Machine: {machine()}; {time.strftime('%Y-%m-%d %H:%M')}; {len(scripts)} script(s) run, total {time.perf_counter() - t0:.0f}s"
    if kept:
        head += f"; {len(kept)} row(s) of other scripts kept from earlier runs (see 'measured')"
    lines = [
        head,
        "",
        "| script | figure | value | baseline | ratio | goal | measured |",
        "|---|---|---|---|---|---|---|",
    ]
    rows = sorted(kept + rows, key=lambda r: r["script"])
    for r in rows:
        base = "" if r["baseline"] is None else f"{r['baseline']} {r['baseline_unit']}"
        ratio = "" if r["ratio"] is None else f"{r['ratio']}"
        lines.append(
            f"| {r['script']} | {r['figure']} | {r['value']} {r['unit']} | {base} | {ratio} | {r['goal']} "
            f"| {r.get('at', '')} |"
        )
    if skipped:
        lines += ["", "skipped (no finished demo run): " + ", ".join(skipped)]
    if failed:
        lines += ["", "failed: " + ", ".join(failed)]
    table = "\n".join(lines)
    print("\n" + table)
    out = HERE / "results" / "latest.md"
    out.parent.mkdir(exist_ok=True)
    out.write_text(table + "\n", encoding="utf-8")
    store.write_text(json.dumps(rows, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
