"""The run store: one directory per run, one folder per stage, atomic files and markers.

Layout::

    runs/<name>/config.yaml                      resolved config (no secrets)
    runs/<name>/<stage>/data/shard-00000.parquet  rows that go on
    runs/<name>/<stage>/rejected/shard-00000.parquet  rows dropped here, with a reason (only if any)
    runs/<name>/<stage>/_markers/shard-00000.json counts, rejects by reason and metrics of the unit;
                                                  written last: the unit is done iff it matches

Two files per unit at most (data and marker; a rejects file only where rows were rejected): at the
paper's scale, about a million units, the number of files is what shared storage feels first.

Every file is written to a temporary name in the same folder, fsynced and renamed, so a crash
leaves either the old file or the new one, never half of one.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

TMP_PREFIX = ".tmp-"
# Columns too big to copy from stage to stage: a stage file that did not change them leaves them
# out and names, in its schema metadata, the stage whose file holds them; reads join them back.
HEAVY_COLUMNS = ("audio_flac",)
HEAVY_META_KEY = b"kespeechchat.heavy_from"


def shard_name(shard: int) -> str:
    return f"shard-{shard:05d}"


@contextlib.contextmanager
def atomic_path(final: Path) -> Iterator[Path]:
    """Yield a temporary path next to ``final``; rename it into place only if the block succeeds."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX + final.name + ".", dir=final.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp_path, final)
        _fsync_dir(final.parent)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_bytes_atomic(path: Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_json_atomic(path: Path, obj: Any) -> None:
    write_bytes_atomic(path, json.dumps(obj, indent=2, ensure_ascii=False, sort_keys=True).encode("utf-8"))


def write_parquet_atomic(path: Path, table: pa.Table, **kwargs: Any) -> None:
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, **kwargs)


