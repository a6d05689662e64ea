"""The package step: accepted dialogues -> Hugging Face Parquet shards, one row per utterance.

Why one row per utterance (and not one row per dialogue with nested turns): `datasets` streams,
filters, shuffles and batches flat rows well, the Hub viewer plays an `Audio` cell per row (it
does not play audio nested in lists), row groups stay small and even for streaming, and ASR/TTS
training reads the rows directly. `dialogue_id` + `turn_index` rebuild a dialogue, and a
dialogue's rows are contiguous and never span two files or two splits.

Files are `data/<split>-00000-of-000NN.parquet` (what `push_to_hub` writes and the Hub
auto-detects). Audio is the `Audio` feature (`struct<bytes, path>`, FLAC bytes, stored without
compression and PLAIN-encoded like `datasets` does), and the features are in the Parquet schema
metadata under `huggingface`, so `datasets.load_dataset(<dataset dir>)` decodes it as audio even
without the card. A shard is cut between dialogues at about `package.target_shard_mb`; row groups
close at `row_group_rows` or `row_group_mb`.

The dataset folder is built next to the old one and swapped in by rename: readers never see half.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from kespeechchat.audio import decode_audio
from kespeechchat.config import RunConfig, stable_hash
from kespeechchat.llm.tasks import load_prompt
from kespeechchat.progress import Progress
from kespeechchat.store import RunStore, swap_dir_in, write_json_atomic
from pipelines.voices import library_fingerprint, library_path

PACKAGE_VERSION = "2"
LAST_SHARD_STAGE = "select"
LAYOUT = "utterance"
# Package settings that only change the card, not the Parquet files.
CARD_ONLY_FIELDS = frozenset({"pretty_name", "license", "source_licenses"})
DATA_FILE_RE = re.compile(r"^(?P<split>[A-Za-z][A-Za-z0-9_]*)-(?P<index>\d{5})-of-(?P<count>\d{5})\.parquet$")
MEDIA_COLUMN = "audio"
SPLIT_ORDER = {"train": 0, "validation": 1, "test": 2}  # how the Hub lists splits; others follow by name

CARD_VERSION = "2"  # the dataset card's layout (pipelines.card); part of the package manifest


def _value(dtype: str) -> dict[str, Any]:
    return {"dtype": dtype, "_type": "Value"}


# name, Arrow type, `datasets` feature (None: the Audio feature), description (quoted on the card).
UTTERANCE_FIELDS: list[tuple[str, pa.DataType, dict[str, Any] | None, str]] = [
    ("utterance_id", pa.string(), _value("string"), "`<dialogue_id>-<turn_index>`, unique in the dataset"),
    (
        "dialogue_id",
        pa.string(),
        _value("string"),
        "content hash of the source dialogue; shared by its turns",
    ),
    ("turn_index", pa.int32(), _value("int32"), "position of the turn in its dialogue, from 0"),
    ("num_turns", pa.int32(), _value("int32"), "number of turns of the dialogue"),
    ("role", pa.string(), _value("string"), "`user` or `assistant`"),
    ("language", pa.string(), _value("string"), "`zh` or `en` (language of the dialogue)"),
    (
        "text",
        pa.string(),
        _value("string"),
        "what is spoken: the spoken-style, normalised text given to the TTS",
    ),
    (
        "rewritten_text",
        pa.string(),
        _value("string"),
        "the LLM rewrite for speech, before the spoken-style pass",
    ),
    ("source_text", pa.string(), _value("string"), "the turn as it is in the source dataset"),
    ("voice_id", pa.string(), _value("string"), "virtual voice recipe that spoke the turn"),
    (
        "speaker_id",
        pa.string(),
        _value("string"),
        "identity of the voice; prosodic variants of one identity share it (count speakers by this)",
    ),
    ("gender", pa.string(), _value("string"), "gender label of the voice (from its predicted pitch)"),
    (
        MEDIA_COLUMN,
        pa.struct([("bytes", pa.binary()), ("path", pa.string())]),
        None,
        "the speech, FLAC 16-bit mono",
    ),
    ("sample_rate_hz", pa.int32(), _value("int32"), "sample rate of the audio"),
    ("duration_s", pa.float32(), _value("float32"), "duration of the audio in seconds"),
    ("asr_text", pa.string(), _value("string"), "what the verification ASR heard"),
    ("error_rate", pa.float32(), _value("float32"), "CER (zh) or WER (en) of `asr_text` against `text`"),
    ("error_kind", pa.string(), _value("string"), "`cer` or `wer`"),
    (
        "speaker_similarity",
        pa.float32(),
        _value("float32"),
        "cosine between the utterance and its voice's reference (speaker encoder)",
    ),
    (
        "dnsmos_ovrl",
        pa.float32(),
        _value("float32"),
        "DNSMOS P.835 OVRL (1-5), an artefact detector rather than a naturalness score; empty when not measured",
    ),
    ("tts_attempts", pa.int32(), _value("int32"), "TTS attempts the turn needed"),
    ("source_file", pa.string(), _value("string"), "source text file the dialogue came from"),
    (
        "source_format",
        pa.string(),
        _value("string"),
        "record format of the source (alpaca, sharegpt, openai)",
    ),
]


def hf_features(sample_rate_hz: int) -> dict[str, Any]:
    """The `datasets` features as the JSON `datasets` itself stores in Parquet metadata."""
    return {
        name: feat if feat is not None else {"sampling_rate": int(sample_rate_hz), "_type": "Audio"}
        for name, _, feat, _ in UTTERANCE_FIELDS
    }


def utterance_schema(sample_rate_hz: int) -> pa.Schema:
    """Arrow schema carrying the `huggingface` features metadata (what `datasets` writes itself)."""
    import json

    meta = {b"huggingface": json.dumps({"info": {"features": hf_features(sample_rate_hz)}}).encode()}
    return pa.schema([pa.field(n, t) for n, t, _, _ in UTTERANCE_FIELDS], metadata=meta)


def split_of(dialogue_id: str, seed: int, splits: dict[str, float]) -> str:
    """The split of a dialogue: a hash of (seed, id) mapped onto the cumulative shares, in declared order.

    Independent of the other dialogues, so adding data never moves a dialogue to another split.
    """
    h = hashlib.sha256(f"{seed}:{dialogue_id}".encode()).digest()
    u = int.from_bytes(h[:8], "big") / 2.0**64
    acc = 0.0
    names = list(splits)
    for name in names:
        acc += splits[name]
        if u < acc:
            return name
    return names[-1]


def voice_labels(run_dir: Path) -> dict[str, tuple[str, str]]:
    """voice_id -> (identity_id, gender) from the run's voice library."""

    p = library_path(run_dir)
    if not p.exists():
        raise FileNotFoundError(
            f"{p}: the run's voice library is missing (run the pipeline, it is written before assign)"
        )
    t = pq.read_table(p, columns=["voice_id", "identity_id", "gender"]).to_pylist()
    return {r["voice_id"]: (r["identity_id"], r["gender"]) for r in t}


