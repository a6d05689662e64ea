"""Shared fixtures: embedded models prepared once, the real sample data in data/, a quiet environment.

The suite runs in two processes (pytest-xdist, ``make test``). What must be made only once per
session whichever process asks first (a reference run, the tiny dataset) goes through ``made_once``,
which builds it under a file lock in a folder both processes see.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SAMPLE_DATA = REPO / "data"  # real text and speech samples shipped with the repository (data/README.md)

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ["NO_PROXY"] = "127.0.0.1,localhost"


def shared_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder every worker of this test session sees: the session's base temp (its parent under xdist)."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


def made_once(tmp_path_factory: pytest.TempPathFactory, name: str, build) -> Path:
    """``build(folder)`` once per test session, whichever worker asks first; the others wait for it.

    Returns the folder. A build that raised is retried by the next caller (nothing marks it done).
    """
    from filelock import FileLock

    root = shared_root(tmp_path_factory)
    folder = root / name
    done = root / f"{name}.done"
    with FileLock(str(root / f"{name}.lock")):
        if not done.exists():
            folder.mkdir(exist_ok=True)
            build(folder)
            done.touch()
    return folder


@pytest.fixture(scope="session")
def sample_data() -> Path:
    """The repository's data/ folder. A missing file fails the test that needs it, naming the file."""
    manifest = SAMPLE_DATA / "MANIFEST.tsv"
    if not manifest.is_file():
        pytest.fail(f"sample data missing: {manifest} (it ships with the repository)")
    import csv

    with open(manifest, encoding="utf-8") as f:
        missing = [
            r["local_name"]
            for r in csv.DictReader(f, delimiter="\t")
            if not (SAMPLE_DATA / r["kind"] / r["local_name"]).is_file()
        ]
    if missing:
        pytest.fail(f"sample data missing under {SAMPLE_DATA}: {', '.join(missing)}")
    return SAMPLE_DATA


@pytest.fixture(scope="session")
def models_dir() -> Path:
    """The embedded models, prepared once from their packages (idempotent, fast when done)."""
    from kespeechchat.models import default_models_dir, prepare_embedded

    d = default_models_dir()
    prepare_embedded(d, log=lambda s: None)
    return d


@pytest.fixture(scope="session")
def recordings(sample_data):
    """The real recordings as (file, audio, sample_rate_hz, language, transcript)."""
    import csv

    from kespeechchat.audio import load_audio

    d = sample_data / "audio"
    with open(d / "transcripts.tsv", encoding="utf-8") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    out = []
    for r in rows:
        x, sr = load_audio(d / r["file"])
        out.append((r["file"], x, sr, r["language"], r["transcript"]))
    assert {r[3] for r in out} == {"zh", "en"}
    return out


def _campplus_like(path, out_dim: int = 192, seed: int = 0):
    """max over frames, then a fixed random projection: (B, T, 80) -> (B, out_dim). The projection
    ignores what all bins share (columns sum to zero), so recordings spread as speakers do."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper

    w = np.random.default_rng(seed).standard_normal((80, out_dim))
    w = (w - w.mean(axis=0)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("ReduceMax", ["input", "axes"], ["pooled"], keepdims=0),
            helper.make_node("MatMul", ["pooled", "w"], ["output"]),
        ],
        "campplus_like",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["B", "T", 80])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["B", out_dim])],
        initializer=[
            helper.make_tensor("axes", TensorProto.INT64, [1], [1]),
            helper.make_tensor("w", TensorProto.FLOAT, w.shape, w.ravel().tolist()),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return w


@pytest.fixture(scope="session")
def campplus_like():
    """Writes an ONNX graph with CAM++'s signature (input (B, T, 80) -> output (B, 192)) to a
    path: ``campplus_like(path, out_dim=192, seed=0)`` returns its projection matrix."""
    pytest.importorskip("onnx", reason="needs the 'contract' extra")
    return _campplus_like


@pytest.fixture(scope="session")
def campplus_dir(tmp_path_factory, campplus_like):
    """A CosyVoice-like model directory holding only such a campplus.onnx."""
    d = tmp_path_factory.mktemp("cosyvoice") / "CosyVoice2-0.5B"
    d.mkdir()
    campplus_like(d / "campplus.onnx")
    return d


def pytest_collection_modifyitems(config, items):
    """Files with fault tests first, then those with slow tests, then the rest; a file's own order kept.

    The two test processes take whole files from this order (``--dist loadfile
    --no-loadscope-reorder``), so the longest files start first and the short ones fill in at the end.
    """

    def rank(item) -> int:
        return 0 if item.get_closest_marker("faults") else 1 if item.get_closest_marker("slow") else 2

    by_file: dict = {}
    for item in items:
        by_file[item.path] = min(by_file.get(item.path, 2), rank(item))
    items.sort(key=lambda item: by_file[item.path])