def swap_dir_in(tmp: Path, final: Path) -> None:
    """Put the finished folder ``tmp`` in the place of ``final`` by renames: a reader sees the old
    folder or the new one, never half of either. The old one is removed afterwards."""
    old = None
    if final.exists():
        old = final.with_name(f"{TMP_PREFIX}old-{final.name}-{time.time_ns()}")
        final.rename(old)
    tmp.rename(final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_json(path: Path) -> Any | None:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return None


class RunStore:
    """Paths and file operations of one run directory."""

    def __init__(self, run_dir: str | Path):
        self.root = Path(run_dir)

    def stage_dir(self, stage: str) -> Path:
        return self.root / stage

    def data_path(self, stage: str, shard: int) -> Path:
        return self.root / stage / "data" / f"{shard_name(shard)}.parquet"

    def rejected_path(self, stage: str, shard: int) -> Path:
        return self.root / stage / "rejected" / f"{shard_name(shard)}.parquet"

    def stats_path(self, stage: str, shard: int) -> Path:
        return self.root / stage / "stats" / f"{shard_name(shard)}.json"

    def marker_path(self, stage: str, shard: int | None) -> Path:
        name = "_all" if shard is None else shard_name(shard)
        return self.root / stage / "_markers" / f"{name}.json"

    def log_dir(self, stage: str) -> Path:
        return self.root / stage / "logs"

    @property
    def cache_dir(self) -> Path:
        return self.root / "_cache"

    @property
    def dataset_dir(self) -> Path:
        return self.root / "dataset"

    def summary_path(self, stage: str) -> Path:
        """The whole-run summary of a stage that runs once (ingest, package)."""
        return self.root / stage / "stats" / f"{stage}.json"

    def shard_files(self, stage: str) -> list[Path]:
        return sorted((self.root / stage / "data").glob("shard-*.parquet"))

    @property
    def config_path(self) -> Path:
        return self.root / "config.yaml"

    @property
    def voices_dir(self) -> Path:
        return self.root / "voices"

    @property
    def library_path(self) -> Path:
        """The run's frozen voice library: every voice the run may assign."""
        return self.voices_dir / "library.parquet"

    def voice_ref_path(self, voice_id: str, language: str) -> Path:
        """A voice's reference utterance, the target of speaker similarity."""
        return self.voices_dir / "refs" / f"{voice_id}-{language}.flac"

    def export_dir(self, repo_id: str) -> Path:
        return self.root / "export" / repo_id.replace("/", "__")

    def read_marker(self, stage: str, shard: int | None) -> dict[str, Any] | None:
        return read_json(self.marker_path(stage, shard))

    def write_marker(self, stage: str, shard: int | None, marker: dict[str, Any]) -> None:
        write_json_atomic(self.marker_path(stage, shard), marker)

    def clear_markers(self, stage: str) -> int:
        d = self.marker_path(stage, None).parent
        n = 0
        if d.is_dir():
            for p in d.glob("*.json"):
                p.unlink()
                n += 1
        return n

    def read_table(self, stage: str, shard: int, *, rehydrate: bool = True) -> pa.Table:
        """A stage's shard; heavy columns stored by an earlier stage are joined back by dialogue_id.

        The returned schema metadata says where each heavy column lives (``heavy_sources``)."""
        path = self.data_path(stage, shard)
        if not path.exists():
            raise FileNotFoundError(f"{path}: missing; run stage {stage!r} first")
        table = pq.read_table(path)
        sources = heavy_sources(table)
        for col in HEAVY_COLUMNS:
            if col in table.column_names:
                sources[col] = stage
        if rehydrate:
            for col, src in sources.items():
                if col in table.column_names:
                    continue
                src_path = self.data_path(src, shard)
                if not src_path.exists():
                    raise FileNotFoundError(f"{src_path}: holds column {col!r} of {path} but is missing")
                src_table = pq.read_table(src_path, columns=["dialogue_id", col])
                by_id = dict(
                    zip(
                        src_table.column("dialogue_id").to_pylist(),
                        src_table.column(col).to_pylist(),
                        strict=True,
                    )
                )
                ids = table.column("dialogue_id").to_pylist()
                missing = [i for i in ids if i not in by_id]
                if missing:
                    raise RuntimeError(f"{src_path}: lacks {col!r} for dialogues {missing[:3]} of {path}")
                table = table.append_column(
                    pa.field(col, src_table.schema.field(col).type),
                    pa.array([by_id[i] for i in ids], src_table.schema.field(col).type),
                )
        return with_heavy_sources(table, sources)

    def write_unit(
        self,
        stage: str,
        shard: int,
        kept: pa.Table,
        rejected: pa.Table,
        input_table: pa.Table | None = None,
    ) -> str:
        """Write data and rejects of one unit atomically; returns the output fingerprint.

        A heavy column this stage left as it found it is not written again: the file points to
        the stage that holds it. Rejected rows never carry heavy columns (they point too). No
        rejects file is written when nothing was rejected (one left by an earlier run of the unit
        is removed); the fingerprint is the same as if it had been."""
        sources = heavy_sources(input_table) if input_table is not None else {}
        kept = _drop_unchanged_heavy(kept, input_table, sources, stage)
        rej_sources = {**sources, **{c: stage for c in HEAVY_COLUMNS if c in kept.column_names}}
        rejected = with_heavy_sources(
            rejected.drop_columns([c for c in HEAVY_COLUMNS if c in rejected.column_names]), rej_sources
        )
        dp, rp = self.data_path(stage, shard), self.rejected_path(stage, shard)
        write_parquet_atomic(dp, kept)
        if rejected.num_rows:
            write_parquet_atomic(rp, rejected)
            rejected_sha = file_sha256(rp)
        else:
            rp.unlink(missing_ok=True)
            buf = pa.BufferOutputStream()
            pq.write_table(rejected, buf)
            rejected_sha = hashlib.sha256(buf.getvalue().to_pybytes()).hexdigest()
        return hashlib.sha256((file_sha256(dp) + rejected_sha).encode()).hexdigest()[:16]

    def shards(self) -> list[int]:
        manifest = read_json(self.stage_dir("ingest") / "manifest.json")
        return list(manifest["shards"]) if manifest else []

    def remove_tmp_files(self) -> int:
        """Delete leftovers of writes interrupted by a crash."""
        n = 0
        if self.root.exists():
            for p in sorted(self.root.rglob(TMP_PREFIX + "*"), key=lambda p: len(p.parts)):
                if p.is_dir():
                    shutil.rmtree(p, ignore_errors=True)
                    n += 1
                elif p.exists():
                    p.unlink()
                    n += 1
        return n


def heavy_sources(table: pa.Table | None) -> dict[str, str]:
    meta = (table.schema.metadata or {}) if table is not None else {}
    raw = meta.get(HEAVY_META_KEY)
    return dict(json.loads(raw)) if raw else {}


def with_heavy_sources(table: pa.Table, sources: dict[str, str]) -> pa.Table:
    meta = dict(table.schema.metadata or {})
    meta.pop(HEAVY_META_KEY, None)
    if sources:
        meta[HEAVY_META_KEY] = json.dumps(sources, sort_keys=True).encode()
    return table.replace_schema_metadata(meta or None)


def _drop_unchanged_heavy(
    kept: pa.Table, input_table: pa.Table | None, sources: dict[str, str], stage: str
) -> pa.Table:
    """Leave out heavy columns equal to the input's; keep (and own) those the stage changed."""
    out_sources = dict(sources)
    for col in HEAVY_COLUMNS:
        if col not in kept.column_names:
            continue
        src = sources.get(col)
        if input_table is not None and src and col in input_table.column_names:
            before = dict(
                zip(
                    input_table.column("dialogue_id").to_pylist(),
                    input_table.column(col).to_pylist(),
                    strict=True,
                )
            )
            after = zip(kept.column("dialogue_id").to_pylist(), kept.column(col).to_pylist(), strict=True)
            if all(before.get(i) == v for i, v in after):
                kept = kept.drop_columns([col])
                continue
        out_sources[col] = stage
    out_sources = {c: s for c, s in out_sources.items() if c not in kept.column_names}
    return with_heavy_sources(kept, out_sources)


# Errors of the machine (a full disk, a read-only or failing filesystem), not of a row: a stage lets
# them fail the unit, which a rerun redoes, instead of recording a rejected row a resumed run keeps.
ENVIRONMENT_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO})
