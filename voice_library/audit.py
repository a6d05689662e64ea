"""Audit: how distinct, intelligible and private a voice library really is, measured on speech.

Probe sentences (two zh, two en, none of them used by the identity search) are synthesised for
a sample of user voices. The speaker encoder embeds every probe; the first zh and first en probe
enrol a voice, the other two test it. Reported:

* speaker identification: each test probe goes to the nearest enrolment centroid among the
  sampled voices; correct when that voice has the same *identity* (variants of one identity are
  one speaker), and separately when it is the very same voice;
* EER over all test-probe × enrolment scores, same identity = target;
* nearest-neighbour cosine: each voice's highest centroid cosine to a voice of another identity;
* within-identity cosine of variants (when the sample has several voices of one identity);
* CER (zh) / WER (en) of the probes with the ASR backend, and measured median F0 vs the gender label;
* privacy: the closest sampled voice to each reference recording (real people).

The sample takes distinct identities first (one variant each) and adds further variants only
when it asks for more voices than the library has identities. ``naive_voices`` makes the
baseline (random convex blends of the base voices, no WORLD), audited the same way.

Work is saved per chunk of voices under ``work_dir`` so an interrupted audit resumes.
"""

from __future__ import annotations

import json
import math
import time
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from kespeechchat.backends.world import median_f0_hz
from kespeechchat.metrics import error_rate
from kespeechchat.store import write_json_atomic, write_parquet_atomic
from kespeechchat.voice import VoiceRecipe
from voice_library.bounds import KOKORO_BASE_VOICES, MALE_F0_THRESHOLD_HZ
from voice_library.recipes import recipe_id
from voice_library.search import convex_blend

# Chosen because Kokoro + Whisper base read them without error on shipped voices; an earlier pair
# ("这家小店…", "…去爬山") came back wrong for every voice, which measures the probe, not the voice.
AUDIT_PROBES: tuple[tuple[str, str], ...] = (
    ("zh", "我周末打算和朋友一起去公园。"),
    ("zh", "我们下午一起去图书馆看书吧。"),
    ("en", "The shop closes early on Sundays."),
    ("en", "My brother is learning the guitar."),
)
ENROLL = (0, 2)
TEST = (1, 3)
CHUNK_VOICES = 10
AUDIT_VERSION = 1


def sample_voices(voices: Sequence[Any], n: int, seed: int) -> list[Any]:
    """``n`` user voices: one random variant of as many identities as possible, then more variants."""
    users = sorted((v for v in voices if v.role == "user"), key=lambda v: v.voice_id)
    if n < 2:
        raise ValueError("an audit needs at least 2 voices")
    if n > len(users):
        raise ValueError(f"asked for {n} voices, the library has {len(users)} user voices")
    rng = np.random.default_rng(np.random.SeedSequence([seed, 3]))
    by_identity: dict[str, list[Any]] = defaultdict(list)
    for v in users:
        by_identity[v.identity_id].append(v)
    ids = sorted(by_identity)
    order = [ids[i] for i in rng.permutation(len(ids))]
    for i in order:
        group = by_identity[i]
        by_identity[i] = [group[k] for k in rng.permutation(len(group))]
    out: list[Any] = []
    depth = 0
    while len(out) < n:
        for i in order:
            if depth < len(by_identity[i]):
                out.append(by_identity[i][depth])
                if len(out) == n:
                    break
        depth += 1
    return out


def served_languages(voices: Sequence[Any]) -> dict[str, set[str]]:
    """identity -> the languages its voices speak in the library (an identity serves only the
    languages it was measured clear in, see voice_library.clarity)."""
    out: dict[str, set[str]] = defaultdict(set)
    for v in voices:
        out[v.identity_id].add(v.language)
    return dict(out)


def naive_voices(n: int, seed: int, backend: str = "kokoro") -> list[Any]:
    """The naive approach as a library: ``n`` random convex blends of the base voices, no WORLD,
    each its own identity (what a library looks like when distinctness is assumed)."""

    out = []
    for k in range(n):
        rng = np.random.default_rng(np.random.SeedSequence([seed, k, 23]))
        fields = {
            "backend": backend,
            "role": "user",
            "identity_id": "",
            "base_weights": convex_blend(rng, KOKORO_BASE_VOICES),
            "speed": 1.0,
            "pitch_ratio": 1.0,
            "formant_ratio": 1.0,
            "language": ("zh", "en")[k % 2],
            "gender": "female",
            "age_band": "adult",
            "speaker_embedding": None,
            "seed": k,
        }
        fields["identity_id"] = recipe_id({"naive": fields["base_weights"]}, prefix="i-")
        out.append(VoiceRecipe(voice_id=recipe_id(fields), **fields))
    return out


