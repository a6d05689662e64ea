"""Backends are found through one registry per kind: a new adapter registers itself and the config,
the stages' factory, the dataset card and the doctor all know it, with no other file changed."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from kespeechchat.backends import registry
from kespeechchat.backends.registry import Backend, Finding
from kespeechchat.backends.tts import make_tts
from kespeechchat.config import TTSConfig
from kespeechchat.testing import small_config
from pipelines.card import _models
from pipelines.doctor import check_backend


class _ToneTTS:
    """A stand-in adapter: a tone whose length follows the text."""

    sample_rate_hz = 16000

    def __init__(self, pitch_hz: float):
        self.pitch_hz = pitch_hz

    def setup(self) -> None:
        pass

    def synthesize(self, text, language, voice, seed=0, attempt=1):
        t = np.arange(int(0.05 * len(text) * self.sample_rate_hz)) / self.sample_rate_hz
        return (0.1 * np.sin(2 * np.pi * self.pitch_hz * t)).astype(np.float32)


@pytest.fixture
def tone_backend():
    b = registry.register(
        Backend(
            "tts",
            "tone",
            lambda cfg, **kw: _ToneTTS(pitch_hz=220.0 if cfg.model_dir is None else 440.0),
            model="a test tone",
            licence="CC0-1.0",
            diagnose=lambda cfg: [Finding("tone generator", True, "always there")],
            embedded=True,
        )
    )
    yield b
    registry._REGISTRY["tts"].pop("tone")


def test_every_kind_lists_its_shipped_backends():
    assert registry.names("tts") == ["cosyvoice", "kokoro"]
    assert registry.names("asr") == ["faster_whisper", "funasr"]
    assert registry.names("speaker") == ["campplus", "pyannote", "resemblyzer"]
    assert registry.names("quality") == ["dnsmos", "none"]


def test_an_unknown_backend_is_refused_with_the_registered_ones():
    with pytest.raises(ValidationError, match="unknown tts backend 'tonee'; registered: cosyvoice, kokoro"):
        TTSConfig(backend="tonee")


def test_a_registered_backend_is_known_everywhere(tone_backend, tmp_path):
    cfg = small_config(tmp_path, [{"path": "unused.jsonl"}], tts={"backend": "tone"})
    tts = make_tts(cfg.tts)
    assert isinstance(tts, _ToneTTS) and tts.synthesize("你好", "zh", None).size == 1600
    assert ("TTS", "a test tone", "CC0-1.0") in _models(cfg)
    checks = check_backend(cfg, "tts")
    assert [(c.component, c.item, c.ok) for c in checks] == [("tts", "tone generator", True)]


def test_the_same_name_cannot_be_registered_twice(tone_backend):
    with pytest.raises(ValueError, match="registered twice"):
        registry.register(Backend("tts", "tone", lambda cfg: None))
