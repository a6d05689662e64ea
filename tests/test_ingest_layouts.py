"""Real chat and instruction layouts (tests/data/layouts/README.md): each read right, what cannot be
spoken rejected with its own reason, and files sniffed by content rather than by name."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from kespeechchat.config import SourceConfig
from kespeechchat.ingest import REASONS, ingest_sources, iter_source

LAYOUTS = Path(__file__).parent / "data" / "layouts"


def ingest(path: Path | str, **kw):
    rows, rejects, stats = ingest_sources([SourceConfig(path=str(path), **kw)], seed=0)
    s = stats["sources"][0]
    assert s["records"] == s["kept"] + sum(s["rejected"].values())
    assert all(r.reason in REASONS and r.detail for r in rejects)
    return rows, rejects, s


@pytest.mark.parametrize(
    ("name", "layout", "kept", "rejected"),
    [
        ("llamafactory_dpo_en_demo.json", "preference", 4, {}),
        ("llamafactory_v1_dpo_demo.jsonl", "preference", 2, {}),
        ("hh_rlhf_layout_sample.jsonl.gz", "preference", 2, {}),
        ("llamafactory_v1_sft_demo.jsonl", "openai", 4, {}),
        ("jsonl_named_json.json", "openai", 4, {}),
        ("self_instruct_seed_tasks.jsonl", "self_instruct", 6, {}),
        ("firefly_sample.jsonl", "firefly", 2, {"empty_turn": 1}),
        ("llamafactory_glaive_toolcall_en_demo.json", "sharegpt", 2, {"tool_call": 1}),
        ("llamafactory_reason_tool_use_demo.jsonl", "openai", 1, {"tool_call": 1}),
        ("llamafactory_v1_multimodal_demo.jsonl", None, 0, {"non_text_content": 2}),
    ],
)
def test_each_layout_is_read(name, layout, kept, rejected):
    rows, _, s = ingest(LAYOUTS / name)
    assert s["kept"] == kept and s["rejected"] == rejected
    assert s["formats"] == ({layout: kept} if kept else {})
    for r in rows:
        assert r["roles"][0] == "user" and r["roles"][-1] == "assistant" and len(r["roles"]) % 2 == 0


def test_typed_content_parts_are_joined_and_reasoning_is_not_spoken():
    rows, _, _ = ingest(LAYOUTS / "llamafactory_v1_sft_demo.jsonl")
    assert rows[0]["source_texts"][0] == "hi"  # [{"type": "text", "value": "hi"}]
    rows, _, _ = ingest(LAYOUTS / "llamafactory_reason_tool_use_demo.jsonl")
    answer = rows[0]["source_texts"][1]
    assert (
        answer.startswith("I'm sorry") and "Okay, the user is asking" not in answer
    )  # reasoning part left out


def test_preference_data_gives_the_chosen_answer_or_the_rejected_one():
    chosen, _, _ = ingest(LAYOUTS / "hh_rlhf_layout_sample.jsonl.gz")
    rejected, _, _ = ingest(LAYOUTS / "hh_rlhf_layout_sample.jsonl.gz", preference="rejected")
    assert chosen[0]["source_texts"][1].startswith("Take lessons with a coach")
    assert rejected[0]["source_texts"][1] == "Just jump into the sea."
    assert chosen[0]["source_texts"][0] == rejected[0]["source_texts"][0]  # the same prompt
    dpo, _, _ = ingest(LAYOUTS / "llamafactory_dpo_en_demo.json")
    raw = json.loads((LAYOUTS / "llamafactory_dpo_en_demo.json").read_text(encoding="utf-8"))[0]
    assert dpo[0]["source_texts"][-1] == raw["chosen"]["value"].strip()


def test_a_tool_dialogue_and_an_image_are_named_as_such():
    _, rejects, _ = ingest(LAYOUTS / "llamafactory_glaive_toolcall_en_demo.json")
    assert rejects[0].reason == "tool_call" and "function_call" in rejects[0].detail
    _, rejects, _ = ingest(LAYOUTS / "llamafactory_v1_multimodal_demo.jsonl")
    assert "image_url" in rejects[0].detail


def test_a_record_with_media_files_is_not_spoken(tmp_path):
    rec = {"messages": [{"role": "user", "content": "<image>Who are they?"}, {"role": "assistant", "content": "Two players."}],
           "images": ["mllm_demo_data/1.jpg"]}  # fmt: skip
    f = tmp_path / "mllm.json"
    f.write_text(json.dumps([rec, {**rec, "images": []}]), encoding="utf-8")
    rows, rejects, _ = ingest(f)
    assert [r.reason for r in rejects] == ["non_text_content"] and "'images'" in rejects[0].detail
    assert len(rows) == 1  # an empty media list is no media


def _records():
    return [
        {
            "messages": [
                {"role": "user", "content": f"Question {i}?"},
                {"role": "assistant", "content": f"Answer {i}."},
            ]
        }
        for i in range(6)
    ]


def test_files_are_sniffed_by_content(tmp_path):
    recs = _records()
    lines = "\n".join(json.dumps(r) for r in recs) + "\n"
    (tmp_path / "array.jsonl").write_text(json.dumps(recs), encoding="utf-8")  # an array named .jsonl
    (tmp_path / "bom.json").write_bytes(
        b"\xef\xbb\xbf" + lines.encode()
    )  # JSON Lines with a BOM, named .json
    (tmp_path / "one.json").write_text(json.dumps(recs[0]), encoding="utf-8")  # a single object
    with gzip.open(tmp_path / "lines.jsonl.gz", "wb") as f:
        f.write(lines.encode())
    with pa.output_stream(str(tmp_path / "lines.jsonl.zst"), compression="zstd") as f:
        f.write(lines.encode())
    (tmp_path / "misnamed.json").write_bytes(gzip.compress(lines.encode()))  # gzip whatever the name says
    for name, n in [("array.jsonl", 6), ("bom.json", 6), ("one.json", 1), ("lines.jsonl.gz", 6),
                    ("lines.jsonl.zst", 6), ("misnamed.json", 6)]:  # fmt: skip
        rows, rejects, _ = ingest(tmp_path / name)
        assert len(rows) == n and not rejects, name


def test_a_corrupt_compressed_file_is_one_reject(tmp_path):
    whole = gzip.compress("".join(json.dumps(r) + "\n" for r in _records()).encode())
    (tmp_path / "broken.jsonl.gz").write_bytes(whole[: len(whole) // 2])  # cut in the middle
    rows, rejects, _ = ingest(tmp_path / "broken.jsonl.gz")
    assert rows == [] and [r.reason for r in rejects] == ["unreadable_file"] and "gzip" in rejects[0].detail


def test_a_hugging_face_parquet_folder_is_one_source(tmp_path):
    data = tmp_path / "my_dataset" / "data"
    data.mkdir(parents=True)
    recs = _records()
    pq.write_table(pa.Table.from_pylist(recs[:4]), data / "train-00000-of-00002.parquet")
    pq.write_table(pa.Table.from_pylist(recs[4:]), data / "train-00001-of-00002.parquet")
    (tmp_path / "my_dataset" / "README.md").write_text("# card\n", encoding="utf-8")  # not a data file
    rows, rejects, s = ingest(tmp_path / "my_dataset")
    assert len(rows) == 6 and not rejects and s["records"] == 6
    assert {r["source_file"] for r in rows} == {
        "data/train-00000-of-00002.parquet",
        "data/train-00001-of-00002.parquet",
    }
    assert [label for label, _ in iter_source(tmp_path / "my_dataset")][
        4
    ] == "data/train-00001-of-00002.parquet"
    empty = tmp_path / "empty"
    empty.mkdir()
    _, rejects, _ = ingest(empty)
    assert rejects[0].reason == "unreadable_file" and "holds no" in rejects[0].detail


def test_a_column_mapping_reads_an_unknown_layout(tmp_path):
    recs = [
        {
            "dialog": [{"speaker": "Q", "utterance": "几点了？"}, {"speaker": "A", "utterance": "三点半。"}],
            "sys": "be brief",
        },
        {"dialog": [{"speaker": "Q", "utterance": "Hi"}, {"speaker": "B", "utterance": "?"}]},
        {"turns": []},
    ]
    f = tmp_path / "custom.jsonl"
    f.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in recs) + "\n", encoding="utf-8")
    cols = {"messages": "dialog", "role": "speaker", "content": "utterance", "user_tag": "Q", "assistant_tag": "A",
            "system": "sys"}  # fmt: skip
    rows, rejects, s = ingest(f, columns=cols)
    assert [r["source_texts"] for r in rows] == [["几点了？", "三点半。"]] and s["formats"] == {"mapped": 1}
    assert [(r.record_index, r.reason) for r in rejects] == [(1, "unknown_role"), (2, "missing_field")]
    assert "columns.messages='dialog'" in rejects[1].detail  # a mapping that does not fit names itself
    # a mapping that fits no record at all is the config's mistake: an error naming the first record
    with pytest.raises(ValueError, match=r"fits none of its 3 records; the first, custom.jsonl#0: missing_field: "
                       r"columns.messages='conversation' is not in the record"):  # fmt: skip
        ingest(f, columns={**cols, "messages": "conversation"})


def test_ingest_check_reports_layout_counts_and_one_example_per_reason(capsys):
    from pipelines.cli import main

    files = [
        str(LAYOUTS / "llamafactory_glaive_toolcall_en_demo.json"),
        str(LAYOUTS / "firefly_sample.jsonl"),
    ]
    assert main(["ingest-check", *files]) == 0
    out = capsys.readouterr().out
    assert "layout: sharegpt 2" in out and "3 records read -> 2 dialogues kept (en 2), 1 rejected" in out
    assert "tool_call" in out and "llamafactory_glaive_toolcall_en_demo.json#0" in out
    assert "layout: firefly 2" in out and "empty_turn" in out and "conversation[0].human is empty" in out
    assert main(["ingest-check", "--json", str(LAYOUTS / "llamafactory_v1_multimodal_demo.jsonl")]) == 2
    rep = json.loads(capsys.readouterr().out)[0]
    assert rep["kept"] == 0 and rep["rejected"] == {"non_text_content": 2}
