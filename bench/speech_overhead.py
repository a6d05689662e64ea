"""Overhead of the synthesize and verify stages over calling the same models directly, and the gain of batched ASR.

On the same dialogues, in the same process, alternating so that machine load hits both alike:

* synthesize: ``SynthesizeStage.process`` (seeds, recipe lookup, NaN checks, FLAC encoding, table
  building) vs a plain loop of ``tts.synthesize`` over the same turns;
* verify: ``VerifyStage.process`` (FLAC decoding, one resample, audio sanity, batched ASR, speaker
  similarity, DNSMOS, error rates, table building) vs calling the same three models directly
  (one ASR batch, then embed and score each clip);
* ASR alone: the packed batch verify uses vs one clip at a time.

Times are reported per second of audio, and as ratios measured in this run (goal: stage overhead
<= 10 %). Voice reference probes are made before timing: they are a one-off per voice, not per turn.

    .venv/bin/python bench/speech_overhead.py [--dialogues 6] [--repeats 2]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

TEXTS = {
    "zh": [
        "你好，请问附近有没有好吃的餐厅？",
        "当然有，前面路口左转就有一家很受欢迎的面馆，味道很好，价格也不贵。",
        "我明天早上八点要去机场接我的朋友。",
        "那你最好早点出发，早上这个时间路上可能会堵车。",
        "学习一门新的语言需要时间和耐心。",
        "每天坚持练习半个小时，几个月以后你就会看到明显的进步。",
    ],
    "en": [
        "Hi, is there a good place to eat around here?",
        "Sure, turn left at the next corner and you will find a popular noodle shop that is cheap and tasty.",
        "I need to pick up my friend from the airport tomorrow morning.",
        "Then you should leave early, because the traffic can be heavy at that time.",
        "How long does it take to learn a new language?",
        "It depends, but practising for half an hour every day makes a big difference within a few months.",
    ],
}


def build_table(cfg, n: int):
    from kespeechchat.schema import table_from_rows
    from pipelines.voices import load_run_library, prepare_run_library

    prepare_run_library(cfg, cfg.run_dir)
    lib = load_run_library(cfg, cfg.run_dir)
    rows = []
    for k in range(n):
        lang = ("zh", "en")[k % 2]
        users = [v for v in lib if v.role == "user" and v.language in (lang, "multi")]
        agents = [v for v in lib if v.role == "agent" and v.language == lang]
        j = (k // 2) % 3
        rows.append(
            {
                "dialogue_id": f"bench-{k:03d}",
                "language": lang,
                "roles": ["user", "assistant"],
                "spoken_texts": TEXTS[lang][2 * j : 2 * j + 2],
                "voice_ids": [users[k % len(users)].voice_id, agents[k % len(agents)].voice_id],
            }
        )
    return table_from_rows(rows, ["dialogue_id", "language", "roles", "spoken_texts", "voice_ids"]), {
        v.voice_id: v for v in lib
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dialogues", type=int, default=6, help="two-turn dialogues, alternating zh and en")
    ap.add_argument(
        "--repeats",
        type=int,
        default=2,
        help="alternating (direct, stage) measurements; medians are reported",
    )
    ap.add_argument("--work-dir", type=Path, default=None)
    args = ap.parse_args()

    import numpy as np

    from kespeechchat.audio import decode_audio, resample
    from kespeechchat.backends.tts import turn_seed
    from kespeechchat.stage import Runtime
    from kespeechchat.testing import small_config
    from pipelines.stages.synthesize import SynthesizeStage
    from pipelines.stages.verify import VerifyStage
    from voice_library.refs import ensure_ref

    work = args.work_dir or Path(tempfile.mkdtemp(prefix="speech-overhead-"))
    cfg = small_config(work, [{"path": "unused.jsonl"}], name="bench", retry={"retries": 0})
    table, voices = build_table(cfg, args.dialogues)
    rt = Runtime(run_dir=cfg.run_dir)
    rows = table.to_pylist()

    synth = SynthesizeStage(cfg, rt)
    synth.setup()
    tts = synth.tts  # the same loaded model for both paths
    for r in rows:
        for vid in r["voice_ids"]:
            ensure_ref(cfg.run_dir, tts, voices[vid], r["language"], seed=cfg.seed)

    def direct_synth():
        out = []
        for r in rows:
            for i, (text, vid) in enumerate(zip(r["spoken_texts"], r["voice_ids"], strict=True)):
                out.append(
                    tts.synthesize(
                        text, r["language"], voices[vid], seed=turn_seed(cfg.seed, r["dialogue_id"], i)
                    )
                )
        return out

    t_direct, t_stage = [], []
    stage_out = direct_audio = None
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        direct_audio = direct_synth()
        t_direct.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        stage_out = synth.process(table, 0)
        t_stage.append(time.perf_counter() - t0)
    kept = stage_out.kept
    audio_s = float(sum(sum(r["durations_s"]) for r in kept.to_pylist()))
    # the stage's audio is the direct audio, up to 16-bit quantisation
    stage_clips = [decode_audio(b)[0] for r in kept.to_pylist() for b in r["audio_flac"]]
    assert all(np.max(np.abs(a - b)) < 1e-4 for a, b in zip(stage_clips, direct_audio, strict=True))

    # the direct loop decodes each clip once, so the stage is timed with the same work: the re-decode
    # of badly scored clips (asr.recheck_above) is extra model work, timed on its own below
    plain = cfg.model_copy(update={"asr": cfg.asr.model_copy(update={"recheck_above": None})})
    verify = VerifyStage(plain, rt)
    verify.setup()
    sc = verify.scorer
    verify_recheck = VerifyStage(cfg, rt)
    verify_recheck.scorer = sc.__class__(cfg, cfg.run_dir)
    verify_recheck.scorer.asr, verify_recheck.scorer.speaker, verify_recheck.scorer.quality = (
        sc.asr,
        sc.speaker,
        sc.quality,
    )
    verify_recheck.scorer._refs = sc._refs  # same loaded models and reference embeddings
    sr = int(kept.column("sample_rate_hz")[0].as_py())
    langs = [r["language"] for r in kept.to_pylist() for _ in r["audio_flac"]]
    vids = [v for r in kept.to_pylist() for v in r["voice_ids"]]
    decoded = [decode_audio(b)[0] for r in kept.to_pylist() for b in r["audio_flac"]]
    for v, lang in zip(vids, langs, strict=True):
        sc.ref_embedding(v, lang)  # reference embeddings: once per voice, cached by both paths

    def direct_verify():
        x16 = [resample(x, sr, 16000) for x in decoded]  # each model wants 16 kHz: resample once
        hyps = sc.asr.transcribe([(x, 16000, lang) for x, lang in zip(x16, langs, strict=True)])
        for x in x16:
            sc.speaker.embed(x, 16000)
            sc.quality.score(x, 16000)
        return hyps

    v_direct, v_stage, v_recheck = [], [], []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        hyps = direct_verify()
        v_direct.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        vout = verify.process(kept, 0)
        v_stage.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        rout = verify_recheck.process(kept, 0)
        v_recheck.append(time.perf_counter() - t0)
    stage_hyps = [h for r in vout.kept.to_pylist() for h in r["asr_texts"]]
    same_hyps = sum(a == b for a, b in zip(stage_hyps, hyps, strict=True))

    from kespeechchat.backends.asr import FasterWhisperASR

    single = FasterWhisperASR(cfg.asr.model_dir, num_threads=cfg.asr.num_threads, pack=False)
    single.setup()
    clips16 = [(x, sr, lang) for x, lang in zip(decoded, langs, strict=True)]
    a_packed, a_single = [], []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        sc.asr.transcribe(clips16)
        a_packed.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        single.transcribe(clips16)
        a_single.append(time.perf_counter() - t0)

    med = statistics.median
    n_clips = len(decoded)
    print(
        f"{args.dialogues} dialogues, {n_clips} turns, {audio_s:.1f} s of audio; medians of {args.repeats} alternating runs"
    )
    print(
        f"{'':34s} {'direct s':>9s} {'stage s':>9s} {'direct s/audio s':>17s} {'stage s/audio s':>16s} {'overhead':>9s}"
    )
    for name, d, s in (
        ("synthesize (Kokoro)", t_direct, t_stage),
        ("verify (Whisper+resemblyzer+DNSMOS)", v_direct, v_stage),
    ):
        print(
            f"{name:34s} {med(d):9.2f} {med(s):9.2f} {med(d) / audio_s:17.3f} {med(s) / audio_s:16.3f} {med(s) / med(d) - 1:+9.1%}"
        )
    print(
        f"  all runs: synth direct {[round(x, 1) for x in t_direct]} stage {[round(x, 1) for x in t_stage]}; "
        f"verify direct {[round(x, 1) for x in v_direct]} stage {[round(x, 1) for x in v_stage]}"
    )
    print(f"  verify stage parts (last run): {vout.metrics}")
    print(
        f"  verify with the default re-decode of badly scored clips (asr.recheck_above={cfg.asr.recheck_above}): "
        f"{med(v_recheck):.2f} s ({med(v_recheck) / audio_s:.3f} s/audio s), "
        f"{int(rout.metrics['asr_rechecked'])} of {n_clips} clips re-decoded"
    )
    print(f"  stage transcripts identical to the direct batch: {same_hyps}/{n_clips}")
    print(
        f"ASR, {n_clips} clips: packed batch {med(a_packed):.2f} s, one clip at a time {med(a_single):.2f} s "
        f"-> {med(a_single) / med(a_packed):.2f}x throughput ({audio_s / med(a_packed):.1f} vs {audio_s / med(a_single):.1f} audio s/s)"
    )
    from _common import report

    report(
        "synthesize stage vs direct TTS loop",
        med(t_stage) / audio_s,
        "s/audio s",
        baseline=med(t_direct) / audio_s,
        ratio=med(t_stage) / med(t_direct),
        goal="<= 1.10",
    )
    report(
        "verify stage vs direct model calls",
        med(v_stage) / audio_s,
        "s/audio s",
        baseline=med(v_direct) / audio_s,
        ratio=med(v_stage) / med(v_direct),
        goal="<= 1.10",
    )
    report(
        "ASR packed batch vs one clip at a time",
        med(a_packed),
        "s",
        baseline=med(a_single),
        ratio=med(a_single) / med(a_packed),
        goal="> 1 (throughput gain)",
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
