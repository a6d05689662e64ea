"""Shared bits of the benchmark scripts: each prints `BENCH {json}` lines that run_all.py tabulates."""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SAMPLE_DATA = REPO / "data"  # the sample text and speech shipped in data/
sys.path.insert(0, str(REPO))

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ["NO_PROXY"] = "127.0.0.1,localhost"


def machine() -> str:
    import psutil

    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {psutil.virtual_memory().total / 2**30:.0f} GiB, Python {platform.python_version()}"


def report(
    figure: str,
    value: float,
    unit: str,
    *,
    baseline: float | None = None,
    baseline_unit: str | None = None,
    ratio: float | None = None,
    goal: str = "",
    note: str = "",
) -> None:
    row = {
        "figure": figure,
        "value": round(value, 4),
        "unit": unit,
        "baseline": None if baseline is None else round(baseline, 4),
        "baseline_unit": baseline_unit or unit,
        "ratio": None if ratio is None else round(ratio, 3),
        "goal": goal,
        "note": note,
        "at": time.strftime("%Y-%m-%d %H:%M"),
    }
    print("BENCH " + json.dumps(row, ensure_ascii=False), flush=True)
