"""End-to-end audio hours per core-hour with the embedded models: the demo recipe on a small sample,
run twice in the same process: with the LLM text stages (the real recipe) and, as the baseline, with
the same inputs but rule-based text stages (speech stages only cost). The ratio is what the LLM costs.

    .venv/bin/python bench/e2e_throughput.py [--zh 3] [--en 3]
    .venv/bin/python bench/e2e_throughput.py --baseline-pool voice_library/data/kokoro_searched_identities.parquet
    .venv/bin/python bench/e2e_throughput.py --runs runs/demo          # finished runs, as they are

With ``--baseline-pool`` both runs use the rule-based text stages and differ only in the identity
pool the voices come from (baseline: the given pool; measured: the configured one): what the
voices cost in rejected and re-synthesised audio.

Core-hours = wall time x the CPUs the run was given (the whole machine here). Audio is counted twice:
accepted (what lands in the dataset) and synthesised (everything TTS produced, retries included).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import REPO, machine, report

from kespeechchat.config import load_config
from kespeechchat.testing import cli_run_command, write_config
from pipelines.report import run_summary


def _synthesised_audio_s(run_dir: Path) -> float:
    """First-pass TTS audio plus what repair re-synthesised, from the units' markers."""
    import json

    total = 0.0
    for stage, key in (("synthesize", "audio_s"), ("repair", "resynthesised_audio_s")):
        for m in sorted((run_dir / stage / "_markers").glob("shard-*.json")):
            total += float(json.loads(m.read_text())["metrics"].get(key, 0.0))
    return total


def stage_throughput(run_dir: Path) -> dict[str, dict[str, float]]:
    """Per stage: dialogues in, busy seconds (sum over its units) and audio seconds it produced."""
    import json

    out: dict[str, dict[str, float]] = {}
    for st in run_summary(run_dir)["stages"]:
        if st["stage"] in ("ingest", "package") or not st["duration_s"]:
            continue
        audio = 0.0
        for m in (run_dir / st["stage"] / "_markers").glob("shard-*.json"):
            metrics = json.loads(m.read_text()).get("metrics") or {}
            audio += float(metrics.get("audio_s", 0.0) or metrics.get("resynthesised_audio_s", 0.0) or 0.0)
        out[st["stage"]] = {"dialogues": st["rows_in"], "busy_s": st["duration_s"], "audio_s": audio}
    return out


