"""Dedup: normalisation, exact and near-duplicates (both sides), determinism, ingest and the real data."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from kespeechchat.config import RunConfig, SourceConfig
from kespeechchat.dedup import Deduper, duplicate_kind, exact_key, normalize_tokens, similarity
from kespeechchat.ingest import ingest_sources
from kespeechchat.progress import Progress
from kespeechchat.store import RunStore
from pipelines.ingest import make_deduper, run_ingest, source_fingerprint

U, A = "user", "assistant"
Q = "Can you explain how photosynthesis works in green plants and why it matters for life on earth?"
ANS = (
    "Plants take in sunlight, water and carbon dioxide, and turn them into sugar and oxygen. "
    "The sugar feeds the plant, and the oxygen is what animals and people breathe, so almost all life depends on it."
)


def test_normalised_tokens() -> None:
    assert normalize_tokens("Hello, World!  It's 2024.") == normalize_tokens("hello world it s 2024")
    assert normalize_tokens("ＡＢＣ１２３") == ["abc123"]  # full-width forms fold (NFKC)
    assert normalize_tokens("我爱北京。") == ["我", "爱", "北", "京"]  # one token per Han character
    assert normalize_tokens("用Python写代码") == ["用", "python", "写", "代", "码"]


def test_exact_key_ignores_case_punctuation_and_spacing_but_not_roles() -> None:
    k = exact_key([U, A], ["What is tea?", "A drink."])
    assert k == exact_key([U, A], ["what is tea", "a  drink!!"])
    assert k != exact_key([A, U], ["What is tea?", "A drink."])
    assert k != exact_key([U, A], ["What is tea?", "A drink made from leaves."])
    with pytest.raises(ValueError):
        exact_key([U], ["a", "b"])


def test_exact_duplicates_after_normalisation() -> None:
    d = Deduper()
    assert d.check_and_add("a#0", [U, A], ["What is tea?", "A drink."]) is None
    m = d.check_and_add("b#3", [U, A], ["  WHAT is tea ", "a drink"])
    assert m is not None and (m.kind, m.of, m.similarity) == ("exact", "a#0", 1.0)
    assert duplicate_kind(m.describe()) == "exact"
    assert len(d) == 1  # a duplicate is not added


def test_near_duplicate_needs_both_sides() -> None:
    d = Deduper()
    assert d.check_and_add("first", [U, A], [Q, ANS]) is None
    # a word added to the question, one changed in the answer: a near-duplicate
    edited = [Q.lower().rstrip("?") + " please?", ANS.replace("almost all", "nearly all")]
    m = d.check_and_add("edit", [U, A], edited)
    assert m is not None and m.kind == "near" and m.of == "first" and 0.7 <= m.similarity < 1.0
    assert duplicate_kind(m.describe()) == "near"
    # the same question with another answer is another dialogue (preference data does this on purpose)
    other_answer = (
        "It is how plants make food from light. Without it there would be no oxygen in the air for us."
    )
    assert d.check_and_add("q-same", [U, A], [Q, other_answer]) is None
    # the same answer to another question is another dialogue too
    assert d.check_and_add("a-same", [U, A], ["Why are forests important for the planet?", ANS]) is None


def test_near_duplicate_in_chinese() -> None:
    q = "请介绍一下长城的历史，以及它为什么这么有名。"
    a = "长城始建于春秋战国时期，秦朝把各国的城墙连在一起，明朝又大规模重修。它工程浩大，是中华文明的象征。"
    d = Deduper()
    d.check_and_add("zh#0", [U, A], [q, a])
    m = d.check_and_add("zh#1", [U, A], [q.replace("一下", ""), a.replace("大规模", "大力")])
    assert m is not None and m.kind == "near"
    assert (
        d.check_and_add("zh#2", [U, A], ["长城有多长？", "长城全长两万多公里，横跨中国北方好几个省份。"])
        is None
    )


def test_threshold_decides() -> None:
    rng = random.Random(1)
    words = [f"w{i}" for i in range(300)]
    base = [rng.choice(words) for _ in range(60)]
    changed = list(base)
    for i in range(0, 60, 10):  # every tenth word changed: true Jaccard of trigrams ~0.5
        changed[i] = "x" + changed[i]
    a, b = " ".join(base), " ".join(changed)
    true = similarity(a, b)
    assert 0.45 < true < 0.65
    for threshold, expect in ((0.7, False), (0.4, True)):
        d = Deduper(threshold=threshold)
        d.check_and_add("a", [U, A], [a, a])
        assert (d.check_and_add("b", [U, A], [b, b]) is not None) is expect, threshold


def test_minhash_estimates_jaccard() -> None:
    rng = random.Random(0)
    words = [f"w{i}" for i in range(2000)]
    d = Deduper()
    errors = []
    for _ in range(100):
        a = [rng.choice(words) for _ in range(rng.randint(15, 80))]
        b = [w if rng.random() > 0.15 else rng.choice(words) for w in a]
        sa, sb = d.signature([U, A], [" ".join(a), "x"]), d.signature([U, A], [" ".join(b), "x"])
        est = float((sa.user == sb.user).mean())
        errors.append(est - similarity(" ".join(a), " ".join(b)))
    errors_arr = np.array(errors)
    assert abs(errors_arr.mean()) < 0.02 and np.abs(errors_arr).max() < 0.15


def test_modes_and_settings() -> None:
    off = Deduper(mode="off")
    off.check_and_add("a", [U, A], ["Hi there.", "Hello."])
    assert off.check_and_add("b", [U, A], ["Hi there.", "Hello."]) is None
    exact = Deduper(mode="exact")
    exact.check_and_add("a", [U, A], [Q, ANS])
    assert exact.check_and_add("b", [U, A], [Q, ANS + " Really."]) is None
    assert exact.check_and_add("c", [U, A], [Q.upper(), ANS]).kind == "exact"
    for bad in ({"mode": "fuzzy"}, {"threshold": 0}, {"ngram": 0}, {"num_perm": 10, "band_rows": 4}):
        with pytest.raises(ValueError):
            Deduper(**bad)


def test_signatures_do_not_depend_on_the_process() -> None:
    code = (
        "from kespeechchat.dedup import Deduper;"
        "s = Deduper().signature(['user', 'assistant'], ['What is tea?', '茶是一种饮料。']);"
        "print(s.key, s.user.tolist()[:8], s.assistant.tolist()[:8])"
    )
    outs = set()
    for seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        outs.add(
            subprocess.run(
                [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
            ).stdout
        )
    assert len(outs) == 1


# --- in ingest -----------------------------------------------------------------------------------------


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


def test_ingest_drops_near_duplicates_before_sampling(tmp_path: Path) -> None:
    a = write_jsonl(
        tmp_path / "a.jsonl",
        [
            {"instruction": Q, "output": ANS},
            {"instruction": Q + " Thanks!", "output": ANS},  # near-dup within the file
            {"instruction": "Name a colour.", "output": "Blue."},
        ],
    )
    b = write_jsonl(
        tmp_path / "b.jsonl",
        [
            {
                "messages": [
                    {"role": "user", "content": Q.lower()},
                    {"role": "assistant", "content": ANS.upper()},
                ]
            },
            {"instruction": "Name a fruit.", "output": "An apple."},
        ],
    )
    rows, rejects, stats = ingest_sources(
        [SourceConfig(path=str(a)), SourceConfig(path=str(b))], 0, Deduper()
    )
    assert [(r["source_file"], r["source_index"]) for r in rows] == [
        ("a.jsonl", 0),
        ("a.jsonl", 2),
        ("b.jsonl", 1),
    ]
    dups = {(r.source_file, r.record_index): r.detail for r in rejects}
    assert set(dups) == {("a.jsonl", 1), ("b.jsonl", 0)}
    assert dups[("a.jsonl", 1)].startswith("near-duplicate of a.jsonl#0")
    assert dups[("b.jsonl", 0)] == "same text as a.jsonl#0 after normalisation"
    assert stats["totals"]["rejected"] == {"duplicate": 2}
    # without an index only byte-identical dialogues are duplicates
    rows, rejects, _ = ingest_sources([SourceConfig(path=str(a)), SourceConfig(path=str(b))], 0)
    assert len(rows) == 5 and rejects == []

    # `limit` counts distinct dialogues: the near-duplicate never enters the pool
    rows, rejects, _ = ingest_sources([SourceConfig(path=str(a), limit=2)], 0, Deduper())
    assert len(rows) == 2 and sorted(r.reason for r in rejects) == ["duplicate"]


def test_run_ingest_uses_the_config(tmp_path: Path) -> None:
    src = write_jsonl(
        tmp_path / "in.jsonl",
        [{"instruction": Q, "output": ANS}, {"instruction": Q + " Thanks!", "output": ANS}],
    )

    def cfg(**inp) -> RunConfig:
        return RunConfig.model_validate(
            {
                "name": "d",
                "runs_dir": str(tmp_path / "runs"),
                "input": {"sources": [{"path": str(src)}], **inp},
            }
        )

    near, off = cfg(), cfg(dedup="off")
    assert make_deduper(off) is None and make_deduper(near).mode == "near"
    assert (
        source_fingerprint(near)
        != source_fingerprint(off)
        != source_fingerprint(cfg(near_duplicate_threshold=0.9))
    )
    store = RunStore(near.run_dir)
    run_ingest(near, store, Progress(quiet=True))
    stats = json.loads((store.root / "ingest" / "stats" / "ingest.json").read_text())
    assert (stats["rows_out"], stats["rejected_by_reason"], stats["duplicates_by_kind"]) == (
        1,
        {"duplicate": 1},
        {"near": 1},
    )
    run_ingest(off, store, Progress(quiet=True))  # another fingerprint: ingest runs again
    stats = json.loads((store.root / "ingest" / "stats" / "ingest.json").read_text())
    assert stats["rows_out"] == 2


def test_sample_data(sample_data: Path) -> None:
    sources = [SourceConfig(path=str(p)) for p in sorted((sample_data / "text").glob("*.json"))]
    rows, rejects, _ = ingest_sources(sources, 0, Deduper())
    kept = {f"{r['source_file']}#{r['source_index']}" for r in rows}
    dups = [r for r in rejects if r.reason == "duplicate"]
    kinds = {duplicate_kind(r.detail) for r in dups}
    assert "near" in kinds and "identical" in kinds
    for r in dups:  # every duplicate names a record that was kept
        earlier = r.detail.split(" of " if r.detail.startswith("near") else " as ")[1].split(" ")[0]
        assert earlier in kept, r.detail
    # on this data the near-duplicates are the template-made identity chats and one KTO dialogue
    # repeated with only its last answer changed; nothing in the Alpaca files
    near = [r for r in dups if duplicate_kind(r.detail) == "near"]
    assert {r.source_file for r in near} == {
        "en_fastchat_dummy_conversation.json",
        "en_llamafactory_kto_en_demo.json",
    }
    assert [
        (r.record_index, r.detail.split()[2]) for r in near if r.source_file.startswith("en_llamafactory_kto")
    ] == [(195, "en_llamafactory_kto_en_demo.json#64")]
