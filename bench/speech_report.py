"""What the speech checks did on a run: PNG histograms, pass rates at first attempt and after retries, rejects by reason.

Reads a finished run directory (no model runs):

* first attempt: the verify scores, judged with the run's own select thresholds;
* after retries: what repair left and select kept;
* rejects by reason of the speech stages (synthesize, verify, select);
* histograms (first attempt and final, thresholds drawn in) of CER (zh), WER (en), speaker
  similarity, DNSMOS OVRL and speaking rate, written as PNGs.

    .venv/bin/python bench/speech_report.py runs/demo [--out runs/demo/report]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

SPEECH_STAGES = ("synthesize", "verify", "repair", "select")


def read_rows(run: Path, stage: str, kind: str = "data") -> list[dict[str, Any]]:
    import pyarrow.parquet as pq

    rows: list[dict[str, Any]] = []
    for p in sorted((run / stage / kind).glob("shard-*.parquet")):
        rows += pq.read_table(p).to_pylist()
    return rows


def turns(rows: list[dict[str, Any]], col: str, language: str | None = None) -> list[float]:
    out = []
    for r in rows:
        if language and r["language"] != language:
            continue
        for v in r.get(col) or []:
            if v is not None and math.isfinite(v):
                out.append(float(v))
    return out


def pass_rates(rows: list[dict[str, Any]], select_cfg) -> dict[str, Any]:
    from pipelines.stages.select import row_failures

    n_turns = sum(len(r["spoken_texts"]) for r in rows)
    failing = [row_failures(select_cfg, r) for r in rows]
    reasons = Counter(why for f in failing for _, why in f)
    return {
        "dialogues": len(rows),
        "dialogues_passing": sum(1 for f in failing if not f),
        "turns": n_turns,
        "turns_passing": n_turns - sum(len(f) for f in failing),
        "failing_turns_by_reason": dict(reasons.most_common()),
    }


def histogram(
    path: Path, title: str, xlabel: str, series: dict[str, list[float]], bound: float | None, bins
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 3.6), dpi=110)
    for label, values in series.items():
        if values:
            ax.hist(values, bins=bins, alpha=0.6, label=f"{label} (n={len(values)})")
    if bound is not None:
        ax.axvline(bound, color="crimson", linestyle="--", linewidth=1.2, label=f"bound {bound:g}")
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("turns")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "run", type=Path, nargs="?", default=Path("runs/demo"), help="run directory (default runs/demo)"
    )
    ap.add_argument(
        "--out", type=Path, default=None, help="where the PNGs and report.json go (default RUN/speech_report)"
    )
    args = ap.parse_args()

    import numpy as np
    import yaml

    from kespeechchat.config import RunConfig
    from pipelines.report import run_summary

    run = args.run
    cfg_path = run / "config.yaml"
    if not cfg_path.is_file():
        if args.run == ap.get_default("run"):
            print(f"{run}: no run yet (make demo first); nothing to report")
            return 0
        raise SystemExit(f"{run}: not a run directory (no config.yaml)")
    cfg = RunConfig.model_validate(yaml.safe_load(cfg_path.read_text(encoding="utf-8")))
    sel = cfg.select
    out = args.out or run / "speech_report"
    out.mkdir(parents=True, exist_ok=True)

    first = read_rows(run, "verify")
    final = read_rows(run, "repair") or first
    if not first:
        raise SystemExit(f"{run}: verify has no output yet")
    kept = read_rows(run, "select")
    summary = run_summary(run)
    stage_rows = {s["stage"]: s for s in summary["stages"]}
    speech_rejects = {
        k: v for k, v in summary["rejected_by_reason"].items() if k.split(":")[0] in SPEECH_STAGES
    }
    into_speech = stage_rows.get("synthesize", {}).get("rows_in", len(first))

    fa = pass_rates(first, sel)
    fin = pass_rates(final, sel)
    attempts = Counter(a for r in kept for a in r.get("tts_attempts") or [])
    report = {
        "run": str(run),
        "thresholds": sel.model_dump(),
        "retries": cfg.retry.retries,
        "dialogues_into_synthesize": into_speech,
        "first_attempt": fa,
        "after_retries": fin,
        "kept_dialogues": len(kept),
        "kept_first_attempt": sum(1 for r in kept if all(a == 1 for a in r["tts_attempts"])),
        "kept_turns_by_attempts": {str(k): v for k, v in sorted(attempts.items())},
        "rejects_by_reason": speech_rejects,
        "plots": [],
    }

    plots = [
        (
            "cer_zh.png",
            "CER of zh turns (Whisper vs spoken text)",
            "CER",
            "error_rates",
            "zh",
            sel.max_cer_zh,
            np.linspace(0, 0.5, 26),
        ),
        (
            "wer_en.png",
            "WER of en turns (Whisper vs spoken text)",
            "WER",
            "error_rates",
            "en",
            sel.max_wer_en,
            np.linspace(0, 0.5, 26),
        ),
        (
            "speaker_similarity.png",
            "Cosine to the voice's reference",
            "cosine",
            "speaker_similarities",
            None,
            sel.min_speaker_similarity,
            np.linspace(0, 1, 41),
        ),
        (
            "dnsmos_ovrl.png",
            "DNSMOS OVRL (artefact detector)",
            "DNSMOS OVRL",
            "dnsmos_ovrl",
            None,
            sel.min_dnsmos_ovrl,
            np.linspace(1, 5, 41),
        ),
        (
            "chars_per_s_zh.png",
            "Speaking rate, zh",
            "spoken characters per second of speech",
            "chars_per_s",
            "zh",
            None,
            30,
        ),
        (
            "chars_per_s_en.png",
            "Speaking rate, en",
            "spoken characters per second of speech",
            "chars_per_s",
            "en",
            None,
            30,
        ),
    ]
    for name, title, xlabel, col, lang, bound, bins in plots:
        a, b = turns(first, col, lang), turns(final, col, lang)
        if not a and not b:
            continue
        if isinstance(bins, np.ndarray):  # values past the last bin go into it, so none disappear
            a, b = [min(x, bins[-1]) for x in a], [min(x, bins[-1]) for x in b]
        histogram(out / name, title, xlabel, {"first attempt": a, "after retries": b}, bound, bins)
        report["plots"].append(str(out / name))
        if a:
            report.setdefault("distributions", {})[name[:-4]] = {
                "first_attempt_median": float(np.median(a)),
                "first_attempt_p90": float(np.percentile(a, 90)),
                "final_median": float(np.median(b)) if b else None,
            }
    (out / "report.json").write_text(json.dumps(report, indent=2, ensure_ascii=False))

    def pct(a: int, b: int) -> str:
        return f"{a}/{b} ({a / b:.0%})" if b else "0/0"

    print(f"run {run}: {into_speech} dialogues into synthesize, retries={cfg.retry.retries}")
    print(
        f"  pass at first attempt: dialogues {pct(fa['dialogues_passing'], fa['dialogues'])}, turns {pct(fa['turns_passing'], fa['turns'])}"
    )
    print(
        f"  pass after retries:    dialogues {pct(fin['dialogues_passing'], fin['dialogues'])}, turns {pct(fin['turns_passing'], fin['turns'])}"
    )
    print(
        f"  kept by select: {len(kept)} dialogues ({report['kept_first_attempt']} at first attempt); turns by attempts {report['kept_turns_by_attempts']}"
    )
    print(f"  failing turns at first attempt by reason: {fa['failing_turns_by_reason']}")
    print(f"  rejected dialogues by reason: {speech_rejects}")
    for k, v in report.get("distributions", {}).items():
        print(
            f"  {k}: median {v['first_attempt_median']:.3f} (p90 {v['first_attempt_p90']:.3f}) first attempt, median {v['final_median']:.3f} final"
        )
    print(f"  plots and report.json in {out}")
    from _common import report as bench

    if fa["dialogues"]:
        bench(
            "dialogues passing at first attempt",
            fa["dialogues_passing"] / fa["dialogues"],
            "share",
            note=str(run),
        )
        bench(
            "dialogues passing after retries",
            fin["dialogues_passing"] / fin["dialogues"],
            "share",
            note=str(run),
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
