"""Does the Chinese front end change what the listener hears? The same sentences, spoken by plain base
voices (no blend, no WORLD warp) with misaki's default front end (per-word pinyin, no tone sandhi)
and with ``kespeechchat.backends.zh_g2p`` (phrase dictionary for polyphonic characters, tone
sandhi), read back by the pipeline's checker (Whisper base); mean CER of each, in one process.

The sentences are everyday speech that carries the cases: 一/不 sandhi, third-tone runs, 还/行/长/
重/乐/都/地 by their word, reduplication. Also counts sentences whose phonemes differ at all.

    .venv/bin/python bench/zh_frontend.py [--voices jf_alpha,jf_nezumi,jm_kumo] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from _common import machine, report

SENTENCES = (
    "你好，我想去银行还钱。",
    "我们一起去看看那个展览馆吧。",
    "这个问题一样重要，不对吗？",
    "他慢慢地走回了家。",
    "长大以后，他重新开始学音乐。",
    "首都的冬天一般都很冷。",
    "我觉得这件事不太可能。",
    "你可以把书还给图书馆。",
    "快乐的时候，时间过得很快。",
    "请你数一数一共有几个苹果。",
    "老鼠躲在小小的洞里。",
    "我不会忘记这一天。",
    "这条河的长度大约有一千公里。",
    "他高兴地说，明天不用上班。",
    "每个人都有自己的爱好。",
    "我们应该好好休息一下。",
)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--voices", default="jf_alpha,jf_nezumi,jm_kumo")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()

    from kespeechchat.backends.asr import FasterWhisperASR
    from kespeechchat.backends.tts import KokoroTTS
    from kespeechchat.metrics import error_rate
    from kespeechchat.voice import VoiceRecipe

    voices = [
        VoiceRecipe(
            voice_id=name,
            backend="kokoro",
            role="user",
            identity_id=name,
            base_weights={name: 1.0},
            speed=1.0,
            pitch_ratio=1.0,
            formant_ratio=1.0,
            language="zh",
            gender="male" if name.startswith("jm") else "female",
            age_band="adult",
        )
        for name in args.voices.split(",")
    ]
    asr = FasterWhisperASR()
    asr.setup()
    fronts = {name: KokoroTTS(zh_frontend=name) for name in ("misaki", "sandhi")}
    changed = sum(
        1 for s in SENTENCES if fronts["misaki"].phonemize(s, "zh") != fronts["sandhi"].phonemize(s, "zh")
    )
    rows = []
    t0 = time.perf_counter()
    for front, tts in fronts.items():
        for v in voices:
            audio = [tts.synthesize(s, "zh", v) for s in SENTENCES]
            hyps = asr.transcribe([(a, tts.sample_rate_hz, "zh") for a in audio])
            for s, h in zip(SENTENCES, hyps, strict=True):
                rows.append(
                    {"front": front, "voice": v.voice_id, "text": s, "asr": h, "cer": error_rate(s, h, "zh")}
                )
    mean = {
        f: sum(r["cer"] for r in rows if r["front"] == f) / sum(1 for r in rows if r["front"] == f)
        for f in fronts
    }
    over = {f: sum(1 for r in rows if r["front"] == f and r["cer"] > 0.10) for f in fronts}
    n = len(SENTENCES) * len(voices)
    print(f"{machine()}; {len(SENTENCES)} sentences x {len(voices)} voices, {time.perf_counter() - t0:.0f} s")
    print(f"sentences whose phonemes differ: {changed}/{len(SENTENCES)}")
    for f in fronts:
        print(f"  {f:7s} mean CER {mean[f]:.4f}   utterances with CER > 0.10: {over[f]}/{n}")
    for r in rows:
        if r["cer"] > 0:
            print(f"  [{r['front']}] {r['voice']} {r['cer']:.2f}  {r['text']} -> {r['asr']}")
    report(
        "zh front end: mean CER (sandhi) vs (misaki), plain base voices",
        mean["sandhi"],
        "CER",
        baseline=mean["misaki"],
        ratio=mean["sandhi"] / mean["misaki"] if mean["misaki"] else None,
        note=f"{len(SENTENCES)} sentences x {len(voices)} voices; >0.10: {over['sandhi']} vs {over['misaki']} of {n}",
    )
    if args.json:
        args.json.write_text(
            json.dumps({"mean": mean, "over": over, "rows": rows}, ensure_ascii=False, indent=1)
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
