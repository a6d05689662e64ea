"""Would another voice have saved a rejected dialogue? The turns that failed ASR after every repair
attempt, said again by other identities of the same language.

If most other identities say a failing turn clearly, the voice was the problem and repair should try
another identity; if they fail too, the text is hard for the TTS (or the checker) whoever speaks it.
Identities come from a library built from the shipped pool (``--size`` user voices, one voice per
identity, seeded order), never the one that failed.

    python bench/voice_swap.py runs/demo [--voices 8]
"""

from __future__ import annotations

import argparse
import glob
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def failing_turns(run: Path, bound: dict[str, float]) -> list[tuple[str, str, str, str]]:
    """(dialogue, language, voice, text) of every turn over the bound in dialogues select rejected."""
    import pyarrow.parquet as pq

    rejected: set[str] = set()
    for f in glob.glob(str(run / "select" / "rejected" / "*.parquet")):
        t = pq.read_table(f, columns=["dialogue_id", "reject_reason"])
        rejected |= {r["dialogue_id"] for r in t.to_pylist() if r["reject_reason"] == "asr_mismatch"}
    out = []
    for f in sorted(glob.glob(str(run / "repair" / "data" / "*.parquet"))):
        t = pq.read_table(f, columns=["dialogue_id", "language", "voice_ids", "spoken_texts", "error_rates"])
        for r in t.to_pylist():
            if r["dialogue_id"] not in rejected:
                continue
            for v, text, e in zip(r["voice_ids"], r["spoken_texts"], r["error_rates"], strict=True):
                if e is not None and e > bound[r["language"]]:
                    out.append((r["dialogue_id"], r["language"], v, text))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", type=Path)
    ap.add_argument("--voices", type=int, default=8, help="other identities per turn")
    ap.add_argument("--size", type=int, default=400)
    args = ap.parse_args()

    import numpy as np

    from kespeechchat.backends.asr import make_asr
    from kespeechchat.backends.tts import make_tts
    from kespeechchat.config import load_config
    from kespeechchat.metrics import error_rate
    from voice_library.recipes import build_library, load_library

    cfg = load_config(args.run / "config.yaml")
    bound = {"zh": cfg.select.max_cer_zh, "en": cfg.select.max_wer_en}
    turns = failing_turns(args.run, bound)
    if not turns:
        print("no turn of a dialogue rejected for asr_mismatch")
        return 0
    run_lib = {v.voice_id: v for v in load_library(args.run / "voices" / "library.parquet")}
    by_lang: dict[str, dict[str, object]] = {"zh": {}, "en": {}}
    for v in build_library(args.size, 0):
        for lang in ("zh", "en"):
            if v.language in (lang, "multi"):
                by_lang[lang].setdefault(v.identity_id, v)
    tts = make_tts(cfg.tts)
    tts.setup()
    asr = make_asr(cfg.asr)
    asr.setup()
    passed = tried = 0
    for did, lang, vid, text in turns:
        own = run_lib[vid].identity_id if vid in run_lib else None
        ids = sorted(i for i in by_lang[lang] if i != own)
        random.Random(did).shuffle(ids)
        errs = []
        for iid in ids[: args.voices]:
            audio = tts.synthesize(text, lang, by_lang[lang][iid], seed=0, attempt=1)
            hyp = asr.transcribe([(audio, tts.sample_rate_hz, lang)])[0]
            errs.append(error_rate(text, hyp, lang))
        ok = sum(e <= bound[lang] for e in errs)
        passed += ok
        tried += len(errs)
        print(
            f"{did} {lang}: {ok}/{len(errs)} other identities within {bound[lang]} "
            f"(mean error {np.mean(errs):.3f})  {text[:40]}",
            flush=True,
        )
    print(f"\n{len(turns)} failing turns: {passed}/{tried} renderings by other identities within the bound")
    return 0


if __name__ == "__main__":
    sys.exit(main())
