"""Speaker embeddings for CosyVoice: read, fit to real speakers' embeddings, sample private and distinct."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from voice_library.embeddings import (
    ENCODER_META_KEY,
    EmbeddingModel,
    embed_recordings,
    fit_embedding_model,
    read_embeddings,
    sample_embeddings,
    sample_pool,
)
from voice_library.recipes import agent_voices, build_library

# speaker genders of data/audio (transcripts.tsv; S5's is a pitch guess)
GENDERS = {
    "zh_cosyvoice_zero_shot_prompt.wav": "female",
    "zh_funasr_asr_example.wav": "male",
    "zh_wenet_aishell_BAC009S0724W0121.wav": "female",
    "en_whisper_jfk.flac": "male",
    "en_wenet_librispeech_1995-1837-0001.wav": "female",
}


@pytest.fixture(scope="module")
def real(sample_data, tmp_path_factory, campplus_dir):
    """CAM++ embeddings (CosyVoice's front end, an ONNX graph of CAM++'s signature) of 1.6 s
    pieces of the five real recordings, as a Parquet file that names its encoder."""
    from kespeechchat.backends.speaker import CAMPlusEncoder

    files = [sample_data / "audio" / n for n in GENDERS]
    vecs, names = embed_recordings(files, CAMPlusEncoder(str(campplus_dir)), segment_s=1.6)
    rows = [
        {"speaker_id": n.split("#")[0], "gender": GENDERS[n.split("#")[0]], "embedding": v.tolist()}
        for n, v in zip(names, vecs, strict=True)
    ]
    path = tmp_path_factory.mktemp("emb") / "real.parquet"
    pq.write_table(pa.Table.from_pylist(rows).replace_schema_metadata({ENCODER_META_KEY: "campplus"}), path)
    return path, vecs


def test_reads_every_format_and_names_bad_rows(real, tmp_path):
    path, vecs = real
    es = read_embeddings(path)
    assert es.vectors.shape == vecs.shape and es.vectors.shape[0] >= 15
    assert set(es.genders) == {"female", "male"} and len(set(es.speaker_ids)) == 5
    np.save(tmp_path / "e.npy", vecs)
    np.testing.assert_allclose(read_embeddings(tmp_path / "e.npy").vectors, vecs)
    np.savez(tmp_path / "e.npz", embeddings=vecs, gender=np.asarray(es.genders))
    assert read_embeddings(tmp_path / "e.npz").genders == es.genders
    bad = vecs.copy()
    bad[3, 7] = np.nan
    np.save(tmp_path / "nan.npy", bad)
    with pytest.raises(ValueError, match="row 3"):
        read_embeddings(tmp_path / "nan.npy")
    np.save(tmp_path / "flat.npy", vecs[0])
    with pytest.raises(ValueError, match="shape"):
        read_embeddings(tmp_path / "flat.npy")
    pq.write_table(pa.table({"vec": [[1.0, 2.0]]}), tmp_path / "nocol.parquet")
    with pytest.raises(ValueError, match="'embedding'"):
        read_embeddings(tmp_path / "nocol.parquet")
    pq.write_table(
        pa.table({"embedding": [[1.0, 2.0], [1.0, 0.5]], "gender": ["female", "robot"]}),
        tmp_path / "g.parquet",
    )
    with pytest.raises(ValueError, match="row 1.*robot"):
        read_embeddings(tmp_path / "g.parquet")
    with pytest.raises(ValueError, match=r"\.txt"):
        (tmp_path / "e.txt").write_text("1 2")
        read_embeddings(tmp_path / "e.txt")


def test_samples_look_like_real_speakers_but_are_nobody(real):
    _, vecs = real
    model = fit_embedding_model(vecs)
    assert EmbeddingModel.from_dict(model.to_dict()).to_dict() == model.to_dict()
    s = sample_embeddings(
        model, 40, seed=1, references=vecs, privacy_max_cosine=0.8, max_identity_cosine=0.92
    )
    assert s.shape == (40, vecs.shape[1])
    np.testing.assert_array_equal(
        s,
        sample_embeddings(
            model, 40, seed=1, references=vecs, privacy_max_cosine=0.8, max_identity_cosine=0.92
        ),
    )
    u = s / np.linalg.norm(s, axis=1, keepdims=True)
    r = vecs / np.linalg.norm(vecs, axis=1, keepdims=True)
    assert (u @ r.T).max() <= 0.8  # private: no draw is close to any real piece
    pair = u @ u.T
    np.fill_diagonal(pair, -1)
    assert pair.max() <= 0.92  # distinct from each other
    # plausible: as close to the real speakers' mean direction as real speakers are
    # (a direction drawn uniformly in 256 dimensions would sit near cosine 0)
    real_cos = r @ model.mean_direction
    assert (u @ model.mean_direction).mean() > real_cos.min() - 0.1
    norms = np.linalg.norm(s, axis=1)
    assert abs(norms.mean() - np.linalg.norm(vecs, axis=1).mean()) < 0.1


def test_impossible_bounds_fail_clearly(real):
    _, vecs = real
    model = fit_embedding_model(vecs)
    with pytest.raises(ValueError, match="only .* of 50"):
        sample_embeddings(model, 50, seed=0, references=vecs, privacy_max_cosine=0.0, max_draws=2000)


def test_pool_of_sampled_embeddings_builds_a_cosyvoice_library(real):
    path, vecs = real
    pool = sample_pool(read_embeddings(path), 24, seed=3, privacy_max_cosine=0.8, max_identity_cosine=0.92)
    assert len(pool.identities) == 24
    assert sum(i.gender == "male" for i in pool.identities) == 12
    assert pool.meta["closest_reference_cosine"] <= 0.8 and pool.meta["backend"] == "cosyvoice"
    assert pool.meta["measured_with"] == {"encoder": "campplus", "dim": 192}
    assert all(len(i.speaker_embedding) == 192 for i in pool.identities)
    users = build_library(60, seed=0, backend="cosyvoice", pool=pool)
    agents = agent_voices("cosyvoice", pool=pool)
    by_id = {i.identity_id: i for i in pool.identities}
    for v in users + agents:
        assert v.backend == "cosyvoice" and v.speaker_embedding == by_id[v.identity_id].speaker_embedding
    assert len({v.identity_id for v in users}) == 20  # 24 identities, 4 serve as agents
    assert not {v.identity_id for v in agents} & {v.identity_id for v in users}
    with pytest.raises(ValueError, match="no shipped identity pool"):
        build_library(5, seed=0, backend="cosyvoice")


def test_a_cosyvoice_pool_is_sampled_only_from_campplus_embeddings(real, tmp_path, sample_data):
    """A 256-d resemblyzer vector, or a 192-d one from an encoder the file does not name, is not a
    voice CosyVoice can speak: sampling refuses it and says how to embed the recordings."""
    from kespeechchat.backends.speaker import ResemblyzerEncoder

    vecs, _ = embed_recordings([sample_data / "audio" / n for n in GENDERS], ResemblyzerEncoder())
    np.save(tmp_path / "ge2e.npy", vecs)
    with pytest.raises(ValueError, match=r"192-d campplus.*256-d.*--encoder campplus"):
        sample_pool(read_embeddings(tmp_path / "ge2e.npy"), 4, seed=0)
    path, cam = real
    np.save(tmp_path / "unnamed.npy", cam)
    with pytest.raises(ValueError, match="an encoder the file does not name"):
        sample_pool(read_embeddings(tmp_path / "unnamed.npy"), 4, seed=0)
    assert read_embeddings(path).encoder == "campplus"


def test_a_cosyvoice_run_loads_only_campplus_voices(real, tmp_path):
    """The voices of a CosyVoice run are checked when the run's library is made: from a CAM++
    pool they are 192-d; a pool or library from another encoder stops the run before any TTS."""
    from kespeechchat.testing import small_config
    from pipelines.voices import prepare_run_library
    from voice_library.pool import save_pool
    from voice_library.recipes import library_meta_for, load_library, save_library

    path, _ = real
    pool = sample_pool(read_embeddings(path), 12, seed=1, privacy_max_cosine=0.8)
    save_pool(pool, tmp_path / "cam.parquet")

    def cfg(name, **voices):
        return small_config(
            tmp_path / "runs",
            [{"path": "x.jsonl"}],
            name=name,
            tts={"backend": "cosyvoice", "model_dir": "/models/CosyVoice2-0.5B"},
            voices={"size": 8, **voices},
        )

    c = cfg("ok", pool=str(tmp_path / "cam.parquet"))
    lib = load_library(prepare_run_library(c, c.run_dir))
    assert lib and all(len(v.speaker_embedding) == 192 for v in lib)

    pool.meta["measured_with"] = {"encoder": "resemblyzer", "dim": 192}
    save_pool(pool, tmp_path / "ge2e.parquet")
    c = cfg("wrong-encoder", pool=str(tmp_path / "ge2e.parquet"))
    with pytest.raises(ValueError, match="192-d campplus.*from resemblyzer"):
        prepare_run_library(c, c.run_dir)

    short = [replace(v, speaker_embedding=v.speaker_embedding[:128]) for v in lib]
    save_library(short, tmp_path / "short.parquet", library_meta_for(short, None))
    c = cfg("short", library=str(tmp_path / "short.parquet"))
    with pytest.raises(ValueError, match="has 128 embedding values; cosyvoice takes 192"):
        prepare_run_library(c, c.run_dir)
