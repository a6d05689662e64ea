"""A voice as the backends read it: a small deterministic recipe, not a waveform.

The voice library (``voice_library``) builds and stores recipes; the TTS backends speak them.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from kespeechchat.backends import registry

ROLES = ("user", "agent")
LANGUAGES = ("zh", "en", "multi")
GENDERS = ("female", "male")
AGE_BANDS = ("young", "adult", "senior")


@dataclass(frozen=True)
class VoiceRecipe:
    """Everything needed to speak with one virtual voice, deterministically."""

    voice_id: str
    backend: str
    role: str  # "user" | "agent"
    identity_id: str  # voices sharing an identity differ only in prosody ("variants")
    base_weights: dict[str, float]  # base voice -> weight (sum 1, negatives allowed)
    speed: float
    pitch_ratio: float
    formant_ratio: float
    language: str  # "zh" | "en" | "multi"
    gender: str  # "female" | "male", from the identity's measured median F0
    age_band: str  # "young" | "adult" | "senior", heuristic label
    speaker_embedding: list[float] | None = None  # for CosyVoice recipes
    seed: int = 0
    prosody_weights: dict[str, float] | None = None  # Kokoro: blend of the prosody half, if separate
    style_offsets: list[float] | None = None  # Kokoro: offsets along the length directions

    def __post_init__(self) -> None:
        for name, value, allowed in (
            ("backend", self.backend, tuple(registry.names("tts"))),
            ("role", self.role, ROLES),
            ("language", self.language, LANGUAGES),
            ("gender", self.gender, GENDERS),
            ("age_band", self.age_band, AGE_BANDS),
        ):
            if value not in allowed:
                raise ValueError(f"voice {self.voice_id}: {name} {value!r} not in {allowed}")
        if not self.base_weights:
            raise ValueError(f"voice {self.voice_id}: empty base_weights")
        for name, weights in (("base weights", self.base_weights), ("prosody weights", self.prosody_weights)):
            if weights is None:
                continue
            total = sum(weights.values())
            if abs(total - 1.0) > 1e-3:
                raise ValueError(f"voice {self.voice_id}: {name} sum to {total:.4f}, expected 1")
        for name in ("speed", "pitch_ratio", "formant_ratio"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                raise ValueError(f"voice {self.voice_id}: {name} must be a positive number, got {v!r}")
        if self.style_offsets is not None and not all(math.isfinite(x) for x in self.style_offsets):
            raise ValueError(f"voice {self.voice_id}: style_offsets must be finite numbers")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["base_weights"] = dict(self.base_weights)
        d["prosody_weights"] = None if self.prosody_weights is None else dict(self.prosody_weights)
        for k in ("speaker_embedding", "style_offsets"):
            v = getattr(self, k)
            d[k] = None if v is None else [float(x) for x in v]
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> VoiceRecipe:
        """Inverse of ``to_dict``; also accepts weights as (name, weight) pairs (Parquet maps)."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown voice recipe fields {sorted(unknown)}")
        kw = dict(d)
        kw["base_weights"] = _weights(kw.get("base_weights")) or {}
        kw["prosody_weights"] = _weights(kw.get("prosody_weights"))
        for k in ("speaker_embedding", "style_offsets"):
            v = kw.get(k)
            kw[k] = None if v is None else [float(x) for x in v]
        for name in ("speed", "pitch_ratio", "formant_ratio"):
            kw[name] = float(kw[name])
        kw["seed"] = int(kw.get("seed", 0))
        return cls(**kw)


def _weights(v: Any) -> dict[str, float] | None:
    if v is None:
        return None
    items = v.items() if isinstance(v, Mapping) else v
    return {str(k): float(x) for k, x in items}
