"""Ingest: formats, file kinds, every reject reason, ids, sampling, and the real sample data."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from kespeechchat.config import SourceConfig
from kespeechchat.ingest import (
    REASONS,
    ROW_KEYS,
    IngestReject,
    RecordError,
    dialogue_id,
    ingest_sources,
    normalize_record,
    read_records,
    rejects_table,
)
from kespeechchat.schema import table_from_rows

DATA = Path(__file__).resolve().parent / "data"


def src(path: Path | str, **kw) -> SourceConfig:
    return SourceConfig(path=str(path), **kw)


def assert_accounted(rows: list[dict], rejects: list[IngestReject], stats: dict) -> None:
    """Every record read is one row or one reject, per file, and the stats say the same."""
    for s in stats["sources"]:
        name = s["source_file"]
        n_rows = sum(1 for r in rows if r["source_file"] == name)
        n_rej = sum(1 for r in rejects if r.source_file == name)
        assert s["records"] == n_rows + n_rej == s["kept"] + sum(s["rejected"].values()), name
        assert s["kept"] == n_rows


def write_jsonl(path: Path, records: list) -> Path:
    path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in records) + "\n", encoding="utf-8")
    return path


# --- the malformed fixture: one line per reason ------------------------------------------------

MALFORMED_EXPECTED = {
    1: "bad_json",
    2: "invalid_utf8",
    3: "not_an_object",
    4: "unknown_format",
    5: "missing_field",
    6: "wrong_type",
    7: "empty_turn",
    8: "tool_call",
    9: "bad_turn_order",
    10: "no_turns",
    11: "duplicate",
    15: "non_text_content",
    16: "no_turns",
    17: "not_an_object",
    18: "invalid_utf8",
}


def test_malformed_jsonl_reasons() -> None:
    rows, rejects, stats = ingest_sources([src(DATA / "malformed.jsonl")], seed=0)
    assert_accounted(rows, rejects, stats)
    assert {r.record_index: r.reason for r in rejects} == MALFORMED_EXPECTED
    assert [r["source_index"] for r in rows] == [0, 12, 13]  # line 14 is blank: not a record
    assert stats["sources"][0]["records"] == 18
    for r in rejects:
        assert r.reason in REASONS and r.detail and r.source_file == "malformed.jsonl"
        assert len(r.raw_excerpt) <= 300
    by_index = {r.record_index: r for r in rejects}
    assert (
        by_index[8].detail == "messages[2] is a tool call or its result (role='tool'): not a spoken dialogue"
    )
    assert by_index[11].detail.startswith("same turns as malformed.jsonl#0")
    assert by_index[1].raw_excerpt == '{"instruction": "broken", "output":'
    assert "messages[0].content[0].type='image_url'" in by_index[15].detail


def test_system_and_trailing_user_are_dropped_and_counted() -> None:
    rows, _, stats = ingest_sources([src(DATA / "malformed.jsonl")], seed=0)
    row = next(r for r in rows if r["source_index"] == 12)
    assert row["roles"] == ["user", "assistant"]
    assert row["source_texts"] == ["Name a fruit.", "An apple."]
    assert row["source_format"] == "sharegpt"
    s = stats["sources"][0]
    assert s["system_dropped"] == 1 and s["trailing_user_dropped"] == 1


def test_openai_text_parts_are_joined() -> None:
    rows, _, _ = ingest_sources([src(DATA / "malformed.jsonl")], seed=0)
    row = next(r for r in rows if r["source_index"] == 13)
    assert row["source_texts"][0] == "Describe the sky\nin five words."
    assert row["source_format"] == "openai"


def test_rows_have_exactly_the_schema_columns() -> None:
    rows, rejects, _ = ingest_sources([src(DATA / "malformed.jsonl")], seed=0)
    for r in rows:
        assert tuple(r) == ROW_KEYS
        assert re.fullmatch(r"d-[0-9a-f]{16}", r["dialogue_id"])
        assert r["language"] in {"zh", "en", "other"}
    table = table_from_rows(rows, ROW_KEYS)
    assert table.num_rows == 3
    rej = rejects_table(rejects)
    assert rej.num_rows == len(rejects)
    assert set(rej.column("reject_stage").to_pylist()) == {"ingest"}
    assert rej.column("record_index").to_pylist() == [r.record_index for r in rejects]
    assert rej.column("reject_reason").to_pylist() == [r.reason for r in rejects]


# --- whole-file problems ---------------------------------------------------------------------------


def test_broken_json_array_is_one_reject_and_ingest_goes_on() -> None:
    rows, rejects, stats = ingest_sources(
        [src(DATA / "broken_array.json"), src(DATA / "single_object.json")], seed=0
    )
    assert_accounted(rows, rejects, stats)
    assert [(r.source_file, r.record_index, r.reason) for r in rejects] == [
        ("broken_array.json", None, "bad_json")
    ]
    assert "whole file" in rejects[0].detail
    assert len(rows) == 1 and rows[0]["source_file"] == "single_object.json"
    assert rows[0]["source_texts"] == ["Hi there", "Hello! How can I help?"]  # system message dropped
    assert stats["sources"][1]["system_dropped"] == 1


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("top_scalar.json", "not_an_object"),
        ("bad_utf8.json", "invalid_utf8"),
        ("does_not_exist.jsonl", "unreadable_file"),
        ("malformed.jsonl.bak", "unreadable_file"),
    ],
)
def test_file_level_rejects(name: str, reason: str) -> None:
    rows, rejects, stats = ingest_sources([src(DATA / name)], seed=0)
    assert rows == []
    assert [(r.record_index, r.reason) for r in rejects] == [(None, reason)]
    assert stats["sources"][0]["records"] == 1
    assert_accounted(rows, rejects, stats)


def test_corrupt_parquet(tmp_path: Path) -> None:
    p = tmp_path / "corrupt.parquet"
    p.write_bytes(b"PAR1 this is not parquet PAR1")
    rows, rejects, _ = ingest_sources([src(p)], seed=0)
    assert rows == [] and [r.reason for r in rejects] == ["unreadable_file"]


# --- formats and file kinds ----------------------------------------------------------------------

ALPACA = {"instruction": "Name a color.", "input": "", "output": "Blue."}
ALPACA_HISTORY = {
    "instruction": "And one more?",
    "input": "",
    "output": "Green.",
    "system": "Answer briefly.",
    "history": [["Name a color.", "Blue."]],
}
SHAREGPT = {
    "conversations": [
        {"from": "human", "value": "What is the capital of Japan?"},
        {"from": "gpt", "value": "Tokyo."},
        {"from": "user", "value": "And of China?"},
        {"from": "assistant", "value": "Beijing."},
    ]
}
OPENAI = {
    "messages": [
        {"role": "user", "content": "Say hi."},
        {"role": "assistant", "content": "Hi!"},
    ]
}


def test_normalize_record_formats() -> None:
    assert normalize_record(ALPACA) == ("alpaca", ["user", "assistant"], ["Name a color.", "Blue."])
    fmt, roles, texts = normalize_record(ALPACA_HISTORY)
    assert fmt == "alpaca" and roles == ["user", "assistant", "user", "assistant"]
    assert texts == ["Name a color.", "Blue.", "And one more?", "Green."]
    assert (
        normalize_record({"instruction": "Translate:", "input": "你好", "output": "Hello."})[2][0]
        == "Translate:\n你好"
    )
    assert normalize_record(SHAREGPT)[1] == ["user", "assistant", "user", "assistant"]
    assert normalize_record(OPENAI) == ("openai", ["user", "assistant"], ["Say hi.", "Hi!"])
    kto = {**OPENAI, "label": True}
    assert normalize_record(kto) == normalize_record(OPENAI)
    # Alpaca's "no input" markers are not text anybody would say
    for marker in ("<noinput>", "`<noinput>`", "< noinput >", "noinput", "No input"):
        rec = {"instruction": "Name a color.", "input": marker, "output": "Blue."}
        assert normalize_record(rec)[2] == ["Name a color.", "Blue."], marker
    # button labels of scraped chat logs at the end of a turn are not part of what was said
    rec = {
        "instruction": "Tell me about the program.\n \n 지금 번역하기",
        "output": "It is a course.\nShare Prompt",
    }
    assert normalize_record(rec)[2] == ["Tell me about the program.", "It is a course."]
    rec = {"instruction": "Translate:", "input": "no inputs allowed here", "output": "Ok."}
    assert normalize_record(rec)[2][0] == "Translate:\nno inputs allowed here"


def test_normalize_record_errors() -> None:
    with pytest.raises(RecordError) as e:
        normalize_record(ALPACA, fmt="sharegpt")
    assert e.value.reason == "missing_field"
    with pytest.raises(RecordError) as e:
        normalize_record(
            {"conversations": [{"from": "human", "value": "a b"}, {"from": "human", "value": "c d"}]}
        )
    assert e.value.reason == "bad_turn_order" and "turns 0 and 1" in e.value.detail
    with pytest.raises(RecordError) as e:
        normalize_record(
            {"conversations": [{"from": "human", "value": "hi"}, {"from": "system", "value": "x"}]}
        )
    assert e.value.reason == "bad_turn_order"
    with pytest.raises(RecordError) as e:
        normalize_record({"conversations": [{"from": "human", "value": 5}, {"from": "gpt", "value": "x"}]})
    assert e.value.reason == "wrong_type" and e.value.detail == "conversations[0].value is int, expected str"
    with pytest.raises(RecordError) as e:
        normalize_record({"conversations": "not a list"})
    assert e.value.reason == "wrong_type"
    with pytest.raises(ValueError):
        normalize_record(ALPACA, fmt="csv")


def test_parquet_with_nested_columns(tmp_path: Path) -> None:
    """The same records as Parquet (nested lists/structs) and as JSONL give the same rows."""
    alpaca_pq = tmp_path / "alpaca.parquet"
    # the first row sets the columns: the others get nulls for system/history
    table = pa.Table.from_pylist([ALPACA_HISTORY, ALPACA, {**ALPACA, "output": "  "}])
    assert table.schema.field("history").type == pa.list_(pa.list_(pa.string()))
    pq.write_table(table, alpaca_pq, row_group_size=2)
    sharegpt_pq = tmp_path / "sharegpt.parquet"
    pq.write_table(pa.Table.from_pylist([SHAREGPT]), sharegpt_pq)
    openai_pq = tmp_path / "openai.parquet"
    pq.write_table(pa.Table.from_pylist([OPENAI]), openai_pq)
    jsonl = write_jsonl(tmp_path / "same.jsonl", [ALPACA_HISTORY, ALPACA, SHAREGPT, OPENAI])

    rows, rejects, stats = ingest_sources([src(alpaca_pq), src(sharegpt_pq), src(openai_pq)], seed=0)
    assert_accounted(rows, rejects, stats)
    assert [(r.source_file, r.record_index, r.reason) for r in rejects] == [
        ("alpaca.parquet", 2, "empty_turn")
    ]
    assert [r["source_index"] for r in rows] == [0, 1, 0, 0]
    assert [r["source_format"] for r in rows] == ["alpaca", "alpaca", "sharegpt", "openai"]
    assert stats["sources"][0]["system_dropped"] == 1

    rows_jsonl, _, _ = ingest_sources([src(jsonl)], seed=0)
    assert [r["dialogue_id"] for r in rows] == [r["dialogue_id"] for r in rows_jsonl]


def test_read_records_indexes(tmp_path: Path) -> None:
    p = tmp_path / "a.jsonl"
    p.write_bytes(b'\xef\xbb\xbf{"a": 1}\n\n{"b": 2}\n')
    assert list(read_records(p)) == [(0, {"a": 1}), (2, {"b": 2})]


# --- ids and duplicates ----------------------------------------------------------------------------


def test_dialogue_id_is_a_stable_content_hash() -> None:
    roles, texts = ["user", "assistant"], ["Name a color.", "Blue."]
    did = dialogue_id(roles, texts)
    # fixed value: sha256 of '[["user","Name a color."],["assistant","Blue."]]'; ids must not change between runs
    assert did == "d-b28c5f4777e006f9"
    assert dialogue_id(list(roles), list(texts)) == did
    assert dialogue_id(roles, ["Name a color.", "Red."]) != did
    assert dialogue_id(["assistant", "user"], texts) != did
    # whitespace around turns is normalised away before hashing
    assert normalize_record({"instruction": "  Name a color.\r\n", "output": "Blue.  "})[2] == texts
    with pytest.raises(ValueError):
        dialogue_id(["user"], texts)


def test_duplicates_across_sources(tmp_path: Path) -> None:
    a = write_jsonl(tmp_path / "a.jsonl", [ALPACA, OPENAI])
    b = write_jsonl(
        tmp_path / "b.jsonl",
        [
            {
                "messages": [
                    {"role": "user", "content": "Name a color."},
                    {"role": "assistant", "content": "Blue."},
                ]
            }
        ],
    )
    rows, rejects, stats = ingest_sources([src(a), src(b)], seed=0)
    assert_accounted(rows, rejects, stats)
    assert len(rows) == 2
    assert [(r.source_file, r.reason) for r in rejects] == [("b.jsonl", "duplicate")]
    assert "a.jsonl#0" in rejects[0].detail


# --- sampling --------------------------------------------------------------------------------------


def _many(tmp_path: Path, n: int = 40) -> Path:
    recs = []
    for i in range(n):
        if i % 4 == 0:
            recs.append(
                {"instruction": f"第{i}个问题：今天天气怎么样？", "output": "今天天气很好，阳光明媚。"}
            )
        else:
            recs.append(
                {
                    "instruction": f"Question number {i}: what is the weather like?",
                    "output": "It is sunny and warm today." + " Really." * (i % 3),
                }
            )
    return write_jsonl(tmp_path / "many.jsonl", recs)


def test_sampling_is_deterministic_and_keeps_file_order(tmp_path: Path) -> None:
    p = _many(tmp_path)
    rows1, rej1, st1 = ingest_sources([src(p, limit=10)], seed=7)
    rows2, _, _ = ingest_sources([src(p, limit=10)], seed=7)
    rows3, _, _ = ingest_sources([src(p, limit=10)], seed=8)
    assert_accounted(rows1, rej1, st1)
    ids1 = [r["dialogue_id"] for r in rows1]
    assert len(ids1) == 10 and ids1 == [r["dialogue_id"] for r in rows2]
    assert ids1 != [r["dialogue_id"] for r in rows3]
    idx = [r["source_index"] for r in rows1]
    assert idx == sorted(idx)
    assert Counter(r.reason for r in rej1) == {"not_sampled": 30}


def test_sampling_filters(tmp_path: Path) -> None:
    p = _many(tmp_path)
    rows, rejects, stats = ingest_sources([src(p, limit=5, languages=["zh"])], seed=0)
    assert_accounted(rows, rejects, stats)
    assert len(rows) == 5 and {r["language"] for r in rows} == {"zh"}
    assert sum("not in ['zh']" in r.detail for r in rejects) == 30
    rows, rejects, _ = ingest_sources([src(p, limit=100, max_chars=80)], seed=0)
    assert all(sum(len(t) for t in r["source_texts"]) <= 80 for r in rows)
    assert rejects and all(r.reason == "not_sampled" and "max_chars 80" in r.detail for r in rejects)
    # without limit, max_chars and languages do not apply (they only shape the sample)
    rows, rejects, _ = ingest_sources([src(p, max_chars=10)], seed=0)
    assert len(rows) == 40 and rejects == []


# --- robustness -------------------------------------------------------------------------------------


def test_huge_turn_and_odd_types_do_not_crash(tmp_path: Path) -> None:
    huge = "A" + " long sentence about nothing." * 350_000  # ~10 MB
    p = tmp_path / "odd.jsonl"
    lines = [
        json.dumps({"instruction": "Summarise this.", "input": huge, "output": "It is long."}),
        json.dumps({"instruction": {"nested": [1, 2, {"x": None}]}, "output": "x"}),
        json.dumps({"instruction": "q", "output": 3.5}),
        json.dumps({"instruction": "q", "output": None}),
        json.dumps({"messages": [{"role": ["user"], "content": "hi"}]}),
        json.dumps({"messages": [None, 1, "x"]}),
        json.dumps({"conversations": [{"from": "human"}, {"from": "gpt", "value": "x"}]}),
        json.dumps({"instruction": "q", "output": "a", "history": "not a list"}),
        json.dumps({"instruction": "q", "output": "a", "history": [["only one"]]}),
        json.dumps(True),
        json.dumps(None),
        "[" * 100_000 + "]" * 100_000,  # nested too deeply for the json module
        json.dumps({"instruction": "NaN?", "output": float("nan")}),
    ]
    p.write_text("\n".join(lines) + "\n", encoding="utf-8")
    rows, rejects, stats = ingest_sources([src(p)], seed=0)
    assert_accounted(rows, rejects, stats)
    assert len(rows) == 1 and len(rows[0]["source_texts"][0]) > 10_000_000
    assert rows[0]["language"] == "en"
    reasons = {r.record_index: r.reason for r in rejects}
    assert reasons == {
        1: "wrong_type",
        2: "wrong_type",
        3: "missing_field",
        4: "wrong_type",
        5: "wrong_type",
        6: "missing_field",
        7: "wrong_type",
        8: "wrong_type",
        9: "not_an_object",
        10: "not_an_object",
        11: "bad_json",
        12: "wrong_type",
    }
    assert all(len(r.raw_excerpt) <= 300 for r in rejects)
    rejects_table(rejects)  # every excerpt is valid UTF-8 for Parquet


# --- the real sample data ----------------------------------------------------------------------------


def test_sample_text_data(sample_data: Path) -> None:
    files = sorted((sample_data / "text").glob("*.json"))
    assert len(files) >= 4
    rows, rejects, stats = ingest_sources([src(f) for f in files], seed=0)
    assert_accounted(rows, rejects, stats)
    by_file = {s["source_file"]: s for s in stats["sources"]}
    assert by_file["en_fastchat_dummy_conversation.json"]["formats"] == {"sharegpt": 500}
    assert by_file["en_llamafactory_kto_en_demo.json"]["formats"] == {"openai": 300}
    assert set(by_file["zh_llamafactory_alpaca_zh_demo.json"]["formats"]) == {"alpaca"}
    zh = by_file["zh_llamafactory_alpaca_zh_demo.json"]
    assert zh["languages"].get("zh", 0) >= 0.95 * zh["kept"]
    en = by_file["en_llamafactory_alpaca_en_demo.json"]
    assert en["languages"].get("en", 0) >= 0.98 * en["kept"]
    # the demo files repeat some records
    assert set(stats["totals"]["rejected"]) == {"duplicate"}
    multi = [r for r in rows if len(r["roles"]) > 2]
    assert len(multi) >= 300
    for r in multi:
        assert r["roles"] == ["user", "assistant"] * (len(r["roles"]) // 2)
