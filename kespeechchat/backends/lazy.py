"""One way to load a model: once, on first need, from whichever thread asks first.

Every model-backed adapter (TTS, ASR, speaker, quality) derives from ``LazyModel`` and writes
``_load()``; ``setup()`` runs it under a lock the first time and never again, so a worker that
never needs the model never pays for it. ``needs_extra`` turns a missing optional dependency into
the one message a user can act on: which package is missing and which extra installs it.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager


class LazyModel:
    _loaded = False

    def _load(self) -> None:  # pragma: no cover - every adapter writes its own
        raise NotImplementedError

    @property
    def loaded(self) -> bool:
        return self._loaded

    def setup(self) -> None:
        """Load the model once; cheap when already loaded."""
        if self._loaded:
            return
        with self._setup_lock():
            if self._loaded:
                return
            self._load()
            self._loaded = True

    def _setup_lock(self) -> threading.Lock:
        # dict.setdefault is atomic: two threads asking at once get the same lock
        return self.__dict__.setdefault("_lazy_lock", threading.Lock())


@contextmanager
def needs_extra(what: str, extra: str, hint: str = "") -> Iterator[None]:
    """Imports inside this block that fail raise ImportError naming the missing module and the extra."""
    try:
        yield
    except ImportError as e:
        missing = e.name or str(e)
        raise ImportError(
            f"{what} ({missing} missing){'; ' + hint if hint else ''}; "
            f"install the extra: pip install 'kespeechchat[{extra}]'"
        ) from e