def flatten(row: dict[str, Any], voices: dict[str, tuple[str, str]] | None = None) -> list[dict[str, Any]]:
    """One dialogue row of the select stage -> its utterance rows, in turn order."""
    lang = row["language"]
    n = len(row["roles"])
    per_turn = ("spoken_texts", "rewritten_texts", "source_texts", "voice_ids", "audio_flac", "durations_s",
                "asr_texts", "error_rates", "speaker_similarities", "tts_attempts")  # fmt: skip
    for col in per_turn:
        if row.get(col) is None or len(row[col]) != n:
            got = None if row.get(col) is None else len(row[col])
            raise ValueError(f"dialogue {row['dialogue_id']}: column {col} has {got} values for {n} turns")
    out = []
    for i in range(n):
        uid = f"{row['dialogue_id']}-{i:02d}"
        vid = row["voice_ids"][i]
        if voices is not None and vid not in voices:
            raise ValueError(
                f"dialogue {row['dialogue_id']} turn {i}: voice {vid!r} is not in the run's voice library"
            )
        speaker, gender = voices[vid] if voices is not None else (None, None)
        out.append(
            {
                "utterance_id": uid,
                "dialogue_id": row["dialogue_id"],
                "turn_index": i,
                "num_turns": n,
                "role": row["roles"][i],
                "language": lang,
                "text": row["spoken_texts"][i],
                "rewritten_text": row["rewritten_texts"][i],
                "source_text": row["source_texts"][i],
                "voice_id": vid,
                "speaker_id": speaker,
                "gender": gender,
                MEDIA_COLUMN: {"bytes": row["audio_flac"][i], "path": f"{uid}.flac"},
                "sample_rate_hz": int(row["sample_rate_hz"]),
                "duration_s": row["durations_s"][i],
                "asr_text": row["asr_texts"][i],
                "error_rate": row["error_rates"][i],
                "error_kind": "cer" if lang == "zh" else "wer",
                "speaker_similarity": row["speaker_similarities"][i],
                "dnsmos_ovrl": _finite_or_none(row.get("dnsmos_ovrl"), i),
                "tts_attempts": row["tts_attempts"][i],
                "source_file": row["source_file"],
                "source_format": row["source_format"],
            }
        )
    return out


