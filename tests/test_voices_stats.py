"""Library statistics: identities (not recipes) as speakers, balance tables, the PNG."""

from __future__ import annotations

from collections import Counter

from voice_library.pool import load_pool
from voice_library.recipes import agent_voices, build_library, library_meta_for
from voice_library.stats import format_stats, library_stats, plot_stats


def test_stats_count_identities_and_balance():
    pool = load_pool()
    voices = build_library(2000, seed=0) + agent_voices()
    s = library_stats(voices, library_meta_for(voices, pool))
    assert s["voices"] == 2004 and s["user_voices"] == 2000 and s["agent_voices"] == 4
    assert s["user_identities"] == len(pool.identities) - 4
    assert s["identities"] == len(pool.identities)
    assert s["voices_by_gender"] == {"female": 1000, "male": 1000}
    assert sum(s["voices_by_language_gender_age"].values()) == 2000
    assert sum(s["identities_by_gender"].values()) == s["user_identities"]
    for g in (
        "female",
        "male",
    ):  # within a gender and language, identities carry the same number of variants ±1
        for lang in ("zh", "en"):
            per = Counter(
                v.identity_id for v in voices if v.role == "user" and v.gender == g and v.language == lang
            )
            assert max(per.values()) - min(per.values()) <= 1, (g, lang, per)
    assert f"≤ {pool.max_identity_cosine}" in s["statement"]
    assert s["speed"]["min"] >= 0.9 and s["speed"]["max"] <= 1.1
    text = format_stats(s)
    assert "zh/female" in text and "en/male" in text and "agent zh/male" in text


def test_stats_without_measurement_say_so():
    voices = build_library(10, seed=0)
    s = library_stats(voices, {})
    assert "distinctness not measured" in s["statement"]


def test_png_is_written(tmp_path):
    voices = build_library(500, seed=0) + agent_voices()
    s = library_stats(voices, library_meta_for(voices, load_pool()))
    p = plot_stats(voices, s, tmp_path / "stats.png")
    assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 10_000
    assert not list(tmp_path.glob(".tmp-*"))
