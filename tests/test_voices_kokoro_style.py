"""Kokoro style tensors from recipes: whole-voice blends, split prosody half, length-direction offsets."""

from __future__ import annotations

import numpy as np
import pytest

from kespeechchat.backends.kokoro_style import (
    DECODER_COLUMNS,
    LENGTH_ROWS,
    PREDICTOR_COLUMNS,
    length_directions,
    style_from_parts,
    style_tensor,
)
from kespeechchat.voice import VoiceRecipe


@pytest.fixture(scope="module")
def base(models_dir) -> dict[str, np.ndarray]:
    with np.load(models_dir / "kokoro" / "voices.npz") as z:
        return {k: np.asarray(z[k], dtype=np.float32) for k in z.files}


def test_plain_blend_is_the_weighted_sum(base):
    w = {"jf_alpha": 1.4, "jm_kumo": -0.4}
    expected = 1.4 * base["jf_alpha"] - 0.4 * base["jm_kumo"]
    np.testing.assert_allclose(style_from_parts(base, w), expected, rtol=1e-5, atol=1e-6)


def test_split_recipe_takes_the_predictor_half_from_the_prosody_blend(base):
    s = style_from_parts(base, {"jf_alpha": 1.0}, {"jm_kumo": 1.0})
    np.testing.assert_array_equal(s[..., DECODER_COLUMNS], base["jf_alpha"][..., DECODER_COLUMNS])
    np.testing.assert_array_equal(s[..., PREDICTOR_COLUMNS], base["jm_kumo"][..., PREDICTOR_COLUMNS])


def test_length_directions_are_orthonormal_and_describe_row_variation(base):
    dirs, scales = length_directions(base)
    assert dirs.shape == (4, 256) and scales.shape == (4,)
    np.testing.assert_allclose(dirs @ dirs.T, np.eye(4), atol=1e-8)
    assert (np.diff(scales) <= 0).all() and scales[-1] > 0
    # the first direction carries most of how one voice's rows differ with utterance length
    rows = base["jf_alpha"][LENGTH_ROWS, 0, :].astype(np.float64)
    dev = rows - rows.mean(axis=0)
    share = np.sum((dev @ dirs[0]) ** 2) / np.sum(dev**2)
    assert share > 0.3
    again, _ = length_directions(dict(reversed(list(base.items()))))
    np.testing.assert_array_equal(again, dirs)  # independent of dict order


def test_offsets_move_every_row_by_the_same_scaled_vector(base):
    dirs, scales = length_directions(base)
    s0 = style_from_parts(base, {"jf_nezumi": 1.0})
    s1 = style_from_parts(base, {"jf_nezumi": 1.0}, None, [0.0, 2.0, 0.0, -1.0])
    diff = (s1 - s0)[:, 0, :]
    expected = 2.0 * scales[1] * dirs[1] - 1.0 * scales[3] * dirs[3]
    np.testing.assert_allclose(diff, np.broadcast_to(expected, diff.shape), atol=1e-5)
    with pytest.raises(ValueError, match="directions"):
        style_from_parts(base, {"jf_nezumi": 1.0}, None, [0.0] * 300)


def test_recipe_fields_are_used_and_unknown_voices_named(base):
    r = VoiceRecipe(
        voice_id="v-x",
        backend="kokoro",
        role="user",
        identity_id="i-x",
        base_weights={"jf_alpha": 1.0},
        speed=1.0,
        pitch_ratio=1.0,
        formant_ratio=1.0,
        language="zh",
        gender="female",
        age_band="adult",
        prosody_weights={"jf_tebukuro": 1.0},
        style_offsets=[1.0, 0.0, 0.0, 0.0],
    )
    expected = style_from_parts(base, r.base_weights, r.prosody_weights, r.style_offsets)
    np.testing.assert_array_equal(style_tensor(r, base), expected)
    with pytest.raises(ValueError, match="unknown base voices.*af_heart"):
        style_from_parts(base, {"af_heart": 1.0})
    with pytest.raises(ValueError, match="empty"):
        style_from_parts(base, {})
