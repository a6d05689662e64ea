"""Audit: EER and speaker-ID arithmetic, identity-first sampling, a real tiny audit with the baseline."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from voice_library.audit import (
    AUDIT_PROBES,
    RESULT_SCHEMA,
    audit_library,
    eer,
    naive_voices,
    report_markdown,
    sample_voices,
    summarize,
)
from voice_library.recipes import agent_voices, build_library


def test_eer_of_known_score_sets():
    assert eer(np.array([0.9, 0.8, 0.7]), np.array([0.1, 0.2, 0.3])) == 0.0
    assert eer(np.array([0.1, 0.2]), np.array([0.8, 0.9])) == 1.0
    rng = np.random.default_rng(0)
    same = eer(rng.normal(size=4000), rng.normal(size=4000))
    assert 0.45 < same < 0.55
    assert np.isnan(eer(np.array([]), np.array([0.2])))


def test_sampling_takes_distinct_identities_first():
    lib = build_library(300, seed=0) + agent_voices()
    n_ident = len({v.identity_id for v in lib if v.role == "user"})
    s = sample_voices(lib, min(40, n_ident), seed=1)
    assert len({v.identity_id for v in s}) == len(s) and all(v.role == "user" for v in s)
    more = sample_voices(lib, n_ident + 5, seed=1)
    assert len({v.identity_id for v in more}) == n_ident  # then a second variant of five identities
    assert sample_voices(lib, 10, seed=1) == sample_voices(lib, 10, seed=1)
    with pytest.raises(ValueError, match="user voices"):
        sample_voices(lib, 10_000, seed=0)


def test_naive_baseline_is_convex_blends_without_world():
    v = naive_voices(20, seed=0)
    assert v == naive_voices(20, seed=0)
    for r in v:
        assert all(w >= 0 for w in r.base_weights.values()) and abs(sum(r.base_weights.values()) - 1) < 1e-6
        assert r.pitch_ratio == 1.0 and r.formant_ratio == 1.0 and r.speed == 1.0
    assert len({r.identity_id for r in v}) == 20


def _table(emb: np.ndarray, identities: list[str]) -> pa.Table:
    rows = []
    for k, (e, i) in enumerate(zip(emb, identities, strict=True)):
        rows.append(
            {
                "voice_id": f"v{k}",
                "identity_id": i,
                "gender": "female",
                "embeddings": e.astype(np.float32).tolist(),
                "errors": [0.0, 0.1, 0.0, 0.2],
                "hypotheses": ["", "", "", ""],
                "f0_median_hz": 220.0,
                "audio_s": 8.0,
            }
        )
    return pa.Table.from_pylist(rows, schema=RESULT_SCHEMA)


def test_summary_counts_identities_not_voices():
    rng = np.random.default_rng(0)
    d = 32
    centres = np.eye(d)[:3]
    ids = ["a", "a", "b", "b", "c", "c"]  # three identities, two variants each
    emb = np.stack([[centres["abc".index(i)] + 0.05 * rng.normal(size=d) for _ in AUDIT_PROBES] for i in ids])
    s = summarize(_table(emb, ids), max_identity_cosine=0.9)
    assert s["voices"] == 6 and s["identities"] == 3
    assert s["speaker_id_accuracy_identity"] == 1.0 and s["eer"] == 0.0
    assert s["speaker_id_accuracy_voice"] < 1.0  # variants of one identity are not told apart, as intended
    assert s["within_identity_cosine"]["min"] > 0.9 > s["nn_cosine_other_identity"]["max"]
    assert s["share_nn_over_bound"] == 0.0
    assert s["error_rates"]["zh"]["mean"] == 0.05 and s["error_rates"]["en"]["share_over_max"] == 0.5
    # a voice whose test probes sound like another identity is a speaker-ID error
    emb[0, 1] = emb[0, 3] = centres[1]
    worse = summarize(_table(emb, ids))
    assert worse["speaker_id_accuracy_identity"] < 1.0 and worse["eer"] > 0.0
    md = report_markdown({"library": s, "baseline_naive_blends": worse})
    assert "| speaker-ID accuracy (identity) | 1.0 |" in md and "baseline" in md


def test_error_rates_count_only_the_voices_whose_identity_serves_the_language():
    d = 16
    ids = ["a", "b", "c"]
    emb = np.stack([[np.eye(d)[k] for _ in AUDIT_PROBES] for k in range(3)])
    t = _table(emb, ids).to_pylist()
    t[2]["errors"] = [0.9, 0.9, 0.0, 0.0]  # identity c garbles Chinese, and does not speak it
    table = pa.Table.from_pylist(t, schema=RESULT_SCHEMA)
    assert summarize(table)["error_rates"]["zh"]["share_voices_over_max"] == round(1 / 3, 4)
    s = summarize(table, serves={"a": {"zh", "en"}, "b": {"zh", "en"}, "c": {"en"}})
    assert s["error_rates"]["zh"]["voices"] == 2 and s["error_rates"]["zh"]["share_voices_over_max"] == 0.0
    assert s["error_rates"]["en"]["voices"] == 3
    from voice_library.audit import served_languages
    from voice_library.recipes import build_library

    voices = build_library(40, seed=0)
    served = served_languages(voices)
    assert set(served) == {v.identity_id for v in voices}
    assert all(v.language in served[v.identity_id] for v in voices)


@pytest.mark.slow
def test_real_audit_of_a_few_voices_with_baseline(tmp_path, sample_data, models_dir):
    import torch

    from kespeechchat.backends.asr import FasterWhisperASR
    from kespeechchat.backends.speaker import ResemblyzerEncoder
    from kespeechchat.backends.tts import KokoroTTS
    from voice_library.privacy import reference_embeddings

    torch.set_num_threads(1)
    enc = ResemblyzerEncoder()
    refs = reference_embeddings(sample_data / "audio" / "zh_cosyvoice_zero_shot_prompt.wav", enc)
    lib = build_library(50, seed=0)
    kw = dict(seed=0, work_dir=tmp_path / "work", tts=KokoroTTS(), encoder=enc, asr=FasterWhisperASR())
    rep = audit_library(
        lib, 3, baseline=True, references=refs, max_identity_cosine=0.9, log=lambda s: None, **kw
    )
    lib_s, base_s = rep["library"], rep["baseline_naive_blends"]
    assert lib_s["voices"] == lib_s["identities"] == 3 and base_s["voices"] == 3
    for s in (lib_s, base_s):
        assert 0.0 <= s["speaker_id_accuracy_identity"] <= 1.0 and 0.0 <= s["eer"] <= 1.0
        # a language counts only voices whose identity speaks it (in a 3-voice sample maybe none)
        rates = [e for e in s["error_rates"].values() if e.get("voices", 1)]
        assert rates and all(e["mean"] <= 0.5 for e in rates)
    assert lib_s["gender_label_agrees_with_f0"] == 1.0
    assert lib_s["privacy"][0]["reference"] == "zh_cosyvoice_zero_shot_prompt.wav"
    assert -1.0 <= lib_s["privacy"][0]["cosine"] < 0.9
    # resumable: a second call reads the probe results back without synthesising
    before = sorted(p.stat().st_mtime_ns for p in (tmp_path / "work").rglob("probes-*.parquet"))
    again = audit_library(
        lib, 3, baseline=True, references=refs, max_identity_cosine=0.9, log=lambda s: None, **kw
    )
    assert again == rep
    assert before == sorted(p.stat().st_mtime_ns for p in (tmp_path / "work").rglob("probes-*.parquet"))
    with pytest.raises(ValueError, match="other voices"):
        audit_library(lib, 4, log=lambda s: None, **kw)
