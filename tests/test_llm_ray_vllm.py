"""The in-cluster vLLM path: processor config, row pre/postprocessing (CPU); building needs the gpu extra."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest

from kespeechchat.config import RunConfig
from kespeechchat.llm.ray_vllm import (
    ERROR_COLUMN,
    INSTALL_HINT,
    build_task_processor,
    engine_processor_config,
    finalize,
    make_postprocess,
    make_preprocess,
)
from kespeechchat.llm.tasks import SPOKEN_TEXT_PATTERN, judge_request, rewrite_request

pytest.importorskip("ray.data.llm", reason="needs the 'ray' extra")

ROLES = ["user", "assistant"]
KEEP = ["dialogue_id", "language", "roles", "source_texts", "rewritten_texts"]


def cfg(**llm) -> RunConfig:
    return RunConfig.model_validate(
        {
            "name": "r",
            "input": {"sources": [{"path": "x.jsonl"}]},
            "llm": {"backend": "openai", "engine_model_source": "/models/Qwen2.5-72B-Instruct", **llm},
        }
    )


def ray_row(**extra) -> dict:
    """A row as Ray Data hands it to a UDF: list columns arrive as numpy arrays."""
    return {
        "dialogue_id": "d-1",
        "language": "en",
        "roles": np.array(ROLES, dtype=object),
        "source_texts": np.array(["How much is tea?", "It costs $3.50 a cup."], dtype=object),
        "rewritten_texts": np.array(
            ["How much is tea?", "It costs $3.50 a cup, more or less."], dtype=object
        ),
        **extra,
    }


def reply(*texts: str) -> str:
    return json.dumps({"turns": [{"role": r, "text": t} for r, t in zip(ROLES, texts, strict=True)]})


def test_engine_config_from_the_run_config():
    c = engine_processor_config(
        cfg(
            engine_replicas=4,
            engine_batch_size=128,
            engine_accelerator_type="H100",
            engine_kwargs={"tensor_parallel_size": 4, "max_model_len": 8192},
        )
    )
    assert (c.model_source, c.concurrency, c.batch_size, c.accelerator_type) == (
        "/models/Qwen2.5-72B-Instruct",
        4,
        128,
        "H100",
    )
    assert c.engine_kwargs["tensor_parallel_size"] == 4 and c.engine_kwargs["max_model_len"] == 8192
    assert c.should_continue_on_error is True  # a failed row becomes a reject, not a failed dataset
    with pytest.raises(ValueError, match="engine_model_source"):
        engine_processor_config(cfg(engine_model_source=None))


def test_preprocess_sends_the_stage_prompt_and_schema():
    c = cfg()
    row = ray_row()
    out = make_preprocess("rewrite", c)(row)
    expected = rewrite_request(ROLES, list(row["source_texts"]), "en", c.rewrite)
    assert out["messages"] == expected["messages"]
    sp = out["sampling_params"]
    assert sp["structured_outputs"] == {"json": expected["schema"]}
    assert (sp["max_tokens"], sp["temperature"], sp["seed"]) == (
        c.rewrite.max_tokens,
        c.llm.temperature,
        c.seed,
    )
    text = sp["structured_outputs"]["json"]["properties"]["turns"]["items"]["properties"]["text"]
    assert text["pattern"] == SPOKEN_TEXT_PATTERN
    assert out["dialogue_id"] == "d-1"  # the row's own columns ride along
    no_pattern = make_preprocess("rewrite", cfg(text_pattern=False))(row)["sampling_params"][
        "structured_outputs"
    ]
    assert "pattern" not in no_pattern["json"]["properties"]["turns"]["items"]["properties"]["text"]
    judge = make_preprocess("judge", c)(row)
    assert judge["messages"] == judge_request(ROLES, list(row["rewritten_texts"]), "en")["messages"]
    with pytest.raises(ValueError, match="unknown task"):
        make_preprocess("translate", c)


def test_postprocess_keeps_good_replies_and_names_bad_ones():
    post = make_postprocess("rewrite", cfg(), KEEP)
    good = post(
        ray_row(
            generated_text=reply("How much does tea cost?", "About three fifty a cup."),
            num_generated_tokens=20,
            num_input_tokens=300,
        )
    )
    assert good["rewritten_texts"] == ["How much does tea cost?", "About three fifty a cup."]
    assert (good["reject_reason"], good["tokens_in"], good["tokens_out"]) == ("", 300, 20)
    assert set(good) == set(KEEP) | {"reject_reason", "reject_detail", "tokens_in", "tokens_out"}
    for bad in (
        "not json",
        reply("Only", "- a list\n- of things"),
        json.dumps({"turns": []}),
        '{"turns": [1',
    ):
        out = post(ray_row(generated_text=bad))
        assert out["reject_reason"] == "llm_invalid_output" and out["rewritten_texts"] is None, bad
    failed = post(ray_row(**{ERROR_COLUMN: "RuntimeError: engine died"}))
    assert failed["reject_reason"] == "llm_unavailable" and "engine died" in failed["reject_detail"]


def test_postprocess_judge_and_spoken():
    judge = make_postprocess("judge", cfg(), KEEP)
    ok = judge(ray_row(generated_text=json.dumps({"harmful": False, "has_code": False, "makes_sense": True})))
    assert (ok["filter_notes"], ok["reject_reason"]) == ("ok", "")
    unsafe = judge(
        ray_row(generated_text=json.dumps({"harmful": True, "has_code": False, "makes_sense": True}))
    )
    assert unsafe["reject_reason"] == "judge_unsafe"
    spoken = make_postprocess("spoken", cfg(), KEEP)
    out = spoken(ray_row(generated_text=reply("CHANGED", "Well, it costs $3.50 a cup, more or less.")))
    # user turns come from the input, answers are normalised for the TTS
    assert out["spoken_texts"] == [
        "How much is tea?",
        "Well, it costs three dollars and fifty cents a cup, more or less.",
    ]
    assert (out["reject_reason"], out["spoken_notes"]) == ("", "")


def test_spoken_guards_hold_on_the_engine_path_too():
    """No re-ask in one engine pass: a drifted reply falls back to the rule-normalised rewrite, with
    the reason as a note; a parenthetical gloss is dropped."""
    spoken = make_postprocess("spoken", cfg(), KEEP)
    drifted = spoken(
        ray_row(
            generated_text=reply(
                "x", "Well, it costs $3.50 a cup. I hope this helps you plan your shopping trip today!"
            )
        )
    )
    assert drifted["reject_reason"] == ""
    assert drifted["spoken_notes"].startswith("fallback_to_rewrite: spoken_drift")
    assert drifted["spoken_texts"][1] == "It costs three dollars and fifty cents a cup, more or less."
    zh = {
        "language": "zh",
        "source_texts": np.array(["它是什么？", "巴西利斯克是一种传说中的生物。"], dtype=object),
        "rewritten_texts": np.array(["它是什么？", "巴西利斯克是一种传说中的生物。"], dtype=object),
    }
    glossed = spoken(
        ray_row(**zh, generated_text=reply("它是什么？", "巴西利斯克（Basilisk）是一种传说中的生物。"))
    )
    assert glossed["spoken_texts"][1] == "巴西利斯克是一种传说中的生物。" and glossed["spoken_notes"] == ""


def test_finalize_turns_engine_errors_into_rejects():
    fix = finalize("rewrite", cfg(), KEEP)
    failed = fix(ray_row(**{ERROR_COLUMN: "ValueError: prompt too long", "prompt": "..."}))
    assert failed["reject_reason"] == "llm_unavailable" and ERROR_COLUMN not in failed
    done = {"dialogue_id": "d-2", "rewritten_texts": ["a", "b"], "reject_reason": "", ERROR_COLUMN: ""}
    assert fix(done) == {"dialogue_id": "d-2", "rewritten_texts": ["a", "b"], "reject_reason": ""}


@pytest.mark.skipif(
    importlib.util.find_spec("vllm") is not None and importlib.util.find_spec("transformers") is not None,
    reason="vllm is installed: building is covered where the GPU runs",
)
def test_building_without_the_gpu_extra_names_it():
    with pytest.raises(ImportError) as e:
        build_task_processor("rewrite", cfg(), KEEP)
    assert INSTALL_HINT in str(e.value)


def test_ray_engine_stage_reads_the_structured_outputs_key():
    """The installed Ray's vLLM engine stage turns ``sampling_params["structured_outputs"]`` into
    vLLM's StructuredOutputsParams (vLLM itself needs a GPU build, so Ray's own source is read):
    a Ray that reads another key (older releases: ``guided_decoding``) fails here, not at run time."""
    import inspect

    from ray.llm._internal.batch.stages.vllm_engine_stage import vLLMEngineWrapper

    src = inspect.getsource(vLLMEngineWrapper._prepare_llm_request)
    assert '"structured_outputs" in sampling_params' in src
    assert 'sampling_params.pop("structured_outputs")' in src
    assert "StructuredOutputsParams(" in src and "guided_decoding" not in src
    row = make_preprocess("rewrite", cfg())(ray_row())
    assert set(row["sampling_params"]) == {"temperature", "max_tokens", "seed", "structured_outputs"}


def test_reply_at_max_tokens_is_reported_as_cut():
    """Ray's output rows have no finish_reason: a reply that used every allowed token is cut."""
    c = cfg()
    post = make_postprocess("rewrite", c, KEEP)
    limit = make_preprocess("rewrite", c)(ray_row())["sampling_params"]["max_tokens"]
    cut = post(
        ray_row(generated_text='{"turns": [{"role": "user", "text": "How mu', num_generated_tokens=limit)
    )
    assert cut["reject_reason"] == "llm_invalid_output"
    assert "cut at max_tokens" in cut["reject_detail"]
    broken = post(ray_row(generated_text='{"turns": [1', num_generated_tokens=limit - 1))
    assert "not JSON" in broken["reject_reason"] + broken["reject_detail"]
    ok = post(
        ray_row(
            generated_text=reply("How much does tea cost?", "About three."), num_generated_tokens=limit - 1
        )
    )
    assert ok["reject_reason"] == ""
