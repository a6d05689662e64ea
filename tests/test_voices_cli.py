"""`kespeechchat voices …` commands end to end (small sizes; listen uses the real Kokoro model)."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import soundfile as sf

from pipelines.cli import main
from voice_library.pool import load_pool
from voice_library.recipes import library_meta, load_library


@pytest.fixture(scope="module")
def lib(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "voices.parquet"
    assert main(["voices", "build", "--size", "3000", "--seed", "7", "--out", str(out)]) == 0
    return out


def test_build_writes_a_library_with_its_measurement(lib, capsys):
    voices = load_library(lib)
    assert sum(v.role == "user" for v in voices) == 3000 and sum(v.role == "agent" for v in voices) == 4
    meta = library_meta(lib)
    pool = load_pool()
    assert meta["distinct"]["max_identity_cosine"] == pool.max_identity_cosine
    assert meta["identities"] == len(pool.identities) and meta["seed"] == 7


def test_build_output_names_distinct_identities(tmp_path, capsys):
    out = tmp_path / "v.parquet"
    assert main(["voices", "build", "--size", "100", "--out", str(out), "--no-agents"]) == 0
    text = capsys.readouterr().out
    assert "distinct identities" in text and "built in" in text
    assert all(v.role == "user" for v in load_library(out))


def test_stats_prints_tables_and_plots(lib, tmp_path, capsys):
    png = tmp_path / "s.png"
    assert main(["voices", "stats", str(lib), "--png", str(png)]) == 0
    out = capsys.readouterr().out
    assert "user voices by language × gender × age band" in out and png.exists()
    assert main(["voices", "stats", str(lib), "--json"]) == 0
    s = json.loads(capsys.readouterr().out)
    assert s["user_voices"] == 3000


def test_listen_writes_a_wav_of_the_voice(lib, tmp_path, capsys, models_dir):
    from kespeechchat.backends.world import median_f0_hz

    voice = next(v for v in load_library(lib) if v.role == "user" and v.gender == "male")
    wav = tmp_path / "x.wav"
    assert (
        main(
            [
                "voices",
                "listen",
                str(lib),
                voice.voice_id,
                "--out",
                str(wav),
                "--lang",
                "en",
                "--text",
                "Good morning to you.",
            ]
        )
        == 0
    )
    x, sr = sf.read(wav)
    assert sr == 24000 and 0.5 < x.size / sr < 6 and np.abs(x).max() > 0.05
    assert median_f0_hz(x.astype(np.float32), sr) < 165  # it is the male voice it claims


def test_listen_unknown_voice_fails_clearly(lib, tmp_path):
    with pytest.raises(SystemExit, match="not in"):
        main(["voices", "listen", str(lib), "v-nope", "--out", str(tmp_path / "y.wav")])


def test_privacy_command_passes_on_the_shipped_library(lib, sample_data, capsys):
    assert main(["voices", "privacy", str(lib), "--refs", str(sample_data / "audio")]) == 0
    assert "PASSED" in capsys.readouterr().out


def test_embed_and_sample_embeddings_commands(tmp_path, sample_data, capsys, campplus_dir):
    """The CosyVoice route: CAM++ embeddings of recordings -> a sampled pool -> a library -> privacy."""
    emb = tmp_path / "real.parquet"
    assert (
        main(
            [
                "voices",
                "embed-recordings",
                str(sample_data / "audio"),
                "--out",
                str(emb),
                "--segment-s",
                "1.6",
                "--encoder",
                "campplus",
                "--model-dir",
                str(campplus_dir),
            ]
        )
        == 0
    )
    assert "192 dimensions" in capsys.readouterr().out
    t = pq.read_table(emb)
    genders = {"zh_funasr_asr_example.wav": "male", "en_whisper_jfk.flac": "male"}
    t = t.append_column(
        "gender", pa.array([genders.get(s, "female") for s in t.column("speaker_id").to_pylist()])
    )
    pq.write_table(t, emb)
    pool = tmp_path / "cosy.parquet"
    assert (
        main(
            [
                "voices",
                "sample-embeddings",
                str(emb),
                "--identities",
                "12",
                "--out",
                str(pool),
                "--privacy-max-cosine",
                "0.8",
            ]
        )
        == 0
    )
    p = load_pool(pool)
    assert len(p.identities) == 12 and p.meta["backend"] == "cosyvoice"
    lib = tmp_path / "cosy-voices.parquet"
    assert (
        main(
            [
                "voices",
                "build",
                "--backend",
                "cosyvoice",
                "--pool",
                str(pool),
                "--size",
                "40",
                "--out",
                str(lib),
            ]
        )
        == 0
    )
    assert {v.backend for v in load_library(lib)} == {"cosyvoice"}
    # privacy: the references are embedded by the pool's encoder (CAM++), not resemblyzer
    argv = ["voices", "privacy", str(lib), "--pool", str(pool), "--refs", str(sample_data / "audio")]
    with pytest.raises(SystemExit, match="--model-dir"):
        main_debug(argv)
    # (sampled at ≤ 0.8 to 1.6 s pieces; whole recordings embed a little differently)
    assert main(argv + ["--model-dir", str(campplus_dir), "--max-cosine", "0.9"]) == 0
    assert "PASSED" in capsys.readouterr().out
    # the audit of a CosyVoice library speaks with CosyVoice and embeds with its CAM++ encoder
    audit = ["voices", "audit", str(lib), "--sample", "2", "--work", str(tmp_path / "audit")]
    with pytest.raises(SystemExit, match="--model-dir"):
        main_debug(audit)
    with pytest.raises(FileNotFoundError, match="cosyvoice2.yaml"):  # the directory holds only campplus.onnx
        main_debug(audit + ["--model-dir", str(campplus_dir)])


def test_usage_command_on_a_run_without_assign_fails(tmp_path):
    with pytest.raises(FileNotFoundError, match="assign"):
        main_debug(["voices", "usage", str(tmp_path)])


def main_debug(argv: list[str]) -> int:
    """Run the CLI letting exceptions through (as KESPEECHCHAT_DEBUG does)."""
    from pipelines.cli import build_parser

    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)
