"""The run store: one directory per run, one folder per stage, atomic files and markers.

Layout::

    runs/<name>/config.yaml                      resolved config (no secrets)
    runs/<name>/<stage>/data/shard-00000.parquet  rows that go on
    runs/<name>/<stage>/rejected/shard-00000.parquet  rows dropped here, with a reason
    runs/<name>/<stage>/stats/shard-00000.json    counts and metrics of the unit
    runs/<name>/<stage>/_markers/shard-00000.json written last; the unit is done iff it matches

Every file is written to a temporary name in the same folder, fsynced and renamed, so a crash
leaves either the old file or the new one, never half of one.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

TMP_PREFIX = ".tmp-"


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

    def read_marker(self, stage: str, shard: int | None) -> dict[str, Any] | None:
        return read_json(self.marker_path(stage, shard))

    def write_marker(self, stage: str, shard: int | None, marker: dict[str, Any]) -> None:
        write_json_atomic(self.marker_path(stage, shard), marker)

    def clear_markers(self, stage: str) -> int:
        d = self.root / stage / "_markers"
        n = 0
        if d.is_dir():
            for p in d.glob("*.json"):
                p.unlink()
                n += 1
        return n

    def read_table(self, stage: str, shard: int) -> pa.Table:
        path = self.data_path(stage, shard)
        if not path.exists():
            raise FileNotFoundError(f"{path}: missing; run stage {stage!r} first")
        return pq.read_table(path)

    def write_unit(
        self, stage: str, shard: int, kept: pa.Table, rejected: pa.Table, stats: dict[str, Any]
    ) -> str:
        """Write data, rejects and stats of one unit atomically; returns the output fingerprint."""
        dp, rp = self.data_path(stage, shard), self.rejected_path(stage, shard)
        write_parquet_atomic(dp, kept)
        write_parquet_atomic(rp, rejected)
        write_json_atomic(self.stats_path(stage, shard), stats)
        return hashlib.sha256((file_sha256(dp) + file_sha256(rp)).encode()).hexdigest()[:16]

    def shards(self) -> list[int]:
        manifest = read_json(self.root / "ingest" / "manifest.json")
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