# --- synthesis and scoring ------------------------------------------------------------------------

RESULT_SCHEMA = pa.schema(
    [
        ("voice_id", pa.string()),
        ("identity_id", pa.string()),
        ("gender", pa.string()),
        ("embeddings", pa.list_(pa.list_(pa.float32()))),
        ("errors", pa.list_(pa.float64())),
        ("hypotheses", pa.list_(pa.string())),
        ("f0_median_hz", pa.float64()),
        ("audio_s", pa.float64()),
    ]
)


def _probe_voices(tts: Any, encoder: Any, asr: Any, voices: Sequence[Any]) -> list[dict[str, Any]]:

    sr = int(tts.sample_rate_hz)
    rows = []
    for v in voices:
        cs = [tts.synthesize(text, lang, v) for lang, text in AUDIT_PROBES]
        # one ASR call per voice: its probes are different sentences, while packing one sentence
        # spoken by many voices into a Whisper window made it drop repeats
        h = asr.transcribe([(x, sr, lang) for x, (lang, _) in zip(cs, AUDIT_PROBES, strict=True)])
        f0s = [median_f0_hz(x, sr) for x in cs]
        rows.append(
            {
                "voice_id": v.voice_id,
                "identity_id": v.identity_id,
                "gender": v.gender,
                "embeddings": [encoder.embed(x, sr).astype(np.float32).tolist() for x in cs],
                "errors": [
                    round(float(error_rate(text, hyp, lang)), 4)
                    for (lang, text), hyp in zip(AUDIT_PROBES, h, strict=True)
                ],
                "hypotheses": list(h),
                "f0_median_hz": float(np.nanmedian(f0s))
                if not all(math.isnan(f) for f in f0s)
                else float("nan"),
                "audio_s": float(sum(x.size for x in cs) / sr),
            }
        )
    return rows


def run_probes(
    voices: Sequence[Any],
    work_dir: str | Path,
    *,
    tts: Any,
    encoder: Any,
    asr: Any,
    part: tuple[int, int] = (0, 1),
    log: Callable[[str], None] = print,
) -> pa.Table | None:
    """Probe results of ``voices`` (resumable: finished chunks under ``work_dir`` are reused).

    ``part=(i, n)`` probes only the chunks whose number is i mod n (several processes can share
    one audit) and returns None unless every chunk is then finished.
    """

    work = Path(work_dir)
    (work / "chunks").mkdir(parents=True, exist_ok=True)
    ids = [v.voice_id for v in voices]
    manifest = {"version": AUDIT_VERSION, "probes": [list(p) for p in AUDIT_PROBES], "voice_ids": ids}
    mpath = work / "audit.json"
    if mpath.exists():
        old = json.loads(mpath.read_text(encoding="utf-8"))
        if old != manifest:
            raise ValueError(
                f"{work}: holds an audit of other voices or probes; use another --work directory"
            )
    write_json_atomic(mpath, manifest)
    return run_chunks(
        len(voices),
        CHUNK_VOICES,
        work / "chunks",
        "probes",
        lambda lo, hi: pa.Table.from_pylist(
            _probe_voices(tts, encoder, asr, voices[lo:hi]), schema=RESULT_SCHEMA
        ),
        part=part,
        log=lambda c, n, rate, eta: log(
            f"audit {work.name}: chunk {c}/{n} done; {rate:.0f}s/chunk, ETA {eta:.0f} min"
        ),
    )


