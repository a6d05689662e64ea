"""Clarity: identities measured on held-out sentences per language, softened warps, and the pool
refined from the measurements (clear first, distinct second); libraries speak only served languages."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest

from voice_library.clarity import (
    CLARITY_PROBES,
    LANGS,
    MAX_CLARITY_ERROR,
    Measured,
    curve_point,
    job,
    load_results,
    refine_pool,
    run_jobs,
    shipped_jobs,
    soften,
    speaker_id,
)
from voice_library.pool import DEFAULT_POOL_PATH, SEARCHED_POOL_PATH, Identity, IdentityPool, load_pool
from voice_library.recipes import agent_identities, build_library

D = 32
N_PROBES = len(CLARITY_PROBES)


def _ident(name: str, f0: float = 220.0, **kw) -> Identity:
    fields = dict(
        identity_id=name,
        backend="kokoro",
        family="affine_world",
        base_weights={},
        pitch_ratio=1.2,
        formant_ratio=0.9,
        f0_median_hz=f0,
        gender="female" if f0 >= 165 else "male",
        age_band="adult",
        style_offsets=[2.0, -4.0, 6.0, 1.0],
        candidate_id=sum(map(ord, name)),
    )
    k = fields["candidate_id"] % 97 / 1000  # every identity its own conditioning
    fields["base_weights"] = {"jf_alpha": 1.5 - k, "jm_kumo": -0.5, "jf_nezumi": k}
    fields.update(kw)
    return Identity(**fields)


def _direction(seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal(D)
    return v / np.linalg.norm(v)


def _measured(
    source: str, scale: float, direction: np.ndarray, zh: float, en: float, f0: float = 220.0
) -> Measured:
    rng = np.random.default_rng(abs(hash((source, scale))) % 2**32)
    emb = direction[None, :] + 0.05 * rng.standard_normal((N_PROBES, D))
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    return Measured(
        key=f"{source}@{scale:g}/1/1",
        source_id=source,
        identity_id=f"{source}-{scale:g}",
        scale=scale,
        speed=1.0,
        pitch_factor=1.0,
        error={"zh": zh, "en": en},
        errors=[zh] * 4 + [en] * 4,
        hypotheses=[""] * N_PROBES,
        embeddings=emb,
        f0_median_hz=f0,
        voiced_share=0.8,
    )


def test_probes_are_four_per_language_with_digits_names_and_an_english_word():
    by_lang = Counter(lang for lang, _ in CLARITY_PROBES)
    assert by_lang == {"zh": 4, "en": 4}
    zh = [t for lang, t in CLARITY_PROBES if lang == "zh"]
    assert any(any(c.isdigit() for c in t) for t in zh)
    assert any(any("a" <= c.lower() <= "z" for c in t) for t in zh)  # English inside Chinese
    from voice_library.audit import AUDIT_PROBES
    from voice_library.search import SEARCH_PROBES

    used = {t for _, t in AUDIT_PROBES} | set(SEARCH_PROBES.values())
    assert not used & {t for _, t in CLARITY_PROBES}  # held out from the search and the audit


def test_soften_moves_an_identity_towards_plain_kokoro():
    i = _ident("i-x", base_weights={"jf_alpha": 1.5, "jm_kumo": -0.5})
    assert soften(i, 1.0) is i
    plain = soften(i, 0.0)
    assert plain.base_weights == {"jf_alpha": 1.0}  # the convex blend of the positive weights
    assert plain.style_offsets is None and plain.pitch_ratio == 1.0 and plain.formant_ratio == 1.0
    half = soften(i, 0.5)
    assert math.isclose(sum(half.base_weights.values()), 1.0, abs_tol=1e-3)
    assert half.base_weights["jm_kumo"] == pytest.approx(-0.25, abs=1e-3)
    assert half.pitch_ratio == pytest.approx(math.sqrt(1.2), abs=1e-3)
    assert half.style_offsets == [1.0, -2.0, 3.0, 0.5]
    assert len({i.identity_id, half.identity_id, plain.identity_id}) == 3  # other conditioning, other id
    assert soften(i, 0.5) == half  # deterministic
    with pytest.raises(ValueError, match="warp scale"):
        soften(i, 1.5)


def _pool(*idents: Identity) -> IdentityPool:
    return IdentityPool(list(idents), {"max_identity_cosine": 0.9, "backend": "kokoro"})


def test_refine_keeps_clear_versions_then_distinct_ones():
    a, b, c, d, e, f = (_ident(f"i-{k}") for k in "abcdef")
    da, db, dc, dd, de, df = (_direction(k) for k in range(6))
    ref = _direction(99)
    m = [
        _measured("i-a", 1.0, da, 0.0, 0.0),  # clear at full warp: kept as searched
        _measured("i-a", 0.5, da, 0.0, 0.0),
        _measured("i-b", 1.0, db, 0.2, 0.0),  # unclear zh at full warp, clear when softened
        _measured("i-b", 0.5, _direction(16), 0.02, 0.0),
        _measured("i-c", 1.0, dc, 0.3, 0.4),  # never clear
        _measured("i-c", 0.5, dc, 0.2, 0.3),
        _measured("i-d", 1.0, da, 0.0, 0.0),  # same voice as i-a at full warp; softened it is apart
        _measured("i-d", 0.5, dd, 0.0, 0.0),
        _measured("i-e", 1.0, de, 0.5, 0.01),  # English only
        _measured("i-e", 0.5, _direction(15), 0.4, 0.02),
        _measured("i-f", 1.0, ref, 0.0, 0.0),  # a real person's voice
        _measured("i-f", 0.5, ref, 0.0, 0.0),
    ]
    assert df is not None
    pool = refine_pool(_pool(a, b, c, d, e, f), {x.key: x for x in m}, {"kokoro:ref": ref})
    got = {i.identity_id: i for i in pool.identities}
    by_cand = {_ident(f"i-{s}").candidate_id: f"i-{s}" for s in "abcdef"}
    src = {by_cand[i.candidate_id]: (i.warp_scale, i) for i in pool.identities}
    for name, (scale, i) in src.items():
        assert i.conditioning() == soften(_ident(name), scale).conditioning()
    assert set(src) == {"i-a", "i-b", "i-d", "i-e"}
    assert src["i-b"][0] == 0.5 and src["i-b"][1].languages == ["zh", "en"]
    assert src["i-d"][0] == 0.5  # its full-warp version collides with i-a
    assert src["i-a"][0] == 1.0 and src["i-a"][1].warp_scale == 1.0
    assert src["i-e"][1].languages == ["en"]
    counts = pool.meta["counts"]
    assert counts["serving_zh"] == 3 and counts["serving_en"] == 4 and counts["serving_both"] == 3
    assert counts["versions_too_close_to_reference"] == 2
    c_ = pool.centroids()
    sims = c_ @ c_.T
    assert (sims[~np.eye(len(got), dtype=bool)] <= 0.9).all()
    assert pool.meta["clarity"]["max_error"] == MAX_CLARITY_ERROR


def test_libraries_speak_only_the_languages_an_identity_serves():
    both = [_ident(f"i-f{k}", 220.0 + k, languages=["zh", "en"]) for k in range(3)]
    both += [_ident(f"i-m{k}", 110.0 + k, languages=["zh", "en"]) for k in range(3)]
    en_only = [_ident("i-fe", 230.0, languages=["en"]), _ident("i-me", 120.0, languages=["en"])]
    zh_only = [_ident("i-fz", 240.0, languages=["zh"])]
    pool = _pool(*both, *en_only, *zh_only)
    pool.identities[:] = [
        Identity(**{**i.__dict__, "error_zh": 0.01 * k, "error_en": 0.02})
        for k, i in enumerate(pool.identities)
    ]
    voices = build_library(400, seed=0, pool=pool)
    lang_of = {i.identity_id: set(i.languages) for i in pool.identities}
    assert all(v.language in lang_of[v.identity_id] for v in voices)
    assert Counter(v.language for v in voices) == {"zh": 200, "en": 200}
    assert Counter(v.gender for v in voices) == {"female": 200, "male": 200}
    agents = agent_identities(pool)
    for (lang, _), ident in agents.items():
        assert ident.serves(lang)


def test_curve_point_and_speaker_id_on_separable_voices():
    vs = [_measured(f"i-{k}", 1.0, _direction(k), 0.0 if k % 2 else 0.2, 0.0) for k in range(10)]
    p = curve_point(vs)
    assert p["identities"] == 10 and p["distinct_0.9"] == 10 and p["distinct_clear_both_0.9"] == 5
    assert p["clear_both"] == 5 and p["share_over_zh"] == 0.5
    assert speaker_id(vs)["accuracy"] == 1.0 and speaker_id(vs)["eer"] < 0.05
    same = [_measured(f"i-{k}", 1.0, _direction(0), 0.0, 0.0) for k in range(4)]
    assert curve_point(same)["distinct_0.9"] == 1


def test_measurement_is_real_and_resumable(tmp_path):
    """One shipped voice through the real TTS, ASR and speaker encoder; a rerun reuses the chunk."""
    import torch

    from kespeechchat.backends.asr import FasterWhisperASR
    from kespeechchat.backends.speaker import ResemblyzerEncoder
    from kespeechchat.backends.tts import KokoroTTS

    torch.set_num_threads(1)
    jobs = shipped_jobs({"jf_nezumi": 239.0})
    t = run_jobs(
        jobs,
        tmp_path,
        tts=KokoroTTS(),
        encoder=ResemblyzerEncoder(),
        asr=FasterWhisperASR(),
        log=lambda s: None,
    )
    row = t.to_pylist()[0]
    assert len(row["errors"]) == N_PROBES and len(row["embeddings"]) == N_PROBES
    assert np.mean(row["errors"]) < 0.1  # a shipped voice reads the probes (else the probe is bad)
    assert 150 < row["f0_median_hz"] < 330
    again = run_jobs(jobs, tmp_path, tts=None, encoder=None, asr=None, log=lambda s: None)
    assert again.to_pylist() == t.to_pylist()
    with pytest.raises(ValueError, match="other jobs"):
        run_jobs([job(_ident("i-z"))], tmp_path, tts=None, encoder=None, asr=None)
    assert load_results(tmp_path).num_rows == 1


def test_shipped_pool_is_refined_from_the_searched_one():
    pool = load_pool(DEFAULT_POOL_PATH)
    searched = load_pool(SEARCHED_POOL_PATH)
    assert pool.meta.get("clarity"), "the shipped pool was not refined by the clarity measurement"
    assert all(i.languages for i in pool.identities)
    for i in pool.identities:
        for lang in i.languages:
            e = i.error_zh if lang == "zh" else i.error_en
            assert e <= pool.meta["clarity"]["max_error"]
    assert set(LANGS) <= {lang for i in pool.identities for lang in i.languages}
    assert len(searched.identities) >= 100


def test_refine_cli_writes_a_pool_that_libraries_build_from(tmp_path, capsys):
    """`voices refine` on stored measurements (eight identities, one of them clear only in English)."""
    import pyarrow as pa

    from kespeechchat.store import write_parquet_atomic
    from pipelines.cli import main
    from voice_library.clarity import RESULT_SCHEMA
    from voice_library.pool import save_pool

    idents = [_ident(f"i-f{k}", 220.0 + k) for k in range(3)] + [
        _ident(f"i-m{k}", 110.0 + k) for k in range(4)
    ]
    idents.append(_ident("i-r", 230.0))  # the agents take two per gender; i-r speaks only English
    save_pool(_pool(*idents), tmp_path / "searched.parquet")
    rows = []
    for k, ident in enumerate(idents):
        emb = np.tile(_direction(k), (N_PROBES, 1)).astype(np.float32)
        hyps = [
            t if (lang == "en" or ident.identity_id != "i-r") else "完全不对的句子"
            for lang, t in CLARITY_PROBES
        ]
        j = job(ident)
        rows.append(
            {
                "key": j.key,
                "source_id": ident.identity_id,
                "identity_id": ident.identity_id,
                "scale": 1.0,
                "speed": 1.0,
                "pitch_factor": 1.0,
                "embeddings": emb.tolist(),
                "errors": [0.0] * N_PROBES,  # rescored from the transcripts when read
                "hypotheses": hyps,
                "f0_median_hz": ident.f0_median_hz,
                "voiced_share": 0.8,
                "audio_s": 20.0,
            }
        )
    (tmp_path / "w" / "chunks").mkdir(parents=True)
    write_parquet_atomic(
        tmp_path / "w" / "chunks" / "clarity-00000.parquet", pa.Table.from_pylist(rows, schema=RESULT_SCHEMA)
    )
    out = tmp_path / "refined.parquet"
    args = [
        "voices",
        "refine",
        str(tmp_path / "w"),
        "--pool",
        str(tmp_path / "searched.parquet"),
        "--out",
        str(out),
    ]
    assert main(args) == 0
    pool = load_pool(out)
    assert {tuple(i.languages) for i in pool.identities} == {("zh", "en"), ("en",)}
    assert pool.meta["counts"]["serving_zh"] == 7 and pool.meta["max_identity_cosine"] == 0.94
    lib = tmp_path / "lib.parquet"
    assert (
        main(["voices", "build", "--size", "60", "--pool", str(out), "--no-agents", "--out", str(lib)]) == 0
    )
    from voice_library.recipes import load_library

    r_id = next(i.identity_id for i in pool.identities if i.languages == ["en"])
    assert {v.language for v in load_library(lib) if v.identity_id == r_id} == {"en"}


def test_confirm_cli_narrows_languages_on_the_longer_sentences(tmp_path, capsys):
    """`voices confirm` on stored measurements: an identity that misreads the longer zh sentences
    keeps only English; one that misreads both languages is dropped; the rest keep theirs."""
    import json

    import pyarrow as pa

    from kespeechchat.store import write_parquet_atomic
    from pipelines.cli import main
    from voice_library.clarity import CONFIRM_PROBES, RESULT_SCHEMA
    from voice_library.pool import save_pool

    idents = [_ident(f"i-{k}", 200.0 + k, languages=["zh", "en"]) for k in range(4)]
    idents.append(_ident("i-en", 150.0, languages=["en"]))
    pool = _pool(*idents)
    save_pool(pool, tmp_path / "refined.parquet")
    wrong = {"i-1": {"zh"}, "i-2": {"zh", "en"}, "i-en": {"zh"}}  # i-en: zh not served anyway
    rows = []
    for ident in sorted(pool.identities, key=lambda i: i.identity_id):
        j = job(ident)
        bad = wrong.get(ident.identity_id, set())
        hyps = [
            ("完全不对的句子" if lang == "zh" else "nothing like it") if lang in bad else t
            for lang, t in CONFIRM_PROBES
        ]
        rows.append(
            {
                "key": j.key,
                "source_id": ident.identity_id,
                "identity_id": ident.identity_id,
                "scale": 1.0,
                "speed": 1.0,
                "pitch_factor": 1.0,
                "embeddings": np.tile(_direction(len(rows)), (len(CONFIRM_PROBES), 1))
                .astype(np.float32)
                .tolist(),
                "errors": [0.0] * len(CONFIRM_PROBES),
                "hypotheses": hyps,
                "f0_median_hz": ident.f0_median_hz,
                "voiced_share": 0.8,
                "audio_s": 30.0,
            }
        )
    w = tmp_path / "w"
    (w / "chunks").mkdir(parents=True)
    (w / "clarity.json").write_text(
        json.dumps(
            {"version": 1, "probes": [list(p) for p in CONFIRM_PROBES], "jobs": [r["key"] for r in rows]}
        )
    )
    write_parquet_atomic(
        w / "chunks" / "clarity-00000.parquet", pa.Table.from_pylist(rows, schema=RESULT_SCHEMA)
    )
    out = tmp_path / "confirmed.parquet"
    assert (
        main(["voices", "confirm", str(tmp_path / "refined.parquet"), "--work", str(w), "--out", str(out)])
        == 0
    )
    got = {i.identity_id: i.languages for i in load_pool(out).identities}
    assert got == {"i-0": ["zh", "en"], "i-1": ["en"], "i-3": ["zh", "en"], "i-en": ["en"]}
    meta = load_pool(out).meta
    assert (
        meta["counts"]["lost_zh_on_confirmation"] == 2
        and meta["counts"]["dropped_unclear_on_confirmation"] == 1
    )
    assert meta["confirmation"]["probes"] == [list(p) for p in CONFIRM_PROBES]
    # every confirmation sentence is new: not a search, clarity or audit probe
    from voice_library.audit import AUDIT_PROBES
    from voice_library.search import SEARCH_PROBES

    used = {t for _, t in AUDIT_PROBES} | set(SEARCH_PROBES.values()) | {t for _, t in CLARITY_PROBES}
    assert not used & {t for _, t in CONFIRM_PROBES}
