"""assign stage: balanced voice use over the dataset, one voice per speaker, reproducible, shard-independent."""

from __future__ import annotations

import json
from collections import Counter, defaultdict

import pyarrow as pa
import pytest

from kespeechchat.stage import Runtime
from kespeechchat.store import RunStore
from kespeechchat.testing import small_config
from pipelines.runner import Pipeline
from pipelines.stages.assign import AssignStage
from pipelines.voices import load_run_library

N_DIALOGUES = 60


def _records() -> list[str]:
    out = []
    for k in range(N_DIALOGUES):
        if k % 3 == 0:
            out.append(
                {
                    "instruction": f"Tell me about item number {k}.",
                    "input": "",
                    "output": f"Item {k} is a fine thing.",
                }
            )
        else:
            out.append(
                {"instruction": f"请介绍一下第{k}号物品。", "input": "", "output": f"第{k}号物品很好。"}
            )
    return [json.dumps(r, ensure_ascii=False) for r in out]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    d = tmp_path_factory.mktemp("assign")
    src = d / "src.jsonl"
    src.write_text("\n".join(_records()) + "\n", encoding="utf-8")
    cfg = small_config(
        d / "runs", [{"path": str(src)}], name="a", shard_size=8, voices={"size": 10, "seed": 5}
    )
    Pipeline(cfg, quiet=True).run(only="ingest")
    return cfg


def _stage(cfg) -> AssignStage:
    st = AssignStage(cfg, Runtime(run_dir=cfg.run_dir.resolve()))
    from pipelines.voices import prepare_run_library

    prepare_run_library(cfg, cfg.run_dir)
    st.setup()
    return st


def _input(cfg, shard: int) -> pa.Table:
    t = RunStore(cfg.run_dir).read_table("ingest", shard)
    return t.append_column("spoken_texts", t.column("source_texts"))


def _assign_all(cfg, shards, stage=None) -> dict[str, list[str]]:
    st = stage or _stage(cfg)
    out = {}
    for s in shards:
        res = st.process(_input(cfg, s), s)
        assert res.rejected.num_rows == 0
        for r in res.kept.to_pylist():
            out[r["dialogue_id"]] = r["voice_ids"]
    return out


def test_every_dialogue_gets_one_voice_per_speaker(run):
    cfg = run
    shards = list(range(8))
    got = _assign_all(cfg, shards)
    assert len(got) == N_DIALOGUES
    lib = {v.voice_id: v for v in load_run_library(cfg, cfg.run_dir)}
    langs = {}
    for s in shards:
        for r in RunStore(cfg.run_dir).read_table("ingest", s).to_pylist():
            langs[r["dialogue_id"]] = (r["language"], r["roles"])
    for did, ids in got.items():
        lang, roles = langs[did]
        users = {v for v, role in zip(ids, roles, strict=True) if role == "user"}
        agents = {v for v, role in zip(ids, roles, strict=True) if role != "user"}
        assert len(users) == 1 and len(agents) == 1
        (u,), (a,) = users, agents
        assert lib[u].role == "user" and lib[a].role == "agent"
        assert lib[u].language == lang and lib[a].language == lang
        assert lib[u].identity_id != lib[a].identity_id


def test_use_is_balanced_within_each_language(run):
    cfg = run
    got = _assign_all(cfg, range(8))
    lib = {v.voice_id: v for v in load_run_library(cfg, cfg.run_dir)}
    uses: dict[str, Counter] = defaultdict(Counter)
    agent_gender: dict[str, Counter] = defaultdict(Counter)
    for ids in got.values():
        u = ids[0]
        uses[lib[u].language][u] += 1
        agent_gender[lib[ids[1]].language][lib[ids[1]].gender] += 1
    for lang, c in uses.items():
        pool = [v for v in lib.values() if v.role == "user" and v.language == lang]
        assert len(c) == min(len(pool), sum(c.values()))  # every voice used before any repeats
        counts = [c.get(v.voice_id, 0) for v in pool]
        assert max(counts) - min(counts) <= 1
    for g in agent_gender.values():
        assert abs(g["female"] - g["male"]) <= 1


def test_reproducible_and_independent_of_shard_order(run):
    cfg = run
    forward = _assign_all(cfg, range(8))
    backward = _assign_all(cfg, reversed(range(8)))
    assert forward == backward
    other = cfg.model_copy(deep=True)
    other.voices.seed = 6
    other.name = "a-seed6"
    # same ingest, other seed: voices are drawn in another order
    import shutil

    shutil.copytree(cfg.run_dir / "ingest", other.run_dir / "ingest")
    assert _assign_all(other, range(8)) != forward


def test_upstream_rejections_do_not_move_other_dialogues(run):
    cfg = run
    st = _stage(cfg)
    full = st.process(_input(cfg, 2), 2).kept.to_pylist()
    t = _input(cfg, 2)
    thinned = st.process(t.take([0, 2, 5]), 2).kept.to_pylist()
    by_id = {r["dialogue_id"]: r["voice_ids"] for r in full}
    assert all(by_id[r["dialogue_id"]] == r["voice_ids"] for r in thinned)
    res = st.process(t, 2)
    assert res.metrics["user_voices_used"] >= 1 and res.metrics["max_uses_of_a_voice"] >= 1


def test_config_change_changes_the_stage_hash(run):
    cfg = run
    a = _stage(cfg).config_hash()
    other = cfg.model_copy(deep=True)
    other.voices.seed = 9
    assert AssignStage(other, Runtime(run_dir=cfg.run_dir.resolve())).config_hash() != a