def run_chunks(
    n_items: int,
    chunk_size: int,
    chunk_dir: Path,
    prefix: str,
    make: Callable[[int, int], pa.Table],
    *,
    part: tuple[int, int] = (0, 1),
    log: Callable[[int, int, float, float], None] = lambda *a: None,
) -> pa.Table | None:
    """Resumable work in chunk files ``<prefix>-NNNNN.parquet``: this process makes the missing
    chunks whose number is i mod n (``part``), each from ``make(lo, hi)``, written atomically.
    Returns all chunks concatenated once every one exists, else None. ``log(chunk, chunks,
    seconds per chunk, ETA minutes)`` after each chunk made here."""

    n_chunks = math.ceil(n_items / chunk_size)
    path = lambda c: chunk_dir / f"{prefix}-{c:05d}.parquet"  # noqa: E731
    t0 = time.perf_counter()
    done_now = 0
    tables = []
    for c in range(n_chunks):
        if not path(c).exists() and c % part[1] == part[0]:
            write_parquet_atomic(path(c), make(c * chunk_size, min((c + 1) * chunk_size, n_items)))
            done_now += 1
            rate = (time.perf_counter() - t0) / done_now
            left = sum(1 for k in range(c + 1, n_chunks) if k % part[1] == part[0] and not path(k).exists())
            log(c + 1, n_chunks, rate, rate * left / 60)
        if path(c).exists():
            tables.append(pq.read_table(path(c)))
    return pa.concat_tables(tables) if len(tables) == n_chunks else None


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def eer(target: np.ndarray, nontarget: np.ndarray) -> float:
    """Equal error rate of similarity scores (higher = same speaker)."""
    t, n = np.sort(np.asarray(target, float)), np.sort(np.asarray(nontarget, float))
    if t.size == 0 or n.size == 0:
        return float("nan")
    thresholds = np.unique(np.concatenate([t, n]))
    frr = np.searchsorted(t, thresholds, side="left") / t.size  # targets below the threshold
    far = 1.0 - np.searchsorted(n, thresholds, side="left") / n.size  # non-targets at or above
    k = int(np.argmin(np.abs(frr - far)))
    return float((frr[k] + far[k]) / 2)


def _dist(x: Sequence[float]) -> dict[str, float]:
    a = np.asarray([v for v in x if np.isfinite(v)], dtype=float)
    if a.size == 0:
        return {}
    q = np.percentile(a, [0, 5, 25, 50, 75, 95, 100])
    return {
        "n": int(a.size),
        "mean": round(float(a.mean()), 4),
        **{
            k: round(float(v), 4)
            for k, v in zip(("min", "p5", "p25", "median", "p75", "p95", "max"), q, strict=True)
        },
    }


def summarize(
    results: pa.Table,
    *,
    max_identity_cosine: float | None = None,
    references: Mapping[str, np.ndarray] | None = None,
    max_error: float = 0.1,
    serves: Mapping[str, set[str]] | None = None,
) -> dict[str, Any]:
    """The audit numbers (see the module docstring) from probe results.

    ``serves`` (identity -> languages it speaks in the library): CER/WER of a language count only
    the voices whose identity serves it (every voice is probed in both, for the embeddings).
    """

    rows = results.to_pylist()
    n = len(rows)
    emb = np.asarray([r["embeddings"] for r in rows], dtype=np.float64)  # (n, probes, d)
    emb = _unit(emb)
    ident = np.asarray([r["identity_id"] for r in rows])
    enrol = _unit(emb[:, list(ENROLL)].mean(axis=1))
    cent = _unit(emb.mean(axis=1))
    same_ident = ident[:, None] == ident[None, :]

    # speaker identification on held-out test probes
    tests = emb[:, list(TEST)]  # (n, t, d)
    scores = np.einsum("itd,jd->itj", tests, enrol)  # (n, t, n)
    best = scores.argmax(axis=2)
    id_acc = float(np.mean(ident[best] == ident[:, None]))
    voice_acc = float(np.mean(best == np.arange(n)[:, None]))
    target = scores[np.broadcast_to(same_ident[:, None, :], scores.shape)]
    nontarget = scores[np.broadcast_to(~same_ident[:, None, :], scores.shape)]

    sims = cent @ cent.T
    other = np.where(same_ident, -np.inf, sims)
    nn = other.max(axis=1)
    within = sims[np.triu(same_ident, k=1)]

    errors = np.asarray([r["errors"] for r in rows], dtype=np.float64)
    langs = [lang for lang, _ in AUDIT_PROBES]
    err = {}
    for lang in ("zh", "en"):
        cols = [k for k, lg in enumerate(langs) if lg == lang]
        rows_l = np.asarray([serves is None or lang in serves.get(i, ()) for i in ident.tolist()])
        if not rows_l.any():  # no sampled voice speaks it
            err[lang] = {
                "kind": "CER" if lang == "zh" else "WER",
                "voices": 0,
                "mean": math.nan,
                "p95": math.nan,
                "share_over_max": math.nan,
                "share_voices_over_max": math.nan,
            }
            continue
        e = errors[np.ix_(rows_l, cols)]
        err[lang] = {
            "kind": "CER" if lang == "zh" else "WER",
            "voices": int(rows_l.sum()),
            "mean": round(float(e.mean()), 4),
            "p95": round(float(np.percentile(e, 95)), 4),
            "share_over_max": round(float(np.mean(e > max_error)), 4),  # of the probes
            "share_voices_over_max": round(float(np.mean(e.mean(axis=1) > max_error)), 4),
        }
    f0 = np.asarray([r["f0_median_hz"] for r in rows], dtype=float)
    labelled = [(r["gender"], f) for r, f in zip(rows, f0, strict=True) if np.isfinite(f)]
    agree = [(g == "male") == (f < MALE_F0_THRESHOLD_HZ) for g, f in labelled]
    out: dict[str, Any] = {
        "voices": n,
        "identities": int(len(set(ident.tolist()))),
        "probes": [list(p) for p in AUDIT_PROBES],
        "speaker_id_accuracy_identity": round(id_acc, 4),
        "speaker_id_accuracy_voice": round(voice_acc, 4),
        "eer": round(eer(target, nontarget), 4),
        "nn_cosine_other_identity": _dist(nn),
        "within_identity_cosine": _dist(within),
        "error_rates": err,
        "gender_label_agrees_with_f0": round(float(np.mean(agree)), 4) if agree else None,
        "f0_hz": _dist(f0),
        "audio_s": round(float(sum(r["audio_s"] for r in rows)), 1),
    }
    if max_identity_cosine is not None:
        out["share_nn_over_bound"] = round(float(np.mean(nn > max_identity_cosine)), 4)
        out["max_identity_cosine"] = max_identity_cosine
    if references:
        out["privacy"] = closest_to_references(cent, [r["voice_id"] for r in rows], references)
    return out


