"""Is the checker itself sound? CER/WER of the verify stage's ASR on real recordings with transcripts.

Runs the configured embedded recogniser (faster-whisper, Whisper base) on ``data/audio``
the way verify does (language forced, all clips in one packed batch) and one clip at a time, and
prints the error rate per file with the same normalisation verify uses (numbers, punctuation, case,
traditional -> simplified).

    .venv/bin/python bench/asr_real_speech.py [--audio-dir DIR] [--json OUT]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

DEFAULT_AUDIO = Path(__file__).resolve().parent.parent / "data" / "audio"  # shipped with the repository


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--audio-dir", type=Path, default=DEFAULT_AUDIO)
    ap.add_argument(
        "--model-dir", default=None, help="CTranslate2 Whisper directory (default: embedded Whisper base)"
    )
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()

    from kespeechchat.audio import load_audio
    from kespeechchat.backends.asr import FasterWhisperASR
    from kespeechchat.metrics import error_kind, error_rate, normalize_for_scoring

    tsv = args.audio_dir / "transcripts.tsv"
    if not tsv.is_file():
        raise SystemExit(f"{tsv}: not found (expected file, language, transcript columns)")
    with open(tsv, encoding="utf-8") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    clips = []
    for r in rows:
        x, sr = load_audio(args.audio_dir / r["file"])
        clips.append((x, sr, r["language"]))
    packed_asr = FasterWhisperASR(args.model_dir, num_threads=args.threads)
    single_asr = FasterWhisperASR(args.model_dir, num_threads=args.threads, pack=False)
    packed_asr.setup()
    single_asr.setup()
    t0 = time.perf_counter()
    packed = packed_asr.transcribe(clips)
    t_packed = time.perf_counter() - t0
    t0 = time.perf_counter()
    single = single_asr.transcribe(clips)
    t_single = time.perf_counter() - t0
    audio_s = sum(x.size / sr for x, sr, _ in clips)

    out = []
    from kespeechchat.config import ASRConfig

    recheck = ASRConfig().recheck_above
    print(
        f"{'file':42s} {'lang':4s} {'metric':6s} {'packed':>7s} {'single':>7s} {'verify':>7s}  hypothesis (packed)"
    )
    for r, p, s in zip(rows, packed, single, strict=True):
        lang = r["language"]
        ep, es = error_rate(r["transcript"], p, lang), error_rate(r["transcript"], s, lang)
        # verify keeps the batched transcript unless it scores above asr.recheck_above; then the better of both
        ev = min(ep, es) if recheck is not None and ep > recheck else ep
        print(f"{r['file']:42s} {lang:4s} {error_kind(lang):6s} {ep:7.3f} {es:7.3f} {ev:7.3f}  {p}")
        if ep > 0:
            print(
                f"{'':42s} {'':4s} {'ref':6s} {'':7s} {'':7s} {'':7s}  {normalize_for_scoring(r['transcript'], lang)}"
            )
            print(f"{'':42s} {'':4s} {'hyp':6s} {'':7s} {'':7s} {'':7s}  {normalize_for_scoring(p, lang)}")
        out.append(
            {
                "file": r["file"],
                "language": lang,
                "metric": error_kind(lang),
                "packed": ep,
                "single": es,
                "verify": ev,
                "hypothesis": p,
            }
        )
    for lang in ("zh", "en"):
        v = [o for o in out if o["language"] == lang]
        if v:
            print(
                f"mean {error_kind(lang).upper()} {lang}: packed {sum(o['packed'] for o in v) / len(v):.3f}, "
                f"single {sum(o['single'] for o in v) / len(v):.3f}, as verify scores "
                f"{sum(o['verify'] for o in v) / len(v):.3f} over {len(v)} files"
            )
    print(
        f"{audio_s:.1f} s of audio: packed batch {t_packed:.1f} s (RTF {t_packed / audio_s:.3f}), "
        f"one clip at a time {t_single:.1f} s (RTF {t_single / audio_s:.3f})"
    )
    from _common import report

    for lang in ("zh", "en"):
        v = [o for o in out if o["language"] == lang]
        if v:
            report(
                f"real speech mean {error_kind(lang).upper()} {lang} (as verify scores)",
                sum(o["verify"] for o in v) / len(v),
                error_kind(lang),
                baseline=sum(o["single"] for o in v) / len(v),
                note=f"{len(v)} files; baseline: one clip at a time",
            )
    report(
        "ASR packed vs one clip at a time (real speech)",
        t_packed,
        "s",
        baseline=t_single,
        ratio=t_single / t_packed,
    )
    if args.json:
        args.json.write_text(
            json.dumps(
                {"files": out, "packed_s": t_packed, "single_s": t_single, "audio_s": audio_s},
                indent=1,
                ensure_ascii=False,
            )
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
