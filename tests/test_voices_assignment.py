"""Voice assignment: identity-major cycles, balanced use, the usage histogram of a run."""

from __future__ import annotations

from collections import Counter

import pyarrow as pa
import pytest

from kespeechchat.store import RunStore
from pipelines.voices import library_path, run_usage
from voice_library.assignment import Assigner, format_usage, usage_histogram
from voice_library.recipes import agent_voices, build_library, save_library


@pytest.fixture(scope="module")
def library():
    return build_library(400, seed=2) + agent_voices()


def test_cycle_walks_all_identities_before_repeating_one(library):
    a = Assigner.from_library(library, seed=1)
    for lang, cycle in a.user_cycles.items():
        assert all(v.language == lang for v in cycle)
        n_ident = len({v.identity_id for v in cycle})
        head = [v.identity_id for v in cycle[:n_ident]]
        assert len(set(head)) == n_ident
        assert len(cycle) == sum(v.language == lang for v in library if v.role == "user")
    b = Assigner.from_library(list(reversed(library)), seed=1)
    assert [v.voice_id for v in b.user_cycles["zh"]] == [v.voice_id for v in a.user_cycles["zh"]]
    c = Assigner.from_library(library, seed=2)
    assert [v.voice_id for v in c.user_cycles["zh"]] != [v.voice_id for v in a.user_cycles["zh"]]


def test_slots_give_even_use_of_voices_and_identities(library):
    a = Assigner.from_library(library, seed=0)
    n = len(a.user_cycles["en"])
    picks = [a.assign(s, "en") for s in range(3 * n + 7)]
    voice_uses = Counter(u.voice_id for u, _ in picks)
    assert set(voice_uses.values()) == {3, 4}
    ident_uses = Counter(u.identity_id for u, _ in picks[:n])
    per_ident = Counter(v.identity_id for v in a.user_cycles["en"])
    assert all(ident_uses[i] == per_ident[i] for i in per_ident)
    agents = Counter(ag.gender for _, ag in picks)
    assert abs(agents["female"] - agents["male"]) <= 1
    assert all(ag.language == "en" and ag.identity_id != u.identity_id for u, ag in picks)
    with pytest.raises(KeyError, match="fr"):
        a.assign(0, "fr")


def test_agents_sharing_a_user_identity_are_refused(library):
    users = [v for v in library if v.role == "user"]
    clash = [users[0].__class__.from_dict({**users[0].to_dict(), "role": "agent", "voice_id": "v-clash"})]
    with pytest.raises(ValueError, match="share an identity"):
        Assigner.from_library(users + clash, seed=0)


def test_usage_histogram_counts_voices_and_identities(library):
    users = [v for v in library if v.role == "user"]
    ids = [users[0].voice_id] * 3 + [users[1].voice_id] + [users[2].voice_id] * 2
    u = usage_histogram(ids, library)
    assert u["dialogues"] == 6 and u["voices_used"] == 3
    assert u["uses_per_voice"] == {"min": 1, "max": 3, "mean": 2.0}
    assert u["voices_by_use_count"]["0"] == len(users) - 3
    assert u["voices_by_use_count"]["3"] == 1
    assert "voices by number of uses" in format_usage(u)
    with pytest.raises(ValueError, match="not in the library"):
        usage_histogram(["v-nope"], library)


def test_run_usage_reads_the_assign_stage_output(tmp_path, library):
    run = tmp_path / "run"
    save_library(library, library_path(run))
    a = Assigner.from_library(library, seed=0)
    rows = []
    for s in range(30):
        u, ag = a.assign(s, "zh")
        rows.append(
            {
                "dialogue_id": f"d{s}",
                "roles": ["user", "assistant", "user"],
                "voice_ids": [u.voice_id, ag.voice_id, u.voice_id],
            }
        )
    path = RunStore(run).data_path("assign", 0)
    path.parent.mkdir(parents=True)
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(rows), path)
    u = run_usage(run)
    assert u["dialogues"] == 30 and u["uses_per_voice"]["max"] == 1
    with pytest.raises(FileNotFoundError, match="assign"):
        run_usage(tmp_path / "empty")
