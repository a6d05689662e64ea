"""The dataset commands (card, export-hf, inspect) through the real command-line entry point."""

from __future__ import annotations

import io
import json
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest
from test_package import build_tiny_run, select_accounting

from pipelines.cli import build_parser, main

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return build_tiny_run(tmp_path_factory)


def test_commands_are_registered():
    p = build_parser()
    assert p.parse_args(["inspect", "r"]).func.__name__ == "cmd_inspect"
    assert p.parse_args(["card", "r"]).func.__name__ == "cmd_card"
    args = p.parse_args(["export-hf", "r", "--repo-id", "o/n", "--private", "--push"])
    assert args.func.__name__ == "cmd_export_hf" and args.private and args.push and args.timeout == 10.0


def test_inspect_prints_rows(tiny, capsys):
    assert main(["inspect", str(tiny.run_dir), "--n", "2"]) == 0
    out = capsys.readouterr().out
    assert out.count("text: ") == 2 and "2 row(s) from" in out
    first = pq.read_table(
        next((tiny.run_dir / "dataset" / "data").glob("*.parquet")), columns=["utterance_id"]
    )
    assert first.column("utterance_id")[0].as_py() in out


def test_inspect_by_run_name_as_json_and_one_dialogue(tiny, capsys):
    assert main(["inspect", tiny.name, "--runs-dir", str(tiny.runs_dir), "--n", "1000", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    _, utterances = select_accounting(tiny.run_dir)
    assert len(rows) == utterances and all(r["split"] == "train" for r in rows)
    longest = max(rows, key=lambda r: r["turn_index"])["dialogue_id"]
    assert main(["inspect", str(tiny.run_dir), "--dialogue", longest, "--json"]) == 0
    turns = json.loads(capsys.readouterr().out)
    assert {r["dialogue_id"] for r in turns} == {longest}
    assert [r["turn_index"] for r in turns] == list(range(len(turns))) and len(turns) >= 2
    assert [r["role"] for r in turns][:2] == ["user", "assistant"]


def test_inspect_writes_wavs_that_match_the_stored_audio(tiny, tmp_path, capsys):
    import soundfile as sf

    wav_dir = tmp_path / "wav"
    assert main(["inspect", str(tiny.run_dir), "--n", "3", "--wav-dir", str(wav_dir)]) == 0
    out = capsys.readouterr().out
    wavs = sorted(wav_dir.glob("*.wav"))
    assert len(wavs) == 3 and all(f"wrote {w}" in out for w in wavs)
    t = pq.read_table(
        next((tiny.run_dir / "dataset" / "data").glob("*.parquet")),
        columns=["utterance_id", "audio", "duration_s"],
    )
    stored = {r["utterance_id"]: r for r in t.to_pylist()}
    for w in wavs:
        info = sf.info(w)
        assert info.samplerate == 24000 and info.subtype == "PCM_16" and info.channels == 1
        r = stored[w.stem]
        x, _ = sf.read(w, dtype="int16")
        y, _ = sf.read(io.BytesIO(r["audio"]["bytes"]), dtype="int16")
        assert np.array_equal(x, y)  # the FLAC is lossless 16-bit: the WAV holds the same samples
        assert info.duration == pytest.approx(r["duration_s"], rel=1e-3)


def test_inspect_errors_are_clear(tiny, tmp_path, capsys):
    assert main(["inspect", str(tiny.run_dir), "--split", "test"]) == 1
    assert "no split 'test'; splits: train" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="no dialogue 'd-missing'"):
        main(["inspect", str(tiny.run_dir), "--dialogue", "d-missing"])
    with pytest.raises(SystemExit, match="--n must be at least 1"):
        main(["inspect", str(tiny.run_dir), "--n", "0"])
    with pytest.raises(SystemExit, match="no run directory 'nope'"):
        main(["inspect", "nope", "--runs-dir", str(tmp_path)])


def test_card_and_export_without_push(tiny, tmp_path, capsys):
    run = tmp_path / tiny.name
    shutil.copytree(tiny.run_dir, run)
    assert main(["card", str(run)]) == 0
    assert capsys.readouterr().out.strip() == str(run / "dataset" / "README.md")
    assert main(["export-hf", str(run), "--repo-id", "org/tiny-set", "--out", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert f"export: {tmp_path / 'out'}" in out and "--push" in out
    assert (tmp_path / "out" / "README.md").exists() and list(
        (tmp_path / "out" / "data").glob("train-*.parquet")
    )
    assert main(["export-hf", str(run), "--repo-id", "no-slash"]) == 1
    assert "expected ORG/NAME" in capsys.readouterr().err
