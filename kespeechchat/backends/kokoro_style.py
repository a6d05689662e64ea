"""Kokoro style tensors of a voice recipe: more of the voice space than blends of whole voices.

A Kokoro voice is a (510, 1, 256) tensor; the row used for an utterance is picked by its phoneme
count. Columns 0–127 condition the decoder (timbre), columns 128–255 the prosody predictor
(duration, F0, energy), as in StyleTTS 2. Besides the affine blend of whole base voices
(``base_weights``) a recipe may carry

* ``prosody_weights``: a separate blend for the predictor half ("split" recipes), and
* ``style_offsets``: coefficients along the *length directions*, the principal directions in
  which the rows of one voice differ from each other (they change with utterance length). Each
  direction is a unit vector over all 256 columns, scaled by the spread of the shipped voices'
  rows along it, so a coefficient of 1 is one within-voice standard deviation.

Both are deterministic functions of the shipped voices file, so a recipe stays a few numbers.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

DECODER_COLUMNS = slice(0, 128)
PREDICTOR_COLUMNS = slice(128, 256)
# Rows of typical utterances (phoneme counts); the first rows (very short inputs) are outliers.
LENGTH_ROWS = slice(20, 300)
N_LENGTH_DIRECTIONS = 4

_DIRECTIONS_CACHE: dict[tuple[str, ...], tuple[np.ndarray, np.ndarray]] = {}


def length_directions(
    base: Mapping[str, np.ndarray], k: int = N_LENGTH_DIRECTIONS
) -> tuple[np.ndarray, np.ndarray]:
    """(k, 256) unit directions and their (k,) within-voice standard deviations.

    Principal directions of the rows' deviations from their voice's mean row, pooled over the
    base voices; each direction's sign makes its largest-magnitude component positive, so the
    result does not depend on the SVD implementation.
    """
    names = tuple(sorted(base))
    key = (*names, str(k))
    hit = _DIRECTIONS_CACHE.get(key)
    if hit is not None:
        return hit
    dev = []
    for n in names:
        rows = np.asarray(base[n], dtype=np.float64).reshape(np.shape(base[n])[0], -1)[LENGTH_ROWS]
        dev.append(rows - rows.mean(axis=0, keepdims=True))
    d = np.concatenate(dev)
    _, s, vt = np.linalg.svd(d, full_matrices=False)
    dirs = vt[:k].copy()
    for i in range(dirs.shape[0]):
        if dirs[i, np.argmax(np.abs(dirs[i]))] < 0:
            dirs[i] = -dirs[i]
    scales = s[:k] / np.sqrt(d.shape[0])
    _DIRECTIONS_CACHE[key] = (dirs, scales)
    return dirs, scales


def _mix(base: Mapping[str, np.ndarray], weights: Mapping[str, float], who: str) -> np.ndarray:
    unknown = [n for n in weights if n not in base]
    if unknown:
        raise ValueError(f"{who}: unknown base voices {unknown}; have {sorted(base)}")
    out = np.zeros_like(np.asarray(next(iter(base.values())), dtype=np.float32))
    for n, w in sorted(weights.items()):
        out += np.float32(w) * np.asarray(base[n], dtype=np.float32)
    return out


def style_tensor(recipe: Any, base: Mapping[str, np.ndarray]) -> np.ndarray:
    """The (510, 1, 256) style tensor of ``recipe`` (a VoiceRecipe or anything with its fields)."""
    return style_from_parts(
        base,
        recipe.base_weights,
        getattr(recipe, "prosody_weights", None),
        getattr(recipe, "style_offsets", None),
        who=f"voice {getattr(recipe, 'voice_id', '?')}",
    )


def style_from_parts(
    base: Mapping[str, np.ndarray],
    base_weights: Mapping[str, float],
    prosody_weights: Mapping[str, float] | None = None,
    style_offsets: Sequence[float] | None = None,
    who: str = "style",
) -> np.ndarray:
    if not base_weights:
        raise ValueError(f"{who}: empty base_weights")
    style = _mix(base, base_weights, who)
    if prosody_weights:
        style[..., PREDICTOR_COLUMNS] = _mix(base, prosody_weights, who)[..., PREDICTOR_COLUMNS]
    if style_offsets:
        coef = np.asarray(style_offsets, dtype=np.float64)
        dirs, scales = length_directions(base, max(N_LENGTH_DIRECTIONS, coef.size))
        if coef.size > dirs.shape[0]:
            raise ValueError(f"{who}: {coef.size} style offsets, only {dirs.shape[0]} directions")
        offset = (coef * scales[: coef.size]) @ dirs[: coef.size]
        style = style + offset.astype(np.float32).reshape((1,) * (style.ndim - 1) + (-1,))
    return style
