"""Privacy: real recordings embedded, closest library identity per reference, violations caught."""

from __future__ import annotations

import numpy as np
import pytest

from voice_library.pool import load_pool
from voice_library.privacy import (
    check_library_privacy,
    format_report,
    privacy_report,
    reference_embeddings,
    reference_files,
)
from voice_library.recipes import agent_voices, build_library


@pytest.fixture(scope="module")
def refs(sample_data):
    from kespeechchat.backends.speaker import ResemblyzerEncoder

    return reference_embeddings(sample_data / "audio", ResemblyzerEncoder())


def test_reference_recordings_are_embedded_per_file(refs, sample_data, tmp_path):
    assert len(refs) == 5 and "en_whisper_jfk.flac" in refs
    for v in refs.values():
        assert abs(np.linalg.norm(v) - 1) < 1e-6
    # five different real people: the encoder keeps them apart
    m = np.asarray(list(refs.values()))
    s = m @ m.T
    np.fill_diagonal(s, -1)
    assert s.max() < 0.9
    assert reference_files(sample_data / "audio" / "en_whisper_jfk.flac")[0].name == "en_whisper_jfk.flac"
    with pytest.raises(FileNotFoundError, match="no reference recordings"):
        reference_files(tmp_path)


def test_whole_library_stays_away_from_real_speakers(refs):
    pool = load_pool()
    voices = build_library(42_002, seed=0) + agent_voices()
    rep = check_library_privacy(voices, pool, refs, max_cosine=0.85)
    assert rep["identities_checked"] == len(pool.identities)
    assert rep["passed"] and rep["violations"] == []
    assert {c["reference"] for c in rep["closest"]} == set(refs)
    top = rep["closest"][0]
    assert top["cosine"] == max(c["cosine"] for c in rep["closest"]) < 0.85
    assert "PASSED" in format_report(rep)


def test_a_voice_too_close_to_a_reference_is_reported(refs):
    pool = load_pool()
    cents = pool.centroids()[:5]
    ids = [i.identity_id for i in pool.identities[:5]]
    fake = {"cloned_speaker": cents[2] + 0.01 * np.ones_like(cents[2])}
    rep = privacy_report(cents, ids, {**refs, **fake}, max_cosine=0.85)
    assert not rep["passed"]
    assert (
        rep["violations"][0]["identity_id"] == ids[2]
        and rep["violations"][0]["reference"] == "cloned_speaker"
    )
    assert rep["closest"][0]["reference"] == "cloned_speaker" and rep["closest"][0]["cosine"] > 0.99
    assert "FAILED" in format_report(rep)
    with pytest.raises(ValueError, match="at least one reference"):
        privacy_report(cents, ids, {})


def test_identities_without_a_measured_centroid_are_refused(refs):
    users = build_library(4, seed=0)
    stranger = users[0].__class__.from_dict(
        {**users[0].to_dict(), "identity_id": "i-unmeasured", "voice_id": "v-u"}
    )
    with pytest.raises(ValueError, match="no measured centroid"):
        check_library_privacy(users + [stranger], load_pool(), refs)
