"""Identity pool: greedy acceptance under a cosine bound, the shipped pool, storage and its errors."""

from __future__ import annotations

import itertools

import numpy as np
import pyarrow.parquet as pq
import pytest

from voice_library.pool import (
    DEFAULT_POOL_PATH,
    POOL_META_KEY,
    greedy_accept,
    load_pool,
    save_pool,
)


def _random_unit(n: int, d: int, seed: int, spread: float = 0.35) -> np.ndarray:
    rng = np.random.default_rng(seed)
    c = np.ones(d) + spread * rng.standard_normal((n, d)) * np.sqrt(d) / 4
    return c / np.linalg.norm(c, axis=1, keepdims=True)


@pytest.mark.parametrize("order", ["min_degree", "random"])
def test_accepted_sets_respect_the_bound_and_are_maximal(order):
    c = _random_unit(300, 16, seed=1)
    tau = 0.9
    kept = greedy_accept(c, tau, order=order, seed=3)
    assert len(kept) == len(set(kept)) and len(kept) > 5
    s = c[kept] @ c[kept].T
    assert (s[~np.eye(len(kept), dtype=bool)] <= tau + 1e-12).all()
    # maximal: every rejected candidate is too close to some accepted one
    rejected = sorted(set(range(300)) - set(kept))
    assert ((c[rejected] @ c[kept].T).max(axis=1) > tau).all()
    assert greedy_accept(c, tau, order=order, seed=3) == kept  # reproducible


def test_min_degree_order_fits_more_than_a_random_order():
    # a star: the hub is close to every leaf, leaves are far apart from each other
    d = 12
    c = np.vstack([np.ones(d) / np.sqrt(d), np.eye(d)[1:]])
    tau = 0.2
    assert sorted(greedy_accept(c, tau, order="min_degree")) == list(range(1, d))
    sizes = {len(greedy_accept(c, tau, order="random", seed=s)) for s in range(100)}
    assert sizes == {1, d - 1}  # whenever the hub comes first, a random order keeps only the hub


def test_eligibility_mask_is_honoured():
    c = _random_unit(50, 8, seed=2)
    mask = np.zeros(50, dtype=bool)
    mask[::2] = True
    kept = greedy_accept(c, 0.95, eligible=mask)
    assert kept and all(k % 2 == 0 for k in kept)
    with pytest.raises(ValueError, match="order"):
        greedy_accept(c, 0.9, order="best")


def test_shipped_pool_is_measured_and_consistent():
    pool = load_pool()
    tau = pool.max_identity_cosine
    assert 0.5 < tau <= 0.95
    c = pool.centroids()
    s = c @ c.T
    np.fill_diagonal(s, -1)
    assert s.max() <= tau + 1e-6  # every pair of identities is distinct at the recorded bound
    assert len({i.identity_id for i in pool.identities}) == len(pool.identities)
    for i in pool.identities:  # clear in every language it serves
        assert i.languages and all(
            (i.error_zh if lang == "zh" else i.error_en) <= pool.meta["max_probe_error"]
            for lang in i.languages
        )
        assert i.nearest_reference_cosine <= pool.meta["privacy_max_cosine"]
        assert (i.gender == "male") == (i.f0_median_hz < 165.0)
    assert {i.gender for i in pool.identities} == {"female", "male"}
    m = pool.meta
    # refined (clarity probes), then confirmed on the longer sentences
    assert m["identities"] == len(pool.identities) == m["counts"]["confirmed"] <= m["counts"]["accepted"]
    assert m["confirmation"]["max_error"] <= m["max_probe_error"]
    assert m["measured_with"]["encoder"] == "resemblyzer"


def test_restrict_keeps_a_distinct_subset():
    pool = load_pool()
    tau = round(pool.max_identity_cosine - 0.05, 2)
    sub = pool.restrict(tau)
    assert 0 < len(sub.identities) < len(pool.identities)
    c = sub.centroids()
    s = c @ c.T
    np.fill_diagonal(s, -1)
    assert s.max() <= tau + 1e-9 and sub.max_identity_cosine == tau
    assert pool.restrict(0.99) is pool


def test_save_load_roundtrip_and_bad_files(tmp_path):
    pool = load_pool()
    p = save_pool(pool, tmp_path / "pool.parquet")
    again = load_pool(p)
    assert again.identities == pool.identities
    assert again.meta["sha"] == pool.sha()
    assert not list(tmp_path.glob(".tmp-*"))
    with pytest.raises(FileNotFoundError, match="voices search"):
        load_pool(tmp_path / "missing.parquet")
    t = pq.read_table(p)
    pq.write_table(t.replace_schema_metadata({}), tmp_path / "nometa.parquet")
    with pytest.raises(ValueError, match="not an identity pool"):
        load_pool(tmp_path / "nometa.parquet")
    pq.write_table(
        t.slice(0, 0).replace_schema_metadata({POOL_META_KEY: t.schema.metadata[POOL_META_KEY]}),
        tmp_path / "empty.parquet",
    )
    with pytest.raises(ValueError, match="empty"):
        load_pool(tmp_path / "empty.parquet")


def test_shipped_pool_file_is_small():
    assert DEFAULT_POOL_PATH.stat().st_size < 2_000_000
    ids = [i.identity_id for i in load_pool().identities]
    assert all(a != b for a, b in itertools.combinations(ids, 2))
