"""The voice library's distinctness / intelligibility trade-off, measured (see voice_library/clarity.py).

    python bench/voice_tradeoff.py measure --work WORK --part 0/2   # one process per core
    python bench/voice_tradeoff.py measure --work WORK --part 1/2
    python bench/voice_tradeoff.py report --work WORK [--png curve.png]

Jobs, in this order (a partial measurement still reports what it has):
  1. Kokoro's shipped voices (the TTS's own floor, and the privacy references on these probes);
  2. every identity of the shipped pool at warp scale 1 (as searched) and 0.5;
  3. a seeded sample of identities at scale 0 (plain convex blends, no WORLD) and 0.75;
  4. prosodic extremes (speed 0.9 / pitch -4 %, speed 1.1 / pitch +4 %) of a smaller sample
     at scales 0.5 and 1, for the variant bounds;
  5. when 1-4 are done (run `measure` again): scale 0.25 for every identity that neither scale 1
     nor 0.5 made clear in both languages;
  6. then scale 0.75 (the sample's best point) for every other identity, and speed 1.05 /
     pitch +2 % of the variant sample at scales 0.5 and 1.

The checker's own error on real speech is bench/asr_real_speech.py.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SAMPLE = 48
VARIANT_SAMPLE = 12
SCALES_ALL = (1.0, 0.5)
SCALES_SAMPLE = (0.0, 0.75)
EXTREMES = ((0.9, 0.96), (1.1, 1.04))
MILD_FAST = (1.05, 1.02)
BOUND = 0.94  # the shipped pool's distinctness bound on eight-sentence centroids (see the README)


def plan(pool, work: str | None = None):
    from voice_library.bounds import KOKORO_BASE_F0_HZ
    from voice_library.clarity import job, shipped_jobs

    ids = sorted(pool.identities, key=lambda i: i.identity_id)
    rng = np.random.default_rng(0)
    sample = [ids[k] for k in sorted(rng.permutation(len(ids))[:SAMPLE])]
    vsample = sample[:VARIANT_SAMPLE]
    jobs = shipped_jobs(KOKORO_BASE_F0_HZ)
    jobs += [job(i, s) for s in SCALES_ALL for i in ids]
    jobs += [job(i, 0.0) for i in sample]
    jobs += [job(i, s, sp, pf) for s in (0.5, 1.0) for i in vsample for sp, pf in EXTREMES]
    jobs += [job(i, 0.75) for i in sample]
    # 5. once 1-4 are measured: scale 0.25 for every identity that neither 1 nor 0.5 made clear in
    #    both languages (a last chance before it serves one language or none)
    if work is not None:
        from voice_library.clarity import LANGS, load_results, summarise

        try:
            m = summarise(load_results(work))
        except FileNotFoundError:
            m = {}
        if all(j.key in m for j in jobs):
            clear = {
                x.source_id
                for x in m.values()
                if x.scale in SCALES_ALL
                and x.speed == 1.0
                and x.pitch_factor == 1.0
                and len(x.serves()) == len(LANGS)
            }
            jobs += [job(i, 0.25) for i in ids if i.identity_id not in clear]
            # 6. the sample's best point (scale 0.75) for every other identity, and a milder fast
            #    extreme for the variant bound (the fast one above was less clear than the centre)
            in_sample = {i.identity_id for i in sample}
            jobs += [job(i, 0.75) for i in ids if i.identity_id not in in_sample]
            jobs += [job(i, s, *MILD_FAST) for s in (0.5, 1.0) for i in vsample]
    return jobs, sample, vsample


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("measure")
    m.add_argument("--work", required=True)
    m.add_argument("--part", default="0/1")
    m.add_argument("--pool", default=None)
    r = sub.add_parser("report")
    r.add_argument("--work", required=True)
    r.add_argument("--pool", default=None)
    r.add_argument("--png", default=None)
    args = ap.parse_args()
    from voice_library.pool import SEARCHED_POOL_PATH, load_pool

    pool = load_pool(args.pool or SEARCHED_POOL_PATH)
    jobs, sample, vsample = plan(pool, args.work)
    if args.cmd == "measure":
        from pipelines.voices_cli import _models, _say
        from voice_library.clarity import run_jobs

        tts, enc, asr = _models()
        i, _, n = args.part.partition("/")
        run_jobs(jobs, args.work, tts=tts, encoder=enc, asr=asr, part=(int(i), int(n)), log=_say)
        return 0
    return report(args, pool, jobs, sample, vsample)


def report(args, pool, jobs, sample, vsample) -> int:
    import json

    from voice_library.clarity import LANGS, curve_point, load_results, summarise

    m = summarise(load_results(args.work))
    done = lambda keys: [m[k] for k in keys if k in m]  # noqa: E731
    key = {(j.source_id, j.scale, j.speed, j.pitch_factor): j.key for j in jobs}
    out: dict = {"measured_jobs": len(m), "planned_jobs": len(jobs)}
    shipped = [v for v in m.values() if v.source_id.startswith("kokoro:")]
    out["tts_floor_shipped_voices"] = {
        v.source_id: {lang: round(v.error[lang], 4) for lang in LANGS} for v in shipped
    }
    ids = sorted(i.identity_id for i in pool.identities)
    sample_ids = [i.identity_id for i in sample]
    out["curve_sample"] = {}
    for s in (0.0, 0.5, 0.75, 1.0):
        vs = done(key.get((i, s, 1.0, 1.0)) for i in sample_ids)
        if len(vs) == len(sample_ids):
            out["curve_sample"][f"{s:g}"] = curve_point(vs, BOUND)
    out["curve_pool"] = {}
    fam = {i.identity_id: i.family for i in pool.identities}
    for s in (0.5, 0.75, 1.0):
        vs = done(key.get((i, s, 1.0, 1.0)) for i in ids)
        if len(vs) == len(ids):
            out["curve_pool"][f"{s:g}"] = curve_point(vs, BOUND)
            out["curve_pool"][f"{s:g}"]["by_family"] = {
                f: curve_point([v for v in vs if fam[v.source_id] == f], BOUND)
                for f in sorted(set(fam.values()))
            }
    from voice_library.pool import DEFAULT_POOL_PATH, load_pool

    refined = load_pool(DEFAULT_POOL_PATH)
    if refined.meta.get("clarity"):
        by_cand = {i.candidate_id: i.identity_id for i in pool.identities}
        chosen = [key.get((by_cand[i.candidate_id], i.warp_scale, 1.0, 1.0)) for i in refined.identities]
        serves = {k: i.languages for k, i in zip(chosen, refined.identities, strict=True)}
        out["shipped_pool"] = curve_point(done(chosen), refined.max_identity_cosine, languages=serves)
        out["shipped_pool"]["by_warp_scale"] = refined.meta["counts"].get("by_warp_scale")
    # the bound as a dimension: identities distinct at each bound (greedy) and how well the encoder
    # then tells them apart on held-back sentences
    from voice_library.clarity import distinct_count, speaker_id
    from voice_library.pool import greedy_accept

    out["bound_sweep"] = {}
    for s in (1.0, 0.75, 0.5):
        vs = done(key.get((i, s, 1.0, 1.0)) for i in ids)
        if len(vs) == len(ids):
            c = np.stack([v.centroid for v in vs])
            out["bound_sweep"][f"{s:g}"] = {
                f"{b:g}": {
                    "distinct": distinct_count(vs, b),
                    **speaker_id([vs[k] for k in greedy_accept(c, b)]),
                }
                for b in (0.88, 0.90, 0.92, 0.93, 0.94, 0.95)
            }
    out["variants"] = {}
    for s in (0.5, 1.0):
        rows = {}
        for sp, pf in [(1.0, 1.0), *EXTREMES, MILD_FAST]:
            vs = done(key.get((i.identity_id, s, sp, pf)) for i in vsample)
            if len(vs) == len(vsample):
                rows[f"speed {sp:g} pitch x{pf:g}"] = {
                    lang: round(float(np.mean([v.error[lang] for v in vs])), 4) for lang in LANGS
                }
        out["variants"][f"{s:g}"] = rows
    text = json.dumps(out, indent=1, ensure_ascii=False)
    print(text)
    Path(args.work, "report.json").write_text(text, encoding="utf-8")
    if args.png and out["curve_sample"]:
        plot(out, args.png)
    return 0


def plot(out: dict, png: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = sorted(out["curve_sample"].items(), key=lambda kv: float(kv[0]))
    s = [float(k) for k, _ in pts]
    fig, ax = plt.subplots(1, 2, figsize=(10, 3.8))
    n = pts[0][1]["identities"]
    b = f"{BOUND:g}"
    ax[0].plot(s, [p["distinct_0.9"] / n for _, p in pts], "o-", label="distinct at cos ≤ 0.90 (share)")
    ax[0].plot(s, [p[f"distinct_{b}"] / n for _, p in pts], "o-", label=f"distinct at cos ≤ {b} (share)")
    ax[0].plot(
        s,
        [p[f"distinct_clear_both_{b}"] / n for _, p in pts],
        "o--",
        label=f"distinct at {b} and clear in zh+en",
    )
    ax[0].plot(s, [p["speaker_id_accuracy"] for _, p in pts], "s-", label="speaker-ID accuracy")
    ax[0].plot(s, [p["speaker_id_eer"] for _, p in pts], "^-", label="EER")
    ax[0].set_xlabel("warp scale (0 = plain convex blend, 1 = as searched)")
    ax[0].set_title(f"distinctness ({n} identities)")
    ax[0].legend(fontsize=7)
    ax[1].plot(s, [p["mean_error_zh"] for _, p in pts], "o-", label="mean CER zh")
    ax[1].plot(s, [p["mean_error_en"] for _, p in pts], "o-", label="mean WER en")
    ax[1].plot(s, [p["share_over_zh"] for _, p in pts], "s--", label="share of voices CER zh > 0.10")
    ax[1].plot(s, [p["share_over_en"] for _, p in pts], "s--", label="share of voices WER en > 0.10")
    ax[1].set_xlabel("warp scale")
    ax[1].set_title("intelligibility (four held-out probes per language)")
    ax[1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(png, dpi=110)


if __name__ == "__main__":
    raise SystemExit(main())