def closest_to_references(
    centroids: np.ndarray, voice_ids: Sequence[str], references: Mapping[str, np.ndarray]
) -> list[dict[str, Any]]:
    """For each reference speaker, the closest voice and its cosine (highest first)."""
    out = []
    c = _unit(np.asarray(centroids, dtype=np.float64))
    for name, ref in sorted(references.items()):
        s = c @ _unit(np.asarray(ref, dtype=np.float64))
        k = int(np.argmax(s))
        out.append({"reference": name, "closest_voice": voice_ids[k], "cosine": round(float(s[k]), 4)})
    return sorted(out, key=lambda d: -d["cosine"])


def format_summary(name: str, s: Mapping[str, Any]) -> str:
    nn = s["nn_cosine_other_identity"]
    lines = [
        f"{name}: {s['voices']} voices of {s['identities']} identities, {s['audio_s'] / 60:.1f} min of probes",
        f"  speaker-ID accuracy (identity) {s['speaker_id_accuracy_identity']:.3f}, (voice) "
        f"{s['speaker_id_accuracy_voice']:.3f}; EER {s['eer']:.3f}",
        f"  nearest other-identity cosine: median {nn.get('median')}, p95 {nn.get('p95')}, max {nn.get('max')}",
    ]
    if s.get("within_identity_cosine"):
        w = s["within_identity_cosine"]
        lines.append(f"  variants of one identity: cosine median {w['median']}, min {w['min']} (n={w['n']})")
    for lang, e in s["error_rates"].items():
        lines.append(
            f"  {e['kind']} {lang} over {e.get('voices', s['voices'])} voices serving it: mean {e['mean']:.3f}; "
            f"> 0.1: {e['share_over_max']:.1%} of probes, {e.get('share_voices_over_max', float('nan')):.1%} of voices"
        )
    if s.get("gender_label_agrees_with_f0") is not None:
        lines.append(f"  gender label agrees with measured F0: {s['gender_label_agrees_with_f0']:.1%}")
    for p in s.get("privacy", []):
        lines.append(f"  privacy: closest to {p['reference']}: {p['closest_voice']} cosine {p['cosine']}")
    return "\n".join(lines)


