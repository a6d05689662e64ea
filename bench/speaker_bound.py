"""Where to put select.min_speaker_similarity: same-voice vs other-voice cosine on the run's voices.

For library voices (``voice_library.recipes.build_library``) and the agent voices it synthesises a
few zh and en sentences per voice with the embedded TTS, embeds them with the run's speaker
encoder and compares each utterance with

* its own voice's reference probe (what verify does)          -> "same"
* the reference probes of voices of *other identities*        -> "other"
* the nearest other identity's probe                          -> "nearest other"

and prints the distributions, the equal-error threshold and, for candidate bounds, how many
genuine utterances would be rejected and how many wrong-voice utterances let through. The same
run also measures the speaking rate (spoken chars per second of speech), silence ratio and DNSMOS
of clean TTS output, which the rate and silence bounds are set from.

    .venv/bin/python bench/speaker_bound.py --voices 12 --out /tmp/speaker_bound.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

SENTENCES = {
    "zh": [
        "好的，谢谢你。",
        "你看到我的狗了吗？",
        "我明天早上八点要去机场接我的朋友。",
        "这家餐厅的菜很好吃，不过价格有点贵，我们下次可以试试别的地方。",
        "学习一门新的语言需要时间和耐心，每天坚持练习半个小时会有很大的帮助。",
        "请把窗户关上，外面风太大了。",
    ],
    "en": [
        "Sure, thanks.",
        "Have you seen my dog anywhere?",
        "I need to pick up my friend from the airport at eight tomorrow morning.",
        "The food at this restaurant is great, but it is a little expensive, so let's try somewhere else next time.",
        "Learning a new language takes time and patience, and practising for half an hour every day helps a lot.",
        "Please close the window, it is very windy outside.",
    ],
}


def percentile(v: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(v), q)) if v else float("nan")


def eer(same: list[float], other: list[float]) -> tuple[float, float]:
    """(threshold, equal error rate): where false rejects of same equal false accepts of other."""
    best = (float("nan"), 1.0)
    best_gap = 2.0
    for t in np.linspace(0.0, 1.0, 1001):
        frr = float(np.mean(np.asarray(same) < t))
        far = float(np.mean(np.asarray(other) >= t))
        if abs(frr - far) < best_gap:
            best_gap, best = abs(frr - far), (float(t), (frr + far) / 2)
    return best


def _gate(utts: list[dict], refs: dict, ident: dict, sel: Any) -> tuple[float, float, float, float]:
    """(EER, its cosine, genuine rejected, wrong identity accepted at the default bounds) against ``refs``."""
    from kespeechchat.backends.speaker import cosine
    from pipelines.stages.select import speaker_bound

    same, other, rejected, accepted = [], [], [], []
    for u in utts:
        bound = speaker_bound(sel, u["duration_s"])
        c = cosine(u["emb"], refs[(u["voice_id"], u["language"])])
        same.append(c)
        rejected.append(c < bound)
        for (vid, lang), e in refs.items():
            if lang == u["language"] and ident[vid] != u["identity_id"]:
                o = cosine(u["emb"], e)
                other.append(o)
                accepted.append(o >= bound)
    t, rate = eer(same, other)
    return rate, t, float(np.mean(rejected)), float(np.mean(accepted))


def _compare_refs(
    utts: list[dict], refs: dict, short_refs: dict, ref_audio_s: dict, ident: dict, sel: Any
) -> None:
    """The speaker gate with the two-sentence reference probe and with its first sentence alone."""
    print("\nreference probe: both sentences vs the first sentence only (the same utterances)")
    print("  reference        audio s   EER (cosine)     genuine rejected   wrong identity accepted")
    for name, r in (("full", refs), ("first sentence", short_refs)):
        rate, t, rej, acc = _gate(utts, r, ident, sel)
        print(f"  {name:15s} {ref_audio_s[name]:8.1f}   {rate:.3f} ({t:.3f})   {rej:16.3f}   {acc:16.3f}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--voices", type=int, default=12, help="library voices (plus the 4 agent voices)")
    ap.add_argument("--per-language", type=int, default=3, help="sentences per voice and language")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--short-s", type=float, default=2.0, help="clips shorter than this are reported apart")
    ap.add_argument("--out", type=Path, default=None, help="write all measurements as JSON here")
    ap.add_argument(
        "--compare-short-ref",
        action="store_true",
        help="also embed a reference made of the probe's first sentence only, and compare the gates",
    )
    args = ap.parse_args()

    from kespeechchat.audio import audio_sanity
    from kespeechchat.backends.asr import FasterWhisperASR
    from kespeechchat.backends.quality import DNSMOSScorer
    from kespeechchat.backends.speaker import ResemblyzerEncoder, cosine
    from kespeechchat.backends.tts import KokoroTTS, split_sentences
    from kespeechchat.metrics import error_rate, spoken_chars
    from voice_library.recipes import agent_voices, build_library
    from voice_library.refs import PROBE_TEXTS

    voices = build_library(args.voices, args.seed) + agent_voices()
    tts, enc, mos, asr = KokoroTTS(), ResemblyzerEncoder(), DNSMOSScorer(), FasterWhisperASR()
    for m in (tts, enc, mos, asr):
        m.setup()
    sr = tts.sample_rate_hz
    t0 = time.perf_counter()
    refs: dict[tuple[str, str], np.ndarray] = {}
    short_refs: dict[tuple[str, str], np.ndarray] = {}  # --compare-short-ref: the probe's first sentence
    ref_audio_s = {"full": 0.0, "first sentence": 0.0}
    utts: list[dict] = []
    audio: list[np.ndarray] = []
    for k, v in enumerate(voices):
        for lang in ("zh", "en"):
            ref = tts.synthesize(PROBE_TEXTS[lang], lang, v)
            refs[(v.voice_id, lang)] = enc.embed(ref, sr)
            ref_audio_s["full"] += len(ref) / sr
            if args.compare_short_ref:
                first = split_sentences(PROBE_TEXTS[lang], lang)[0]
                short = tts.synthesize(first, lang, v)
                short_refs[(v.voice_id, lang)] = enc.embed(short, sr)
                ref_audio_s["first sentence"] += len(short) / sr
            n = len(SENTENCES[lang])
            for j in range(args.per_language):
                text = SENTENCES[lang][(k + j * 2) % n]
                x = tts.synthesize(text, lang, v)
                s = audio_sanity(x, sr)
                speech_s = s.duration_s * (1 - s.silence_ratio)
                utts.append(
                    {
                        "voice_id": v.voice_id,
                        "identity_id": v.identity_id,
                        "gender": v.gender,
                        "language": lang,
                        "text": text,
                        "duration_s": s.duration_s,
                        "silence_ratio": s.silence_ratio,
                        "chars_per_s": spoken_chars(text, lang) / speech_s,
                        "dnsmos_ovrl": mos.score(x, sr).ovrl,
                        "emb": enc.embed(x, sr),
                    }
                )
                audio.append(x)
        print(f"voice {k + 1}/{len(voices)} done ({time.perf_counter() - t0:.0f}s)", file=sys.stderr)
    hyps = asr.transcribe([(x, sr, u["language"]) for x, u in zip(audio, utts, strict=True)])
    ident = {v.voice_id: v.identity_id for v in voices}
    gender = {v.voice_id: v.gender for v in voices}
    for u, hyp in zip(utts, hyps, strict=True):
        u["error_rate"] = error_rate(u["text"], hyp, u["language"])
        u["same"] = cosine(u["emb"], refs[(u["voice_id"], u["language"])])
        u["others"] = [
            (cosine(u["emb"], e), gender[vid] != u["gender"])
            for (vid, lang), e in refs.items()
            if lang == u["language"] and ident[vid] != u["identity_id"]
        ]
        u["nearest_other"] = max(c for c, _ in u["others"])
    all_same = [u["same"] for u in utts]
    all_other = [c for u in utts for c, _ in u["others"]]
    t_eer, rate_eer = eer(all_same, all_other)
    print(f"\n{len(voices)} voices, {len(utts)} utterances; {enc.name} cosine to the voice's reference probe")
    for lo, hi in (
        (0.0, 99.0),
        (0.0, args.short_s),
        (args.short_s, 99.0),
        (args.short_s, args.short_s + 1.0),
    ):
        us = [u for u in utts if lo <= u["duration_s"] < hi]
        if not us:
            continue
        same = [u["same"] for u in us]
        other = [c for u in us for c, _ in u["others"]]
        cross = [c for u in us for c, x in u["others"] if x]
        nearest = [u["nearest_other"] for u in us]
        print(f"\n  clips of {lo:g}-{hi:g} s")
        for name, v in (
            ("same voice", same),
            ("other identities", other),
            ("other gender", cross),
            ("nearest other identity", nearest),
        ):
            if v:
                print(
                    f"    {name:24s} n={len(v):5d} mean {np.mean(v):.3f}  min {min(v):.3f}  p1 {percentile(v, 1):.3f}  "
                    f"p5 {percentile(v, 5):.3f}  median {np.median(v):.3f}  p95 {percentile(v, 95):.3f}  max {max(v):.3f}"
                )
        print("    bound   genuine rejected   wrong voice accepted: any other / other gender / nearest other")
        for b in (0.5, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9):
            frr = np.mean(np.asarray(same) < b)
            far = np.mean(np.asarray(other) >= b)
            far_x = np.mean(np.asarray(cross) >= b) if cross else float("nan")
            far_n = np.mean(np.asarray(nearest) >= b)
            print(f"    {b:.2f}    {frr:8.3f}            {far:8.3f} / {far_x:8.3f} / {far_n:8.3f}")
    print(f"\n  equal error rate (all clips) {rate_eer:.3f} at cosine {t_eer:.3f}")
    from _common import report

    from kespeechchat.config import SelectConfig

    sel = SelectConfig()
    _, _, genuine_rejected, wrong_accepted = _gate(utts, refs, ident, sel)
    report("speaker EER (resemblyzer, library voices)", rate_eer, "", note=f"at cosine {t_eer:.3f}")
    report("genuine turns rejected at the default speaker bounds", float(genuine_rejected), "share")
    report("wrong-identity turns accepted at the default speaker bounds", float(wrong_accepted), "share")
    if args.compare_short_ref:
        _compare_refs(utts, refs, short_refs, ref_audio_s, ident, sel)
    print("\nclean TTS output, per language")
    for lang in ("zh", "en"):
        us = [u for u in utts if u["language"] == lang]
        cps = [u["chars_per_s"] for u in us if spoken_chars(u["text"], lang) >= 6]
        sil = [u["silence_ratio"] for u in us]
        mo = [u["dnsmos_ovrl"] for u in us]
        er = [u["error_rate"] for u in us]
        print(
            f"  {lang}: chars/s (>=6 chars) min {min(cps):.2f} p5 {percentile(cps, 5):.2f} median {np.median(cps):.2f} "
            f"p95 {percentile(cps, 95):.2f} max {max(cps):.2f} | silence max {max(sil):.2f} p95 {percentile(sil, 95):.2f} "
            f"| DNSMOS min {np.nanmin(mo):.2f} p5 {percentile(mo, 5):.2f} median {np.nanmedian(mo):.2f} "
            f"| error rate mean {np.mean(er):.3f} max {max(er):.3f}"
        )
    if args.out:
        for u in utts:
            u.pop("emb")
        args.out.write_text(
            json.dumps({"utterances": utts, "eer": [t_eer, rate_eer], "other": other}, indent=1)
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
