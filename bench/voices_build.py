"""Build time and size of the full 42,002-voice library, against a baseline measured in the same run.

Baseline: the naive library of the same size (random convex blends, one recipe each, no pool,
no variants, no agents) turned into recipes and written with the same Parquet writer — the least
a recipe library costs. Ours: identities × variants from the measured pool, agents chosen, the
measurement recorded in the file. Best of ``--repeat`` runs each.

    python bench/voices_build.py [--size 42002] [--repeat 3]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from _common import machine, report


def best_of(n: int, fn):
    """(best wall seconds, best CPU seconds of this process, result): CPU time stays meaningful
    when other work shares the machine, wall time is what a user waits."""
    walls, cpus, out = [], [], None
    for _ in range(n):
        t0, c0 = time.perf_counter(), time.process_time()
        out = fn()
        walls.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
    return min(walls), min(cpus), out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=42_002)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()

    from voice_library.audit import naive_voices
    from voice_library.pool import load_pool
    from voice_library.recipes import (
        agent_voices,
        build_library,
        library_meta_for,
        load_library,
        save_library,
    )

    print(f"machine: {machine()}")
    with tempfile.TemporaryDirectory() as d:
        naive_path, ours_path = Path(d) / "naive.parquet", Path(d) / "voices.parquet"

        def naive():
            v = naive_voices(args.size, seed=0)
            save_library(v, naive_path)
            return v

        def ours():
            pool = load_pool()
            v = build_library(args.size, seed=0, pool=pool) + agent_voices(pool=pool)
            save_library(v, ours_path, library_meta_for(v, pool, seed=0))
            return v

        t_naive, c_naive, _ = best_of(args.repeat, naive)
        t_ours, c_ours, voices = best_of(args.repeat, ours)
        t_load, c_load, loaded = best_of(args.repeat, lambda: load_library(ours_path))
        assert len(loaded) == len(voices)
        size_mb = ours_path.stat().st_size / 1e6
        n_ident = len({v.identity_id for v in voices})
    print(f"naive {args.size} recipes + write: {t_naive:.2f} s wall, {c_naive:.2f} s CPU")
    print(
        f"library {len(voices)} voices ({n_ident} identities) built + written: {t_ours:.2f} s wall, "
        f"{c_ours:.2f} s CPU; loaded in {t_load:.2f} s wall, {c_load:.2f} s CPU"
    )
    print(f"library file: {size_mb:.2f} MB ({size_mb * 1e6 / len(voices):.0f} bytes per voice)")
    report(
        f"voices build {args.size} (identities × variants, agents, metadata)",
        t_ours,
        "s",
        baseline=t_naive,
        ratio=t_ours / t_naive,
        goal="< 30 s",
        note=f"wall; CPU {c_ours:.2f} s vs {c_naive:.2f} s; baseline: naive convex-blend recipes written the same way",
    )
    report("voices library size on disk", size_mb, "MB", note=f"{len(voices)} voices, Parquet")
    report("voices library load", t_load, "s", note=f"wall; CPU {c_load:.2f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
