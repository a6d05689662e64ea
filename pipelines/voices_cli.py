"""`kespeechchat voices …`: build, inspect, audit and listen to the virtual speaker library.

The commands parse arguments and call the library functions, nothing more.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from kespeechchat.backends import registry
from kespeechchat.backends.asr import FasterWhisperASR
from kespeechchat.backends.speaker import ResemblyzerEncoder
from kespeechchat.config import SpeakerConfig, TTSConfig
from kespeechchat.store import write_bytes_atomic, write_json_atomic, write_parquet_atomic
from pipelines.voices import run_usage
from voice_library.assignment import format_usage
from voice_library.audit import audit_library, format_summary, report_markdown
from voice_library.clarity import (
    CONFIRM_PROBES,
    confirm_pool,
    job,
    load_probes,
    load_results,
    pool_jobs,
    refine_pool,
    run_jobs,
    shipped_references,
    summarise,
)
from voice_library.embeddings import ENCODER_META_KEY, embed_recordings, read_embeddings, sample_pool
from voice_library.pool import SEARCHED_POOL_PATH, load_pool, save_pool, select_identities
from voice_library.privacy import check_library_privacy, format_report, reference_embeddings, reference_files
from voice_library.recipes import (
    agent_voices,
    build_library,
    distinctness_statement,
    library_meta,
    library_meta_for,
    load_library,
    save_library,
)
from voice_library.refs import PROBE_TEXTS
from voice_library.search import run_search, shipped_voice_embeddings
from voice_library.stats import format_stats, library_stats, plot_stats

DEFAULT_LIBRARY = "voices.parquet"


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _models(backend: str = "kokoro", model_dir: str | None = None) -> tuple[Any, Any, Any]:
    """The TTS, speaker encoder and ASR that measure a library of ``backend`` (one thread each;
    they run side by side): the TTS with the encoder its registry entry names (Kokoro:
    resemblyzer; CosyVoice 2: its own CAM++), both from ``model_dir``. The checker is the embedded
    Whisper base either way."""
    import torch

    torch.set_num_threads(1)
    try:
        tts = registry.create("tts", TTSConfig(backend=backend, model_dir=model_dir))
        enc = _encoder(registry.get("tts", backend).voice_encoder, model_dir)
    except ValueError as e:
        raise SystemExit(f"error: {e} (pass --model-dir)") from None
    return tts, enc, FasterWhisperASR()


def _part(text: str) -> tuple[int, int]:
    i, _, n = text.partition("/")
    try:
        part = (int(i), int(n or 1))
    except ValueError:
        raise SystemExit(f"--part must look like i/n (e.g. 0/2), got {text!r}") from None
    if not 0 <= part[0] < part[1]:
        raise SystemExit(f"--part {text}: need 0 <= i < n")
    return part


def _pool_arg(path: str | None) -> Any:

    return load_pool(path)


def cmd_build(args: argparse.Namespace) -> int:

    t0 = time.perf_counter()
    pool = _pool_arg(args.pool)
    if args.max_identity_cosine is not None:
        pool = pool.restrict(args.max_identity_cosine)
    users = build_library(args.size, args.seed, args.backend, pool=pool)
    agents = [] if args.no_agents else agent_voices(args.backend, pool=pool)
    voices = users + agents
    t_build = time.perf_counter() - t0
    out = save_library(voices, args.out, library_meta_for(voices, pool, seed=args.seed))
    t_all = time.perf_counter() - t0

    print(distinctness_statement(library_meta(out)))
    print(
        f"wrote {out} ({out.stat().st_size / 1e6:.2f} MB): {len(users)} user + {len(agents)} agent voices; "
        f"built in {t_build:.2f} s, {t_all:.2f} s with the write"
    )
    return 0


def cmd_stats(args: argparse.Namespace) -> int:

    voices = load_library(args.library)
    s = library_stats(voices, library_meta(args.library))
    print(json.dumps(s, indent=2, ensure_ascii=False) if args.json else format_stats(s))
    if args.png:
        _say(f"wrote {plot_stats(voices, s, args.png)}")
    return 0


def cmd_audit(args: argparse.Namespace) -> int:

    voices = load_library(args.library)
    meta = library_meta(args.library)
    bound = (meta.get("distinct") or {}).get("max_identity_cosine")
    backends = sorted({v.backend for v in voices})
    if len(backends) != 1:
        raise SystemExit(f"{args.library}: voices of several backends {backends}; audit one at a time")
    tts, encoder, asr = _models(backends[0], args.model_dir)
    refs = reference_embeddings(args.refs, encoder) if args.refs else None
    work = Path(args.work or f"{args.library}.audit-{args.sample}-{args.seed}")
    report = audit_library(
        voices,
        args.sample,
        seed=args.seed,
        work_dir=work,
        tts=tts,
        encoder=encoder,
        asr=asr,
        baseline=args.baseline,
        references=refs,
        max_identity_cosine=bound,
        part=_part(args.part),
        log=_say,
    )
    if report is None:
        _say(f"{work}: this part is done; run the audit again when the other parts are, for the report")
        return 0
    report["library_file"] = str(args.library)
    report["distinct"] = meta.get("distinct")
    print(format_summary("library", report["library"]))
    if "baseline_naive_blends" in report:
        print(format_summary("baseline (naive convex blends)", report["baseline_naive_blends"]))
    if args.out:
        out = Path(args.out)
        write_json_atomic(out, report)
        write_bytes_atomic(out.with_suffix(".md"), report_markdown(report).encode())
        _say(f"wrote {out} and {out.with_suffix('.md')}")
    return 0


def cmd_listen(args: argparse.Namespace) -> int:
    import soundfile as sf

    voices = {v.voice_id: v for v in load_library(args.library)}
    voice = voices.get(args.voice_id)
    if voice is None:
        raise SystemExit(f"error: voice {args.voice_id!r} is not in {args.library}")
    lang = args.lang or (voice.language if voice.language in ("zh", "en") else "zh")
    text = args.text or PROBE_TEXTS[lang]
    try:
        tts = registry.create("tts", TTSConfig(backend=voice.backend, model_dir=args.model_dir))
    except ValueError as e:
        raise SystemExit(f"error: voice {args.voice_id} is a {voice.backend} voice: {e}") from None
    audio = tts.synthesize(text, lang, voice)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    sf.write(args.out, audio, int(tts.sample_rate_hz), subtype="PCM_16")
    print(
        f"wrote {args.out}: {audio.size / tts.sample_rate_hz:.1f} s, voice {voice.voice_id} "
        f"(identity {voice.identity_id}, {voice.gender}, {voice.age_band}, {lang})"
    )
    return 0


def cmd_search(args: argparse.Namespace) -> int:

    tts, encoder, _ = _models()
    out = Path(args.out)
    shipped = out / "shipped_voices.json"
    if not shipped.exists():
        out.mkdir(parents=True, exist_ok=True)
        emb = shipped_voice_embeddings(tts, encoder)
        write_json_atomic(shipped, {k: v.tolist() for k, v in emb.items()})
    run_search(
        out,
        seed=args.seed,
        n_blends=args.blends,
        world_per_blend=args.world_per_blend,
        tts=tts,
        encoder=encoder,
        part=_part(args.part),
        log=_say,
    )
    return 0


def cmd_pool(args: argparse.Namespace) -> int:
    import numpy as np

    search = Path(args.search_dir)
    refs: dict[str, np.ndarray] = {}
    shipped = search / "shipped_voices.json"
    if shipped.exists():
        refs.update({f"kokoro:{k}": np.asarray(v) for k, v in json.loads(shipped.read_text()).items()})
    if args.refs:
        refs.update(reference_embeddings(args.refs, ResemblyzerEncoder()))
    asr = FasterWhisperASR()
    counts = {}
    for tau in sorted({args.max_identity_cosine, *args.also}):
        pool = select_identities(
            search,
            tau,
            asr=asr,
            references=refs,
            privacy_max_cosine=args.privacy_max_cosine,
            order=args.order,
            log=_say,
        )
        counts[str(tau)] = pool.meta["counts"]
        print(f"max_identity_cosine {tau}: {pool.meta['counts']}")
        if tau == args.max_identity_cosine:
            chosen = pool
    chosen.meta["accepted_at_other_bounds"] = counts
    out = save_pool(chosen, args.out)
    print(
        f"wrote {out}: {len(chosen.identities)} identities at max_identity_cosine {args.max_identity_cosine}"
    )
    return 0


def cmd_clarity(args: argparse.Namespace) -> int:

    pool = _pool_arg(args.pool or str(SEARCHED_POOL_PATH))
    jobs = pool_jobs(pool, [float(x) for x in args.scales.split(",")])
    tts, encoder, asr = _models()
    done = run_jobs(jobs, args.work, tts=tts, encoder=encoder, asr=asr, part=_part(args.part), log=_say)
    _say(f"{args.work}: " + ("all measured" if done is not None else "this part done; others still running"))
    return 0


def cmd_confirm(args: argparse.Namespace) -> int:

    pool = _pool_arg(args.pool)
    jobs = [job(i) for i in sorted(pool.identities, key=lambda i: i.identity_id)]
    tts, encoder, asr = _models()
    done = run_jobs(
        jobs,
        args.work,
        tts=tts,
        encoder=encoder,
        asr=asr,
        part=_part(args.part),
        log=_say,
        probes=CONFIRM_PROBES,
    )
    if done is None:
        _say(f"{args.work}: this part done; others still running")
        return 0
    new = confirm_pool(pool, summarise(load_results(args.work), load_probes(args.work)), args.max_error)
    if args.out:
        save_pool(new, args.out)
    print(
        json.dumps(
            {
                k: v
                for k, v in new.meta["counts"].items()
                if "on_confirmation" in k or k.startswith("serving")
            },
            indent=1,
        )
    )
    _say(
        f"{len(new.identities)} of {len(pool.identities)} identities confirmed"
        + (f"; wrote {args.out}" if args.out else "")
    )
    return 0


def cmd_refine(args: argparse.Namespace) -> int:

    pool = _pool_arg(args.pool or str(SEARCHED_POOL_PATH))
    measured = summarise(load_results(args.work))
    refs = shipped_references(measured)
    if args.refs:
        refs.update(reference_embeddings(args.refs, ResemblyzerEncoder()))
    new = refine_pool(
        pool,
        measured,
        refs,
        max_identity_cosine=args.max_identity_cosine,
        privacy_max_cosine=args.privacy_max_cosine,
        max_error=args.max_error,
    )
    save_pool(new, args.out)
    print(json.dumps(new.meta["counts"], indent=1))
    _say(f"wrote {args.out}: {len(new.identities)} identities")
    return 0


def _encoder(name: str, model_dir: str | None) -> Any:
    """The speaker encoder a pool was measured with (a registered speaker backend; default resemblyzer)."""
    try:
        return registry.create("speaker", SpeakerConfig(backend=name or "resemblyzer", model_dir=model_dir))
    except ValueError as e:
        raise SystemExit(f"error: {e} (--model-dir)") from None


def cmd_privacy(args: argparse.Namespace) -> int:

    voices = load_library(args.library)
    pool = _pool_arg(args.pool)
    # the references are embedded by the encoder that measured the pool's centroids
    encoder = (pool.meta.get("measured_with") or {}).get("encoder", "resemblyzer")
    refs = reference_embeddings(args.refs, _encoder(encoder, args.model_dir))
    rep = check_library_privacy(voices, pool, refs, args.max_cosine)
    print(json.dumps(rep, indent=2) if args.json else format_report(rep))
    return 0 if rep["passed"] else 2


def cmd_usage(args: argparse.Namespace) -> int:

    run = Path(args.run)
    if not run.is_dir():
        run = Path(args.runs_dir) / args.run
    u = run_usage(run)
    print(json.dumps(u, indent=2) if args.json else format_usage(u))
    return 0


def cmd_embed(args: argparse.Namespace) -> int:
    import pyarrow as pa

    encoder = _encoder(args.encoder, args.model_dir)
    vecs, names = embed_recordings(reference_files(args.audio), encoder, segment_s=args.segment_s)
    rows = [
        {"speaker_id": n.split("#")[0], "segment": n, "embedding": v.tolist()}
        for n, v in zip(names, vecs, strict=True)
    ]
    table = pa.Table.from_pylist(rows)
    write_parquet_atomic(Path(args.out), table.replace_schema_metadata({ENCODER_META_KEY: encoder.name}))
    print(f"wrote {args.out}: {len(rows)} embeddings of {vecs.shape[1]} dimensions")
    return 0


def cmd_sample_embeddings(args: argparse.Namespace) -> int:

    emb = read_embeddings(args.embeddings)
    pool = sample_pool(
        emb,
        args.identities,
        args.seed,
        privacy_max_cosine=args.privacy_max_cosine,
        max_identity_cosine=args.max_identity_cosine,
        backend=args.backend,
        log=_say,
    )
    out = save_pool(pool, args.out)
    print(
        f"wrote {out}: {len(pool.identities)} sampled identities; closest to a real speaker: "
        f"cosine {pool.meta['closest_reference_cosine']:.3f} (bound {args.privacy_max_cosine})"
    )
    return 0


def register(subparsers: Any) -> None:
    """Add the `voices` command group to the main parser."""
    v = subparsers.add_parser("voices", help="the virtual speaker library: build, stats, audit, listen")
    vs = v.add_subparsers(dest="voices_command", required=True)
    _register_library(vs)
    _register_measurement(vs)
    _register_embeddings(vs)


def _register_library(vs: Any) -> None:
    """Commands on a library: build, stats, listen, usage."""
    b = vs.add_parser("build", help="build a library of identities × prosodic variants from an identity pool")
    b.add_argument("--size", type=int, default=42_002, help="number of user voices (default 42002)")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument(
        "--out", default=DEFAULT_LIBRARY, help=f"Parquet file to write (default {DEFAULT_LIBRARY})"
    )
    b.add_argument("--backend", choices=registry.names("tts"), default="kokoro")
    b.add_argument(
        "--pool", help="identity pool (default: the measured Kokoro pool shipped with the package)"
    )
    b.add_argument(
        "--max-identity-cosine", type=float, help="only identities distinct at this stricter bound"
    )
    b.add_argument("--no-agents", action="store_true", help="user voices only")
    b.set_defaults(func=cmd_build)

    s = vs.add_parser("stats", help="balance across language × gender × age band, prosody, identities")
    s.add_argument("library")
    s.add_argument("--png", help="also plot to this PNG")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_stats)

    li = vs.add_parser("listen", help="write a sample WAV of one voice")
    li.add_argument("library")
    li.add_argument("voice_id")
    li.add_argument("--out", required=True, help="WAV file to write")
    li.add_argument("--text", help="what to say (default: the reference probe of the language)")
    li.add_argument("--lang", choices=["zh", "en"], help="language (default: the voice's)")
    li.add_argument("--model-dir", help="the TTS model directory (a backend without an embedded model)")
    li.set_defaults(func=cmd_listen)

    u = vs.add_parser("usage", help="how evenly a run used its voices (histogram)")
    u.add_argument("run", help="run directory or name")
    u.add_argument("--runs-dir", default="runs")
    u.add_argument("--json", action="store_true")
    u.set_defaults(func=cmd_usage)


def _register_measurement(vs: Any) -> None:
    """Commands that measure voices: search, pool, clarity, refine, confirm, audit, privacy."""
    se = vs.add_parser("search", help="synthesise candidate identities and embed them (resumable, slow)")
    se.add_argument("--out", required=True, help="search directory")
    se.add_argument("--blends", type=int, default=320, help="candidate styles (Kokoro runs)")
    se.add_argument("--world-per-blend", type=int, default=8, help="WORLD transforms tried per style")
    se.add_argument("--seed", type=int, default=0)
    se.add_argument("--part", default="0/1", help="i/n: this process takes chunks i mod n")
    se.set_defaults(func=cmd_search)

    po = vs.add_parser("pool", help="accept distinct, intelligible, private identities from a search")
    po.add_argument("search_dir")
    po.add_argument("--max-identity-cosine", type=float, default=0.9)
    po.add_argument("--also", type=float, nargs="*", default=[], help="also count identities at these bounds")
    po.add_argument("--privacy-max-cosine", type=float, default=0.85)
    po.add_argument("--refs", help="real recordings the identities must stay away from")
    po.add_argument("--order", choices=["min_degree", "random"], default="min_degree")
    po.add_argument("--out", required=True, help="identity pool Parquet to write")
    po.set_defaults(func=cmd_pool)

    cl = vs.add_parser(
        "clarity", help="measure each pool identity on held-out sentences per language (resumable, slow)"
    )
    cl.add_argument("--pool", help="identity pool (default: the shipped pool as the search accepted it)")
    cl.add_argument("--work", required=True, help="directory for the measurements")
    cl.add_argument("--scales", default="1,0.5", help="warp scales to measure (1: as searched, 0: no warp)")
    cl.add_argument("--part", default="0/1", help="i/n: this process takes chunks i mod n")
    cl.set_defaults(func=cmd_clarity)

    rf = vs.add_parser(
        "refine", help="a pool of identities clear first, distinct second, from `voices clarity`"
    )
    rf.add_argument("work", help="directory of `voices clarity` measurements")
    rf.add_argument("--pool", help="the pool that was measured (default: the shipped searched pool)")
    rf.add_argument(
        "--max-identity-cosine",
        type=float,
        default=0.94,
        help="bound on eight-sentence centroids (default 0.94: about what 0.90 was on the search's "
        "two-sentence centroids; see voice_library/README.md)",
    )
    rf.add_argument("--privacy-max-cosine", type=float, default=0.85)
    rf.add_argument("--max-error", type=float, default=0.05, help="mean CER/WER for a language to be served")
    rf.add_argument("--refs", help="real recordings the identities must stay away from")
    rf.add_argument("--out", required=True, help="identity pool Parquet to write")
    rf.set_defaults(func=cmd_refine)

    cf = vs.add_parser(
        "confirm",
        help="measure a refined pool on longer held-out sentences; keep only the languages it still speaks clearly",
    )
    cf.add_argument("pool", help="identity pool to confirm (e.g. from `voices refine`)")
    cf.add_argument("--work", required=True, help="directory for the measurements (resumable)")
    cf.add_argument("--part", default="0/1", help="i/n: this process takes chunks i mod n")
    cf.add_argument(
        "--max-error", type=float, default=0.05, help="mean CER/WER for a language to stay served"
    )
    cf.add_argument("--out", help="confirmed identity pool Parquet to write")
    cf.set_defaults(func=cmd_confirm)

    pr = vs.add_parser("privacy", help="closest library identity to each real reference recording")
    pr.add_argument("library")
    pr.add_argument("--refs", required=True, help="real recordings (file or directory)")
    pr.add_argument("--pool", help="identity pool with the measured centroids (default: the shipped pool)")
    pr.add_argument("--max-cosine", type=float, default=0.85)
    pr.add_argument(
        "--model-dir", help="CAM++ model (campplus.onnx or CosyVoice directory) for a CosyVoice pool"
    )
    pr.add_argument("--json", action="store_true")
    pr.set_defaults(func=cmd_privacy)

    a = vs.add_parser(
        "audit", help="synthesise probes for a sample of voices; measure distinctness and ASR error"
    )
    a.add_argument("library")
    a.add_argument("--sample", type=int, default=200, help="voices to audit (distinct identities first)")
    a.add_argument("--seed", type=int, default=0)
    a.add_argument(
        "--baseline", action="store_true", help="also audit as many naive convex blends, same probes"
    )
    a.add_argument("--refs", help="real recordings (file or directory): report the closest voice to each")
    a.add_argument("--work", help="directory for resumable probe results (default: next to the library)")
    a.add_argument("--out", help="write the report as JSON (and Markdown next to it)")
    a.add_argument("--part", default="0/1", help="i/n: this process takes chunks i mod n")
    a.add_argument(
        "--model-dir", help="CosyVoice 2 model directory (a CosyVoice library: its TTS and CAM++ encoder)"
    )
    a.set_defaults(func=cmd_audit)


def _register_embeddings(vs: Any) -> None:
    """Commands for embedding-conditioned backends: embed real recordings, sample a pool from them."""
    e = vs.add_parser("embed-recordings", help="speaker embeddings of real recordings → Parquet")
    e.add_argument("audio", help="recording or directory of recordings")
    e.add_argument("--out", required=True)
    e.add_argument("--segment-s", type=float, help="one embedding per piece of this length")
    e.add_argument(
        "--encoder",
        choices=["campplus", "resemblyzer"],
        default="resemblyzer",
        help="campplus: the 192-d x-vectors CosyVoice 2 speaks from (needs --model-dir); resemblyzer: the embedded encoder",
    )
    e.add_argument("--model-dir", help="campplus.onnx or the CosyVoice model directory holding it")
    e.set_defaults(func=cmd_embed)

    sm = vs.add_parser("sample-embeddings", help="identity pool of speaker embeddings sampled from real ones")
    sm.add_argument("embeddings", help=".npy / .npz / .parquet of real speaker embeddings")
    sm.add_argument("--identities", type=int, required=True)
    sm.add_argument("--seed", type=int, default=0)
    sm.add_argument("--privacy-max-cosine", type=float, default=0.75)
    sm.add_argument("--max-identity-cosine", type=float, default=0.9)
    sm.add_argument(
        "--backend",
        default="cosyvoice",
        choices=[n for n in registry.names("tts") if registry.get("tts", n).embedding_dim],
    )
    sm.add_argument("--out", required=True)
    sm.set_defaults(func=cmd_sample_embeddings)