def run_one(label: str, cfg, tmp: Path, cores: int) -> dict:
    path = write_config(cfg, tmp / f"{cfg.name}.yaml")
    t0 = time.perf_counter()
    r = subprocess.run(cli_run_command(path), capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        sys.exit(f"{label} run failed ({r.returncode}):\n{r.stderr[-3000:]}")
    return measure_run(label, Path(cfg.runs_dir) / cfg.name, wall, cores)


def marker_span_s(run_dir: Path) -> float:
    """Seconds from the first unit's start to the last unit's end (the run's work, from its markers)."""
    import json
    from datetime import datetime

    spans = []
    for f in run_dir.glob("*/_markers/*.json"):
        m = json.loads(f.read_text())
        if "finished_at" in m:
            end = datetime.strptime(m["finished_at"], "%Y-%m-%dT%H:%M:%S%z").timestamp()
            spans.append((end - float(m["duration_s"]), end))
    return max(e for _, e in spans) - min(s for s, _ in spans)


def measure_run(label: str, run_dir: Path, wall: float, cores: int) -> dict:
    """Accepted and synthesised audio of a finished run, per core-hour of ``wall`` × ``cores``."""
    s = run_summary(run_dir)
    accepted = float((s.get("dataset") or {}).get("audio_s", 0.0))
    synthesised = _synthesised_audio_s(run_dir)
    stage_s = {st["stage"]: round(st["duration_s"], 1) for st in s["stages"] if st["duration_s"]}
    core_h = wall * cores / 3600
    out = {
        "wall_s": wall,
        "accepted_audio_s": accepted,
        "synth_audio_s": synthesised,
        "accepted_per_core_h": accepted / 3600 / core_h,
        # TTS output that did not land in the dataset: rejected turns and renderings redone by repair
        "rejected_or_redone_share": 1.0 - accepted / synthesised if synthesised else float("nan"),
        "synth_per_core_h": synthesised / 3600 / core_h,
        "dialogues_in": s.get("dialogues_in", 0),
        "dialogues_out": (s.get("dataset") or {}).get("dialogues", 0),
        "stages": stage_throughput(run_dir),
    }
    print(
        f"{label}: {out['dialogues_in']} dialogues in, {out['dialogues_out']} accepted, {wall:.0f} s wall; "
        f"audio accepted {accepted:.1f} s, synthesised {synthesised:.1f} s "
        f"({out['rejected_or_redone_share']:.1%} rejected or redone); "
        f"{out['accepted_per_core_h']:.4f} accepted audio h per core-h; stage busy seconds {stage_s}",
        flush=True,
    )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--zh", type=int, default=2)
    ap.add_argument("--en", type=int, default=2)
    ap.add_argument("--config", default=str(REPO / "configs" / "demo.yaml"))
    ap.add_argument("--baseline-pool", help="compare voice pools instead of text stages (see above)")
    ap.add_argument(
        "--runs",
        nargs="+",
        type=Path,
        help="measure finished runs instead (e.g. runs/demo): wall = first unit start to last unit end",
    )
    args = ap.parse_args()
    cores = os.cpu_count() or 1
    print(f"machine: {machine()}")
    if args.runs:
        for run_dir in args.runs:
            measure_run(str(run_dir), run_dir, marker_span_s(run_dir), cores)
        return None
    tmp = Path(tempfile.mkdtemp(prefix="ksc-e2e-"))
    base = load_config(args.config)
    data = base.model_dump(mode="json")
    data["runs_dir"] = str(tmp / "runs")
    data["executor"]["num_cpus"] = cores
    want = {"zh": args.zh, "en": args.en}
    sources = []
    for src in data["input"]["sources"]:
        lang = (src.get("languages") or ["en"])[0]
        if want.get(lang, 0) > 0:
            src["limit"] = want[lang]
            want[lang] = 0  # the first source of each language gives the whole sample
            sources.append(src)
    data["input"]["sources"] = sources
    llm_cfg = type(base).model_validate({**data, "name": "e2e-llm"})
    rules = {**data, "name": "e2e-rules"}
    rules["rewrite"] = {**data["rewrite"], "mode": "passthrough"}
    rules["filter"] = {**data["filter"], "llm_judge": False}
    rules["spoken"] = {**data["spoken"], "mode": "rules"}
    rules_cfg = type(base).model_validate(rules)
    if args.baseline_pool:
        return compare_pools(rules, args.baseline_pool, tmp, cores)

    base_run = run_one("speech stages only (rule-based text stages)", rules_cfg, tmp, cores)
    full_run = run_one("full recipe (embedded LLM text stages)", llm_cfg, tmp, cores)
    report(
        "end-to-end accepted audio hours per core-hour, embedded models",
        full_run["accepted_per_core_h"],
        "audio h/core-h",
        baseline=base_run["accepted_per_core_h"],
        baseline_unit="audio h/core-h without the LLM",
        ratio=full_run["accepted_per_core_h"] / max(base_run["accepted_per_core_h"], 1e-12),
        note=f"{full_run['dialogues_out']}/{full_run['dialogues_in']} dialogues accepted, "
        f"{full_run['accepted_audio_s']:.0f} s audio, {full_run['wall_s']:.0f} s wall on {cores} cores",
    )
    report(
        "end-to-end synthesised audio hours per core-hour, embedded models",
        full_run["synth_per_core_h"],
        "audio h/core-h",
        baseline=base_run["synth_per_core_h"],
        baseline_unit="audio h/core-h without the LLM",
        ratio=full_run["synth_per_core_h"] / max(base_run["synth_per_core_h"], 1e-12),
        note="every TTS output, rejected ones and retries included",
    )
    for name, st in full_run["stages"].items():
        base = base_run["stages"].get(name)
        rate = st["dialogues"] / st["busy_s"]
        base_rate = base["dialogues"] / base["busy_s"] if base else None
        report(
            f"stage {name}: dialogues per busy second (full recipe)",
            rate,
            "dialogues/s",
            baseline=base_rate,
            baseline_unit="dialogues/s in the rule-based run",
            ratio=rate / base_rate if base_rate else None,
            note=f"{st['audio_s'] / st['busy_s']:.2f} audio s/s" if st["audio_s"] else "",
        )


def compare_pools(rules: dict, baseline_pool: str, tmp: Path, cores: int) -> None:
    from kespeechchat.config import RunConfig

    old = {
        **rules,
        "name": "e2e-baseline-pool",
        "voices": {**rules["voices"], "pool": str(Path(baseline_pool).resolve())},
    }
    new = {**rules, "name": "e2e-configured-pool"}
    base_run = run_one(f"voices from {baseline_pool}", RunConfig.model_validate(old), tmp, cores)
    new_run = run_one("voices from the configured pool", RunConfig.model_validate(new), tmp, cores)
    report(
        "share of synthesised audio rejected or redone",
        new_run["rejected_or_redone_share"],
        "share",
        baseline=base_run["rejected_or_redone_share"],
        baseline_unit=f"share with {Path(baseline_pool).name}",
        ratio=new_run["rejected_or_redone_share"] / max(base_run["rejected_or_redone_share"], 1e-12),
        note=f"accepted {new_run['dialogues_out']}/{new_run['dialogues_in']} vs "
        f"{base_run['dialogues_out']}/{base_run['dialogues_in']} dialogues",
    )
    report(
        "accepted audio hours per core-hour, speech stages",
        new_run["accepted_per_core_h"],
        "audio h/core-h",
        baseline=base_run["accepted_per_core_h"],
        baseline_unit=f"audio h/core-h with {Path(baseline_pool).name}",
        ratio=new_run["accepted_per_core_h"] / max(base_run["accepted_per_core_h"], 1e-12),
        note=f"{new_run['wall_s']:.0f} s vs {base_run['wall_s']:.0f} s wall on {cores} cores",
    )


if __name__ == "__main__":
    main()