def _finite_or_none(values: list[float] | None, i: int) -> float | None:
    """A per-turn score that may be absent (column missing, None or NaN when not measured)."""
    if values is None or i >= len(values) or values[i] is None:
        return None
    v = float(values[i])
    return v if np.isfinite(v) else None


def row_nbytes(u: dict[str, Any]) -> int:
    """Approximate uncompressed size of one utterance row (what shard and row-group sizes count)."""
    n = len(u[MEDIA_COLUMN]["bytes"]) + 48
    for v in u.values():
        if isinstance(v, str):
            n += len(v.encode("utf-8"))
    return n


class _SplitWriter:
    """Streams one split's rows into files of about ``target_bytes``; names are fixed once the count is known.

    Only one row group is held in memory; a new file starts before a dialogue that would overflow it.
    """

    def __init__(self, folder: Path, split: str, schema: pa.Schema, cfg: Any):
        self.folder, self.split, self.schema = folder, split, schema
        self.target_bytes = int(cfg.target_shard_mb * 1e6)
        self.rg_rows = cfg.row_group_rows
        self.rg_bytes = int(cfg.row_group_mb * 1e6)
        self.cdc = bool(cfg.content_defined_chunking)
        self.parts: list[Path] = []
        self.part_rows: list[int] = []
        self._writer: pq.ParquetWriter | None = None
        self._file_bytes = 0
        self._group: list[dict[str, Any]] = []
        self._group_bytes = 0

    def _open(self) -> None:
        path = self.folder / f".part-{self.split}-{len(self.parts):05d}.parquet"
        names = [n for n in self.schema.names if n != MEDIA_COLUMN]
        media = [f"{MEDIA_COLUMN}.bytes", f"{MEDIA_COLUMN}.path"]
        compression: dict[str, str] = {n: "snappy" for n in names}
        compression.update({m: "none" for m in media})
        kwargs: dict[str, Any] = {}
        if self.cdc:
            kwargs["use_content_defined_chunking"] = True
        self._writer = pq.ParquetWriter(
            path,
            self.schema,
            compression=compression,
            use_dictionary=names,
            column_encoding={m: "PLAIN" for m in media},
            write_page_index=True,
            **kwargs,
        )
        self.parts.append(path)
        self.part_rows.append(0)
        self._file_bytes = 0

    def _flush_group(self) -> None:
        if self._group:
            assert self._writer is not None
            self._writer.write_table(
                pa.Table.from_pylist(self._group, schema=self.schema), row_group_size=len(self._group)
            )
            self.part_rows[-1] += len(self._group)
            self._group, self._group_bytes = [], 0

    def _close(self) -> None:
        self._flush_group()
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def add_dialogue(self, utts: list[dict[str, Any]]) -> None:
        sizes = [row_nbytes(u) for u in utts]
        total = sum(sizes)
        if self._writer is not None and self._file_bytes > 0 and self._file_bytes + total > self.target_bytes:
            self._close()
        if self._writer is None:
            self._open()
        for u, b in zip(utts, sizes, strict=True):
            self._group.append(u)
            self._group_bytes += b
            if len(self._group) >= self.rg_rows or self._group_bytes >= self.rg_bytes:
                self._flush_group()
        self._file_bytes += total

    def finish(self, allow_empty: bool = False) -> list[Path]:
        """Close the last file and rename all to `<split>-XXXXX-of-YYYYY.parquet`."""
        if not self.parts and allow_empty:
            self._open()
        self._close()
        n = len(self.parts)
        final = []
        for i, p in enumerate(self.parts):
            dst = p.with_name(f"{self.split}-{i:05d}-of-{n:05d}.parquet")
            p.rename(dst)
            final.append(dst)
        return final

    def abort(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def data_fingerprint(cfg: RunConfig, input_fps: list[str], library_fp: str) -> str:
    """What the Parquet files depend on (card-only settings excluded)."""
    pkg = cfg.package.model_dump(exclude=set(CARD_ONLY_FIELDS))
    return stable_hash(
        {"v": PACKAGE_VERSION, "inputs": input_fps, "package": pkg, "seed": cfg.seed, "library": library_fp}
    )


def card_fingerprint(cfg: RunConfig, data_fp: str) -> str:

    return stable_hash(
        {
            "data": data_fp,
            "card": CARD_VERSION,
            "cfg": cfg.model_dump(mode="json", exclude={"executor", "runs_dir"}),
        }
    )


def prompt_versions(cfg: RunConfig) -> dict[str, Any]:
    """Versions of the prompt files the LLM stages used (hash of each file), recorded on the card."""
    used = {
        "rewrite": cfg.rewrite.mode == "llm",
        "judge": cfg.filter.llm_judge,
        "spoken": cfg.spoken.mode == "llm",
    }
    out: dict[str, Any] = {}
    for task, on in used.items():
        if not on:
            continue
        try:
            out[task] = {lang: load_prompt(task, lang).version for lang in ("zh", "en")}
        except Exception as e:  # the card says so rather than failing the package
            out[task] = f"unavailable ({type(e).__name__}: {e})"
    return out


def _new_stats() -> dict[str, Any]:
    return {
        "dialogues": 0,
        "utterances": 0,
        "audio_s": 0.0,
        "by_language": defaultdict(
            lambda: {"dialogues": 0, "utterances": 0, "audio_s": 0.0, "errors": [], "sims": []}
        ),
        "by_role": defaultdict(lambda: {"utterances": 0, "audio_s": 0.0}),
        "by_split": defaultdict(lambda: {"dialogues": 0, "utterances": 0, "audio_s": 0.0}),
        "voices": defaultdict(int),
        "speakers": set(),
    }


def run_package(cfg: RunConfig, store: RunStore, progress: Progress) -> Path:
    """Write (or keep, when its inputs did not change) the dataset folder of the run."""
    shards = store.shards()
    fps = []
    for shard in shards:
        m = store.read_marker(LAST_SHARD_STAGE, shard)
        if not m:
            raise RuntimeError(f"package: stage {LAST_SHARD_STAGE} has not finished shard {shard}")
        fps.append(m["output_fingerprint"])
    data_fp = data_fingerprint(cfg, fps, library_fingerprint(cfg, store.root))
    card_fp = card_fingerprint(cfg, data_fp)
    final_dir = store.dataset_dir
    m = store.read_marker("package", None)
    if m and m.get("input_fingerprint") == data_fp and (final_dir / "data").is_dir():
        if m.get("card_fingerprint") != card_fp:
            _write_card_or_note(final_dir, cfg, store.root, progress)
            store.write_marker("package", None, {**m, "card_fingerprint": card_fp})
            progress.note(f"[package] data up to date; card rewritten: {final_dir / 'README.md'}")
        else:
            progress.note(f"[package] up to date: {final_dir}")
        return final_dir

    t0 = time.perf_counter()
    summary, files = _write_dataset(cfg, store, shards, progress)
    write_json_atomic(store.summary_path("package"), summary)
    store.write_marker(
        "package",
        None,
        {
            "stage": "package",
            "stage_version": PACKAGE_VERSION,
            "input_fingerprint": data_fp,
            "card_fingerprint": card_fp,
            "rows_in": summary["dialogues"],
            "rows_out": summary["utterances"],
            "rows_rejected": 0,
            "duration_s": round(time.perf_counter() - t0, 3),
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        },
    )
    _report(summary, files, final_dir, progress)
    return final_dir


def _write_dataset(
    cfg: RunConfig, store: RunStore, shards: list[int], progress: Progress
) -> tuple[dict[str, Any], dict[str, list[Path]]]:
    """Write the split files and the card into a temporary folder, then swap it in for the old one:
    a reader sees the old dataset or the new one, never half of either."""
    final_dir = store.dataset_dir
    tmp_dir = final_dir.with_name(f".tmp-dataset-{int(time.time() * 1000)}")
    data_dir = tmp_dir / "data"
    data_dir.mkdir(parents=True)
    voices = voice_labels(store.root)
    writers: dict[str, _SplitWriter] = {}
    stats = _new_stats()
    sample_rate: int | None = None
    try:
        for shard in shards:
            for row in store.read_table(LAST_SHARD_STAGE, shard).to_pylist():
                sr = int(row["sample_rate_hz"])
                if sample_rate is None:
                    sample_rate = sr
                elif sr != sample_rate:
                    raise RuntimeError(
                        f"package: dialogue {row['dialogue_id']} (shard {shard}) has sample rate {sr} Hz, "
                        f"earlier dialogues {sample_rate} Hz; one dataset holds one rate"
                    )
                split = split_of(row["dialogue_id"], cfg.seed, cfg.package.splits)
                if split not in writers:
                    writers[split] = _SplitWriter(data_dir, split, utterance_schema(sr), cfg.package)
                utts = flatten(row, voices)
                writers[split].add_dialogue(utts)
                _count(stats, row, split, utts)
        if not writers:  # nothing accepted: still a valid, empty dataset
            first = next(iter(cfg.package.splits))
            writers[first] = _SplitWriter(
                data_dir, first, utterance_schema(cfg.tts.sample_rate_hz), cfg.package
            )
            files = {first: writers[first].finish(allow_empty=True)}
        else:
            files = {s: writers[s].finish() for s in cfg.package.splits if s in writers}
        summary = _summarise(stats, files, final_dir, sample_rate or cfg.tts.sample_rate_hz, cfg)
        _write_card_or_note(tmp_dir, cfg, store.root, progress, summary=summary)
        swap_dir_in(tmp_dir, final_dir)
    finally:
        for w in writers.values():
            w.abort()
        if tmp_dir.exists():
            shutil.rmtree(tmp_dir, ignore_errors=True)
    return summary, files


def _report(
    summary: dict[str, Any], files: dict[str, list[Path]], final_dir: Path, progress: Progress
) -> None:
    n_files = sum(len(v) for v in files.values())
    split_txt = ", ".join(f"{s} {d['dialogues']}" for s, d in summary["splits"].items())
    progress.note(
        f"[package] {summary['dialogues']} dialogues ({split_txt}) -> {summary['utterances']} utterances in "
        f"{n_files} file(s), {summary['audio_s']:.1f} s of audio -> {final_dir}"
    )
    if not summary["utterances"]:
        progress.note("[package] no dialogue was accepted: the dataset is empty (see `kespeechchat rejects`)")
    elif summary["empty_splits"]:
        progress.note(
            f"[package] no dialogue fell into split(s) {', '.join(summary['empty_splits'])}: left out"
        )


def _write_card_or_note(
    dataset_dir: Path,
    cfg: RunConfig,
    run_dir: Path,
    progress: Progress,
    summary: dict[str, Any] | None = None,
) -> None:
    """The card needs the `hf` extra; without it the data is still complete and loadable, so say so and go on."""
    try:
        from pipelines.card import write_card
    except ImportError as e:  # pragma: no cover - depends on extras
        progress.note(
            f"[package] dataset card skipped ({e}); install the 'hf' extra and run `kespeechchat card`"
        )
        return
    try:
        write_card(dataset_dir, cfg, run_dir, package_summary=summary)
    except ImportError as e:  # pragma: no cover - depends on extras
        progress.note(
            f"[package] dataset card skipped ({e}); install the 'hf' extra and run `kespeechchat card`"
        )


def _count(stats: dict[str, Any], row: dict[str, Any], split: str, utts: list[dict[str, Any]]) -> None:
    lang = stats["by_language"][row["language"]]
    sp = stats["by_split"][split]
    stats["dialogues"] += 1
    lang["dialogues"] += 1
    sp["dialogues"] += 1
    for u in utts:
        d = float(u["duration_s"])
        stats["utterances"] += 1
        stats["audio_s"] += d
        lang["utterances"] += 1
        lang["audio_s"] += d
        lang["errors"].append(u["error_rate"])
        lang["sims"].append(u["speaker_similarity"])
        sp["utterances"] += 1
        sp["audio_s"] += d
        stats["by_role"][u["role"]]["utterances"] += 1
        stats["by_role"][u["role"]]["audio_s"] += d
        stats["voices"][u["voice_id"]] += 1
        stats["speakers"].add(u["speaker_id"])


def _summarise(
    stats: dict[str, Any], files: dict[str, list[Path]], final_dir: Path, sample_rate_hz: int, cfg: RunConfig
) -> dict[str, Any]:
    by_lang = {}
    for lang, d in sorted(stats["by_language"].items()):
        by_lang[lang] = {
            "dialogues": d["dialogues"],
            "utterances": d["utterances"],
            "audio_s": round(d["audio_s"], 3),
            "error_kind": "cer" if lang == "zh" else "wer",
            "mean_error_rate": float(np.mean(d["errors"])) if d["errors"] else 0.0,
            "mean_speaker_similarity": float(np.mean(d["sims"])) if d["sims"] else 0.0,
        }
    splits = {}
    for name, paths in files.items():
        s = stats["by_split"].get(name, {"dialogues": 0, "utterances": 0, "audio_s": 0.0})
        num_bytes = download = 0
        for p in paths:
            md = pq.ParquetFile(p).metadata
            num_bytes += sum(md.row_group(i).total_byte_size for i in range(md.num_row_groups))
            download += p.stat().st_size
        splits[name] = {
            "dialogues": s["dialogues"],
            "utterances": s["utterances"],
            "audio_s": round(s["audio_s"], 3),
            "files": [f"data/{p.name}" for p in paths],
            "num_bytes": num_bytes,
            "download_bytes": download,
        }
    return {
        "path": str(final_dir),
        "layout": LAYOUT,
        "sample_rate_hz": int(sample_rate_hz),
        "files": [f for s in splits.values() for f in s["files"]],
        "dialogues": stats["dialogues"],
        "utterances": stats["utterances"],
        "audio_s": round(stats["audio_s"], 3),
        "audio_hours": stats["audio_s"] / 3600.0,
        "by_language": by_lang,
        "by_role": {
            k: {"utterances": v["utterances"], "audio_s": round(v["audio_s"], 3)}
            for k, v in sorted(stats["by_role"].items())
        },
        "splits": splits,
        "empty_splits": [s for s in cfg.package.splits if s not in splits],
        "speakers": len(stats["speakers"] - {None}),
        "voice_usage": dict(sorted(stats["voices"].items())),
        "prompts": prompt_versions(cfg),
    }


# -- reading a packaged dataset back (card, inspect, export) --------------------------------------


def dataset_files(dataset_dir: str | Path) -> dict[str, list[Path]]:
    """`data/<split>-XXXXX-of-YYYYY.parquet` files by split, checked complete (every index, one count)."""
    data = Path(dataset_dir) / "data"
    if not data.is_dir():
        raise FileNotFoundError(f"{data}: no data folder; run the pipeline (package step) first")
    by_split: dict[str, list[tuple[int, int, Path]]] = defaultdict(list)
    for p in sorted(data.iterdir()):
        if p.name.startswith("."):
            continue
        mt = DATA_FILE_RE.match(p.name)
        if not mt:
            raise ValueError(f"{p}: not a dataset shard name (<split>-XXXXX-of-YYYYY.parquet)")
        by_split[mt["split"]].append((int(mt["index"]), int(mt["count"]), p))
    out: dict[str, list[Path]] = {}
    for split, items in sorted(
        by_split.items(), key=lambda kv: (SPLIT_ORDER.get(kv[0], len(SPLIT_ORDER)), kv[0])
    ):
        counts = {c for _, c, _ in items}
        idx = sorted(i for i, _, _ in items)
        if len(counts) != 1 or idx != list(range(next(iter(counts)))):
            names = ", ".join(p.name for _, _, p in items)
            raise ValueError(f"{data}: split {split!r} is incomplete or mixes two writes: {names}")
        out[split] = [p for _, _, p in sorted(items)]
    if not out:
        raise FileNotFoundError(f"{data}: no Parquet shards")
    return out


def read_utterances(
    dataset_dir: str | Path,
    columns: list[str] | None = None,
    *,
    split: str | None = None,
    limit: int | None = None,
    dialogue_id: str | None = None,
) -> pa.Table:
    """Rows of the packaged dataset with a `split` column; reads only the row groups it needs."""
    files = dataset_files(dataset_dir)
    if columns is not None:  # `split` comes from the file name, not from the file
        columns = [c for c in columns if c != "split"]
    if split is not None and split not in files:
        raise ValueError(f"{dataset_dir}: no split {split!r}; splits: {', '.join(files)}")
    tables = []
    left = limit
    for name, paths in files.items():
        if split is not None and name != split:
            continue
        for p in paths:
            if left is not None and left <= 0:
                break
            try:
                if dialogue_id is not None:
                    t = pq.read_table(p, columns=columns, filters=[("dialogue_id", "=", dialogue_id)])
                elif left is not None:
                    pf = pq.ParquetFile(p)
                    batches = []
                    for b in pf.iter_batches(batch_size=max(1, min(left, 1024)), columns=columns):
                        batches.append(b.slice(0, left))
                        left -= min(left, b.num_rows)
                        if left <= 0:
                            break
                    t = pa.Table.from_batches(batches) if batches else None
                else:
                    t = pq.read_table(p, columns=columns)
            except (pa.ArrowInvalid, OSError) as e:
                raise ValueError(f"{p}: cannot read: {e}") from e
            if t is None:
                continue
            t = t.replace_schema_metadata(None)
            tables.append(t.append_column("split", pa.array([name] * t.num_rows, pa.string())))
    if not tables:
        return pa.table({"split": pa.array([], pa.string())})
    return pa.concat_tables(tables)


def write_wavs(rows: list[dict[str, Any]], wav_dir: str | Path) -> list[Path]:
    """Decode each row's FLAC and write `<utterance_id>.wav` (16-bit PCM) for listening."""
    import soundfile as sf

    out_dir = Path(wav_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for r in rows:
        uid = r["utterance_id"]
        audio = r.get(MEDIA_COLUMN) or {}
        if not audio.get("bytes"):
            raise ValueError(f"utterance {uid}: no audio bytes")
        try:
            x, sr = decode_audio(audio["bytes"])
        except Exception as e:
            raise ValueError(f"utterance {uid}: audio does not decode: {type(e).__name__}: {e}") from e
        p = out_dir / f"{uid}.wav"
        sf.write(p, x, sr, subtype="PCM_16")
        paths.append(p)
    return paths
