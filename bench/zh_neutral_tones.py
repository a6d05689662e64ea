"""Do the front end's neutral tones cost clarity? The current zh front end against the same front end
with every neutral tone that tone sandhi adds to a longer word put back to the dictionary's tone.

Kokoro v1.0 was trained on misaki's legacy phonemes (pypinyin's default dictionary, no sandhi), so
the neutral tones our sandhi adds (打算 dǎ suan, 告诉 gào su, 一个 yí ge) may be rare in its training
data; Whisper heard 打算 as 大三 in most failing audit probes. This says every sentence (real zh
text whose phonemes differ between the two front ends) with a few library voices, both ways, and
compares the checker's error: per clip, and whether the changed words themselves are heard.

    python bench/zh_neutral_tones.py measure --text data/text/zh_llamafactory_alpaca_zh_demo.json \
        --work W --part 0/2          # and --part 1/2 in a second process
    python bench/zh_neutral_tones.py report --work W
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
from math import comb
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

HAN = re.compile("[\u4e00-\u9fff]+")


def sentences(path: Path, lo: int = 10, hi: int = 30) -> list[str]:
    """Han-only sentences of the outputs of an Alpaca file."""
    out: list[str] = []
    for r in json.loads(path.read_text(encoding="utf-8")):
        for s in re.split(r"(?<=[。！？])", r.get("output", "")):
            if lo <= len(s) <= hi and re.fullmatch(r"[\u4e00-\u9fff，。！？、：；]+", s):
                out.append(s)
    return list(dict.fromkeys(out))


def restore_tones(words: list[tuple[str, list[str]]]) -> list[tuple[str, list[str]]]:
    """The front end's (word, syllables), but a neutral tone that sandhi put on a syllable of a
    longer word goes back to the dictionary's tone."""
    from pypinyin import Style, lazy_pinyin

    out = []
    for word, syl in words:
        read = lazy_pinyin(word, style=Style.TONE3, neutral_tone_with_five=True)
        if len(word) > 1 and len(read) == len(syl) == len(word):
            syl = [
                b if s.endswith("5") and not b.endswith("5") and s[:-1] == b[:-1] else s
                for s, b in zip(syl, read, strict=True)
            ]
        out.append((word, syl))
    return out


def changed_words(g2p, text: str) -> list[str]:
    """Words whose syllables differ between the two front ends."""
    out = []
    for run in HAN.findall(text):
        a = g2p.pinyin(run)
        b = restore_tones(a)
        out += [w for (w, x), (_, y) in zip(a, b, strict=True) if x != y]
    return out


def measure(args) -> None:
    from kespeechchat.backends import zh_g2p
    from kespeechchat.backends.asr import make_asr
    from kespeechchat.backends.tts import make_tts
    from kespeechchat.config import load_config
    from kespeechchat.metrics import error_rate
    from voice_library.recipes import agent_voices, build_library

    g2p = zh_g2p.ZhG2P()
    pool = [s for s in sentences(args.text) if changed_words(g2p, s)]
    random.Random(args.seed).shuffle(pool)
    part, nparts = map(int, args.part.split("/"))
    todo = pool[: args.n][part::nparts]
    cfg = load_config(Path(__file__).resolve().parent.parent / "configs" / "demo.yaml")
    lib = build_library(400, 0) + agent_voices("kokoro")
    agents = [v for v in lib if v.role == "agent" and v.language in ("zh", "multi")]
    users: dict[str, object] = {}
    for v in lib:
        if v.role == "user" and v.language in ("zh", "multi"):
            users.setdefault(v.identity_id, v)
    ids = sorted(users)
    random.Random(0).shuffle(ids)
    voices = agents[:2] + [users[i] for i in ids[: args.voices - 2]]
    tts = make_tts(cfg.tts)
    tts.setup()
    asr = make_asr(cfg.asr)
    asr.setup()
    orig = zh_g2p.ZhG2P.pinyin

    def restored(self, text):
        return restore_tones(orig(self, text))

    out = []
    try:
        for s in todo:
            for variant in ("current", "restored"):
                zh_g2p.ZhG2P.pinyin = orig if variant == "current" else restored
                clips = [tts.synthesize(s, "zh", v, seed=0, attempt=1) for v in voices]
                hyps = [asr.transcribe([(a, tts.sample_rate_hz, "zh")])[0] for a in clips]
                errs = [error_rate(s, h, "zh") for h in hyps]
                out.append({"text": s, "variant": variant, "errors": errs, "hyps": hyps})
                print(variant, [round(e, 3) for e in errs], s, flush=True)
    finally:
        zh_g2p.ZhG2P.pinyin = orig
    args.work.mkdir(parents=True, exist_ok=True)
    (args.work / f"part-{part}.json").write_text(json.dumps(out, ensure_ascii=False), encoding="utf-8")


def report(args) -> None:
    import numpy as np

    from kespeechchat.backends.zh_g2p import ZhG2P

    rows = [r for f in sorted(args.work.glob("part-*.json")) for r in json.loads(f.read_text("utf-8"))]
    a = {r["text"]: r for r in rows if r["variant"] == "current"}
    b = {r["text"]: r for r in rows if r["variant"] == "restored"}
    texts = [t for t in a if t in b]
    ea = np.array([a[t]["errors"] for t in texts])
    eb = np.array([b[t]["errors"] for t in texts])
    n, k = int((ea != eb).sum()), int((eb < ea).sum())
    p = sum(comb(n, i) for i in range(k, n + 1)) / 2**n if n else 1.0
    print(f"{len(texts)} sentences x {ea.shape[1]} voices")
    print(f"mean CER: current {ea.mean():.4f}, restored {eb.mean():.4f}")
    print(f"clips over 0.10: current {(ea > 0.1).sum()}, restored {(eb > 0.1).sum()} of {ea.size}")
    print(
        f"restored better / worse / same: {k} / {int((eb > ea).sum())} / {int((ea == eb).sum())} (sign test p = {p:.3f})"
    )
    g2p = ZhG2P()
    heard_a = heard_b = total = 0
    for t in texts:
        for w in set(changed_words(g2p, t)):
            for ha, hb in zip(a[t]["hyps"], b[t]["hyps"], strict=True):
                total += 1
                heard_a += w in ha
                heard_b += w in hb
    print(f"changed words heard as written: current {heard_a}/{total}, restored {heard_b}/{total}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("measure")
    m.add_argument("--text", type=Path, required=True)
    m.add_argument("--work", type=Path, required=True)
    m.add_argument("--part", default="0/1")
    m.add_argument("--n", type=int, default=28, help="sentences")
    m.add_argument("--voices", type=int, default=5, help="the two zh agents and library user identities")
    m.add_argument("--seed", type=int, default=1)
    r = sub.add_parser("report")
    r.add_argument("--work", type=Path, required=True)
    args = ap.parse_args()
    measure(args) if args.cmd == "measure" else report(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
