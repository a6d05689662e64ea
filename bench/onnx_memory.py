"""Peak RSS of a Kokoro worker over texts of varying length, with onnxruntime's CPU arena shrunk after
every run (what the backends do) against the plain session, each in a fresh process of the same run.

    .venv/bin/python bench/onnx_memory.py [--texts 16]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

from _common import REPO, machine, report

CHILD = r"""
import json, random, sys, time
sys.path.insert(0, {repo!r})
import psutil
from kespeechchat.backends.tts import KokoroTTS
from kespeechchat.models import kokoro_dir
from voice_library.recipes import agent_voices
tts = KokoroTTS(str(kokoro_dir()))
tts.setup()
if {plain}:
    tts._kokoro.sess = tts._kokoro.sess.session
voice = next(v for v in agent_voices() if v.language == "en")
words = "the quick brown fox jumps over a lazy dog while the river runs past old stone bridges".split()
rng = random.Random(0)
texts = [" ".join(rng.choice(words) for _ in range(rng.randint(4, 40))).capitalize() + "." for _ in range({n})]
proc = psutil.Process()
rss, t0 = [], time.perf_counter()
for t in texts:
    tts.synthesize(t, "en", voice)
    rss.append(proc.memory_info().rss / 2**20)
print(json.dumps({{"peak_mb": max(rss), "first_mb": rss[0], "last_mb": rss[-1], "wall_s": time.perf_counter() - t0}}))
"""


def measure(plain: bool, n: int) -> dict:
    code = CHILD.format(repo=str(REPO), plain=plain, n=n)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--texts", type=int, default=16)
    args = ap.parse_args()
    print(f"machine: {machine()}")
    shrink, plain = measure(False, args.texts), measure(True, args.texts)
    for label, r in (("arena shrunk", shrink), ("plain session", plain)):
        print(
            f"{label}: RSS {r['first_mb']:.0f} MB after 1 text, {r['last_mb']:.0f} MB after {args.texts}, "
            f"{r['wall_s']:.1f} s"
        )
    report(
        f"Kokoro worker peak RSS over {args.texts} texts, arena shrunk vs plain session",
        shrink["peak_mb"],
        "MB",
        baseline=plain["peak_mb"],
        ratio=shrink["peak_mb"] / plain["peak_mb"],
        goal="< 1",
    )
    report(
        "Kokoro time with the arena shrunk vs plain session",
        shrink["wall_s"],
        "s",
        baseline=plain["wall_s"],
        ratio=shrink["wall_s"] / plain["wall_s"],
        goal="<= 1.05",
    )


if __name__ == "__main__":
    main()