def audit_library(
    voices: Sequence[Any],
    n: int,
    *,
    seed: int,
    work_dir: str | Path,
    tts: Any,
    encoder: Any,
    asr: Any,
    baseline: bool = False,
    references: Mapping[str, np.ndarray] | None = None,
    max_identity_cosine: float | None = None,
    part: tuple[int, int] = (0, 1),
    log: Callable[[str], None] = print,
) -> dict[str, Any] | None:
    """Audit ``n`` sampled user voices (and, with ``baseline``, ``n`` naive blends the same way).

    ``part=(i, n)``: this process probes chunks i mod n; None until every chunk is done (run the
    last part again, or once more with ``(0, 1)``, to get the report)."""
    work = Path(work_dir)
    sample = sample_voices(voices, n, seed)
    lib = run_probes(sample, work / "library", tts=tts, encoder=encoder, asr=asr, part=part, log=log)
    naive = None
    if baseline:
        naive = run_probes(
            naive_voices(n, seed), work / "naive", tts=tts, encoder=encoder, asr=asr, part=part, log=log
        )
    if lib is None or (baseline and naive is None):
        return None
    report: dict[str, Any] = {
        "library": summarize(
            lib,
            max_identity_cosine=max_identity_cosine,
            references=references,
            serves=served_languages(voices),
        ),
        "seed": seed,
    }
    if naive is not None:
        report["baseline_naive_blends"] = summarize(
            naive, max_identity_cosine=max_identity_cosine, references=references
        )
    return report


def report_markdown(report: Mapping[str, Any], title: str = "Voice library audit") -> str:
    """The audit as a Markdown table: library vs baseline side by side."""
    cols = [("library", report["library"])]
    if "baseline_naive_blends" in report:
        cols.append(("naive convex blends (baseline)", report["baseline_naive_blends"]))

    def g(s: Mapping[str, Any], path: str) -> Any:
        cur: Any = s
        for k in path.split("."):
            cur = cur.get(k) if isinstance(cur, Mapping) else None
        return "–" if cur is None else cur

    rows = [
        ("voices / identities", lambda s: f"{s['voices']} / {s['identities']}"),
        ("speaker-ID accuracy (identity)", lambda s: g(s, "speaker_id_accuracy_identity")),
        ("speaker-ID accuracy (voice)", lambda s: g(s, "speaker_id_accuracy_voice")),
        ("EER", lambda s: g(s, "eer")),
        ("NN cosine to another identity: median", lambda s: g(s, "nn_cosine_other_identity.median")),
        (
            "NN cosine: p5 / p95 / max",
            lambda s: "{} / {} / {}".format(
                *(g(s, f"nn_cosine_other_identity.{k}") for k in ("p5", "p95", "max"))
            ),
        ),
        ("share of NN cosine over the bound", lambda s: g(s, "share_nn_over_bound")),
        ("variants of one identity: median cosine", lambda s: g(s, "within_identity_cosine.median")),
        (
            "voices serving zh / en",
            lambda s: f"{g(s, 'error_rates.zh.voices')} / {g(s, 'error_rates.en.voices')}",
        ),
        (
            "CER zh: mean / share of probes > 0.1 / share of voices > 0.1",
            lambda s: " / ".join(
                str(g(s, f"error_rates.zh.{k}")) for k in ("mean", "share_over_max", "share_voices_over_max")
            ),
        ),
        (
            "WER en: mean / share of probes > 0.1 / share of voices > 0.1",
            lambda s: " / ".join(
                str(g(s, f"error_rates.en.{k}")) for k in ("mean", "share_over_max", "share_voices_over_max")
            ),
        ),
        ("gender label agrees with F0", lambda s: g(s, "gender_label_agrees_with_f0")),
    ]
    lines = [
        f"# {title}",
        "",
        "| measure | " + " | ".join(c for c, _ in cols) + " |",
        "|---" * (len(cols) + 1) + "|",
    ]
    for name, fn in rows:
        lines.append(f"| {name} | " + " | ".join(str(fn(s)) for _, s in cols) + " |")
    priv = report["library"].get("privacy")
    if priv:
        lines += ["", "Closest sampled library voice to each reference speaker (held-out probes):", ""]
        lines += ["| reference | closest voice | cosine |", "|---|---|---|"]
        lines += [f"| {p['reference']} | {p['closest_voice']} | {p['cosine']} |" for p in priv]
    return "\n".join(lines) + "\n"
