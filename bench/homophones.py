"""What the Chinese scorer forgives, on a finished run: each zh turn's CER counted by character only
(``literal_error_rate``) and by character or toned reading (``error_rate``, what the pipeline gates on),
how many turns and dialogues each count passes at the run's bound, and every pair of characters the
reading rule counted as right, so that a reader can check that each really sounds the same.

    .venv/bin/python bench/homophones.py [runs/demo] [--stage repair]
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

from _common import REPO, report


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir", type=Path, nargs="?", default=REPO / "runs" / "demo")
    ap.add_argument("--stage", default="repair", help="the stage whose final scores to read (repair, verify)")
    args = ap.parse_args()

    import pyarrow.parquet as pq
    import yaml

    from kespeechchat.metrics import error_rate, literal_error_rate, zh_read_alike

    cfg = yaml.safe_load((args.run_dir / "config.yaml").read_text(encoding="utf-8"))
    bound = float(cfg["select"]["max_cer_zh"])
    files = sorted((args.run_dir / args.stage / "data").glob("shard-*.parquet"))
    if not files:
        raise SystemExit(f"{args.run_dir / args.stage}: no finished shards")
    turns = literal_pass = sound_pass = 0
    literal_sum = sound_sum = 0.0
    dialogues = dlg_literal = dlg_sound = 0
    pairs: Counter = Counter()
    for f in files:
        t = pq.read_table(f, columns=["dialogue_id", "language", "spoken_texts", "asr_texts"]).to_pylist()
        for row in t:
            if row["language"] != "zh":
                continue
            dialogues += 1
            ok_l = ok_s = True
            for text, heard in zip(row["spoken_texts"], row["asr_texts"], strict=True):
                if not isinstance(heard, str):
                    ok_l = ok_s = False
                    continue
                lit, snd = literal_error_rate(text, heard, "zh"), error_rate(text, heard, "zh")
                turns += 1
                literal_sum += lit
                sound_sum += snd
                literal_pass += lit <= bound
                sound_pass += snd <= bound
                ok_l &= lit <= bound
                ok_s &= snd <= bound
                pairs.update(f"{a}→{b} ({p})" for a, b, p in zh_read_alike(text, heard))
            dlg_literal += ok_l
            dlg_sound += ok_s
    if not turns:
        raise SystemExit("no zh turns with a transcript in this run")
    print(f"{args.run_dir} ({args.stage}): {dialogues} zh dialogue(s), {turns} turn(s), bound CER ≤ {bound}")
    print(
        f"  mean CER by character {literal_sum / turns:.4f}, by character or reading {sound_sum / turns:.4f}"
    )
    print(f"  turns within the bound: by character {literal_pass}, by character or reading {sound_pass}")
    print(
        f"  dialogues with every turn within it: by character {dlg_literal}, by character or reading {dlg_sound}"
    )
    print(f"  pairs counted right by their reading ({sum(pairs.values())}):")
    for pair, n in pairs.most_common():
        print(f"    {pair} ×{n}")
    report(
        "zh CER by character only (final scores of a run)", literal_sum / turns, "cer", note=str(args.run_dir)
    )
    report(
        "zh CER by character or toned reading (what the gate uses)",
        sound_sum / turns,
        "cer",
        baseline=literal_sum / turns,
        ratio=(sound_sum / literal_sum) if literal_sum else None,
        note=json.dumps({"turns": turns, "forgiven_pairs": sum(pairs.values())}),
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
