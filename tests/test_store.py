"""The run store: atomic files, leftovers of crashes, heavy columns stored once and joined back."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from kespeechchat.schema import table_from_rows
from kespeechchat.store import TMP_PREFIX, RunStore, atomic_path, heavy_sources, write_json_atomic

COLS = ["dialogue_id", "language", "audio_flac"]


def _t(rows):
    return table_from_rows(rows, COLS)


def test_atomic_path_leaves_old_file_when_the_block_fails(tmp_path):
    target = tmp_path / "x.json"
    write_json_atomic(target, {"v": 1})
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("crash")
    assert target.read_text().count('"v": 1') == 1
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(TMP_PREFIX)]


def test_remove_tmp_files_cleans_files_and_folders(tmp_path):
    store = RunStore(tmp_path)
    (tmp_path / "a" / "data").mkdir(parents=True)
    (tmp_path / "a" / "data" / f"{TMP_PREFIX}shard.parquet.x").write_text("torn")
    (tmp_path / f"{TMP_PREFIX}dataset-1" / "data").mkdir(parents=True)
    (tmp_path / f"{TMP_PREFIX}dataset-1" / "data" / "part.parquet").write_text("torn")
    assert store.remove_tmp_files() == 2
    assert not list(tmp_path.rglob(TMP_PREFIX + "*"))


def test_unchanged_heavy_column_is_stored_once_and_joined_back(tmp_path):
    store = RunStore(tmp_path)
    produced = _t(
        [
            {"dialogue_id": "a", "language": "zh", "audio_flac": [b"A0", b"A1"]},
            {"dialogue_id": "b", "language": "en", "audio_flac": [b"B0"]},
        ]
    )
    store.write_unit(
        "synthesize", 0, produced, _t([]).append_column("reject_reason", pa.array([], pa.string()))
    )
    inp = store.read_table("synthesize", 0)
    assert heavy_sources(inp) == {"audio_flac": "synthesize"}
    # a later stage keeps one row unchanged and rejects the other
    kept = _t([{"dialogue_id": "a", "language": "zh", "audio_flac": [b"A0", b"A1"]}])
    rej = table_from_rows(
        [{"dialogue_id": "b", "language": "en", "audio_flac": [b"B0"], "reject_reason": "x"}],
        COLS + ["reject_reason"],
    )
    store.write_unit("verify", 0, kept, rej, input_table=inp)
    on_disk = pq.read_table(store.data_path("verify", 0))
    assert "audio_flac" not in on_disk.column_names
    assert "audio_flac" not in pq.read_table(store.rejected_path("verify", 0)).column_names
    back = store.read_table("verify", 0)
    assert back.column("audio_flac").to_pylist() == [[b"A0", b"A1"]]
    # a stage that changes the column owns it from then on
    changed = _t([{"dialogue_id": "a", "language": "zh", "audio_flac": [b"A0", b"A1-retry"]}])
    store.write_unit("repair", 0, changed, rej.slice(0, 0), input_table=back)
    assert "audio_flac" in pq.read_table(store.data_path("repair", 0)).column_names
    assert store.read_table("repair", 0).column("audio_flac").to_pylist() == [[b"A0", b"A1-retry"]]
    store.write_unit("select", 0, changed, rej.slice(0, 0), input_table=store.read_table("repair", 0))
    assert heavy_sources(pq.read_table(store.data_path("select", 0))) == {"audio_flac": "repair"}
    assert store.read_table("select", 0).column("audio_flac").to_pylist() == [[b"A0", b"A1-retry"]]


def test_missing_holder_of_a_heavy_column_is_a_clear_error(tmp_path):
    store = RunStore(tmp_path)
    produced = _t([{"dialogue_id": "a", "language": "zh", "audio_flac": [b"A0"]}])
    empty_rej = table_from_rows([], COLS + ["reject_reason"])
    store.write_unit("synthesize", 0, produced, empty_rej)
    store.write_unit("verify", 0, produced, empty_rej, input_table=store.read_table("synthesize", 0))
    store.data_path("synthesize", 0).unlink()
    with pytest.raises(FileNotFoundError, match="holds column 'audio_flac'"):
        store.read_table("verify", 0)


def test_a_unit_without_rejects_writes_no_rejects_file_and_the_same_fingerprint(tmp_path):
    """Two files per unit at most: no empty rejects file, and the fingerprint does not depend on it."""
    store = RunStore(tmp_path)
    produced = _t([{"dialogue_id": "a", "language": "zh", "audio_flac": [b"A0"]}])
    empty_rej = table_from_rows([], COLS + ["reject_reason"])
    fp = store.write_unit("synthesize", 0, produced, empty_rej)
    assert not store.rejected_path("synthesize", 0).exists()
    # the fingerprint is what it would be with the empty file written
    import hashlib

    from kespeechchat.store import file_sha256, with_heavy_sources, write_parquet_atomic

    probe = tmp_path / "probe.parquet"
    write_parquet_atomic(
        probe, with_heavy_sources(empty_rej.drop_columns(["audio_flac"]), {"audio_flac": "synthesize"})
    )
    want = hashlib.sha256(
        (file_sha256(store.data_path("synthesize", 0)) + file_sha256(probe)).encode()
    ).hexdigest()[:16]
    assert fp == want
    # a rerun of a unit that rejected rows before and none now leaves no stale rejects
    rej = table_from_rows(
        [{"dialogue_id": "b", "language": "en", "reject_reason": "x"}], COLS + ["reject_reason"]
    )
    store.write_unit("verify", 0, produced.slice(0, 0), rej)
    assert store.rejected_path("verify", 0).exists()
    store.write_unit("verify", 0, produced, empty_rej)
    assert not store.rejected_path("verify", 0).exists()
    assert sorted(p.name for p in (tmp_path / "verify").rglob("*") if p.is_file()) == ["shard-00000.parquet"]
