"""One registry per kind of backend (tts, asr, speaker, quality): a backend is one adapter file.

An adapter module under ``kespeechchat/backends/`` registers itself with ``register(Backend(...))``:
its name (what ``<kind>.backend`` in a config says), the factory that builds it from its config
section, what the dataset card says about its model and licence, and ``diagnose``, the checks
``kespeechchat doctor`` runs before a run (files, packages, devices). Nothing else names it:
``create``, the config's validation, the card and the doctor all read the registry, which imports
every module of the package once, on first use.
"""

from __future__ import annotations

import importlib
import importlib.util
import pkgutil
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

KINDS = ("tts", "asr", "speaker", "quality")


@dataclass(frozen=True)
class Finding:
    """One line of ``kespeechchat doctor``: what was checked, whether it is fine (None: not checked)."""

    item: str
    ok: bool | None
    detail: str
    component: str = ""  # "" : the backend's kind; else e.g. "asr (en)" for a second model


@dataclass(frozen=True)
class Backend:
    kind: str
    name: str
    create: Callable[..., Any]  # (config section, **stage options) -> adapter, not yet set up
    model: str = ""  # the model as the dataset card names it ("" for a model the user brings)
    licence: str = ""
    diagnose: Callable[[Any], list[Finding]] | None = None  # (config section) -> findings
    embedded: bool = False  # ships inside the install (the laptop path)
    # TTS only: the speaker encoder whose space the voice library measures this TTS's voices in,
    # and, for a TTS conditioned on speaker embeddings, their length (None: recipes, not embeddings)
    voice_encoder: str = "resemblyzer"
    embedding_dim: int | None = None


_REGISTRY: dict[str, dict[str, Backend]] = {k: {} for k in KINDS}
_discovered = False
_lock = threading.Lock()


def register(backend: Backend) -> Backend:
    if backend.kind not in KINDS:
        raise ValueError(f"unknown backend kind {backend.kind!r} (one of {', '.join(KINDS)})")
    known = _REGISTRY[backend.kind].get(backend.name)
    if known is not None and known.create is not backend.create:
        raise ValueError(f"{backend.kind} backend {backend.name!r} is registered twice")
    _REGISTRY[backend.kind][backend.name] = backend
    return backend


def _discover() -> None:
    """Import every adapter module of this package once, so that each has registered itself."""
    global _discovered
    if _discovered:
        return
    with _lock:
        if _discovered:
            return
        here = Path(__file__).resolve().parent
        for m in sorted(pkgutil.iter_modules([str(here)]), key=lambda m: m.name):
            if m.name != "registry":
                importlib.import_module(f"{__package__}.{m.name}")
        _discovered = True


def names(kind: str) -> list[str]:
    _discover()
    return sorted(_REGISTRY[kind])


def get(kind: str, name: str) -> Backend:
    _discover()
    try:
        return _REGISTRY[kind][name]
    except KeyError:
        raise ValueError(
            f"unknown {kind} backend {name!r}; registered: {', '.join(sorted(_REGISTRY[kind])) or 'none'}"
        ) from None


def create(kind: str, section: Any, **options: Any) -> Any:
    """The adapter the config section names (``section.backend``), built but not set up."""
    return get(kind, section.backend).create(section, **options)


# --- helpers for the adapters' diagnose functions ----------------------------------------------------


def files_present(root: str | None, names: list[str | tuple[str, ...]]) -> list[Finding]:
    """The directory exists and holds each name (a tuple: any one of its alternatives)."""
    if not root:
        return [Finding("model_dir", False, "not set: a local model directory is required")]
    d = Path(root)
    if not d.exists():
        return [Finding("model directory", False, f"{d} does not exist")]
    out = [Finding("model directory", True, str(d))]
    for n in names:
        alts = (n,) if isinstance(n, str) else n
        found = next((a for a in alts if (d / a).exists()), None)
        out.append(Finding(" or ".join(alts), found is not None, "present" if found else f"missing in {d}"))
    return out


def module_present(module: str, hint: str) -> Finding:
    try:
        ok = importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # the parent package is missing
        ok = False
    return Finding(f"python package {module}", ok, "importable" if ok else f"not installed: {hint}")


def cuda_present(device: str) -> list[Finding]:
    if not device.startswith("cuda"):
        return []
    import torch  # only asked for a CUDA device, where torch is installed

    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return [
        Finding(
            f"device {device}", n > 0, f"{n} CUDA device(s) on this machine" if n else "no CUDA device here"
        )
    ]
