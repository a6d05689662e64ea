"""In-cluster alternative to ``vllm serve``: the text tasks as Ray Data vLLM engine processors.

The default production path reaches ``vllm serve`` replicas through the OpenAI API (the shard
stages, the client's retries and cache). On a Ray cluster with GPUs the engines can instead live
inside Ray Data actors: ``ds -> rewrite processor -> judge processor -> spoken processor``, with
the same prompts, JSON schemas and reply checks as the stages, and the same output columns::

    import ray
    from kespeechchat.llm.ray_vllm import run_task

    ds = ray.data.read_parquet("runs/x/ingest/data")       # dialogue rows
    ds = run_task(ds, "rewrite", cfg)                      # + rewritten_texts, reject_reason, ...
    kept = ds.filter(lambda r: not r["reject_reason"])

Each row gets ``reject_reason`` ("" when kept) and ``reject_detail``; a row the engine failed on
(``__inference_error__``, with ``should_continue_on_error``) is ``llm_unavailable``, a reply that
fails the checks is ``llm_invalid_output`` (one pass, no re-ask: send those rows through again
with another seed if they matter). Structured output goes in ``sampling_params`` as
``structured_outputs={"json": schema}``: Ray 2.60's engine stage pops that key and builds vLLM's
``StructuredOutputsParams`` from it (``ray/llm/_internal/batch/stages/vllm_engine_stage.py``;
older Ray releases read ``guided_decoding`` instead, and those are not supported). xgrammar or
guidance enforce the schema, ``pattern`` included. Ray's output rows carry no ``finish_reason``:
a reply whose ``num_generated_tokens`` reached the request's ``max_tokens`` is reported as cut
there (``finish_reason``), not as broken JSON.

Building the config (:func:`engine_processor_config`) and the row functions is plain Python and
is tested on CPU; ``build_processor`` imports transformers and vLLM and needs the ``gpu`` extra.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from kespeechchat.llm.client import parse_reply
from kespeechchat.llm.tasks import (
    SPOKEN_TEXT_PATTERN,
    judge_request,
    judge_schema,
    parse_judge,
    parse_rewrite,
    parse_spoken,
    rewrite_request,
    spoken_request,
    turns_schema,
)
from kespeechchat.speakable import guard_spoken, markup

if TYPE_CHECKING:
    from kespeechchat.config import RunConfig

TASK_COLUMNS = {"rewrite": "rewritten_texts", "judge": "filter_notes", "spoken": "spoken_texts"}
_INPUT_TEXTS = {"rewrite": "source_texts", "judge": "rewritten_texts", "spoken": "rewritten_texts"}
ERROR_COLUMN = "__inference_error__"
INSTALL_HINT = (
    "the in-cluster vLLM engine needs the 'gpu' extra: pip install 'kespeechchat[gpu]' (vllm, ray[llm])"
)


def _check_task(task: str) -> None:
    if task not in TASK_COLUMNS:
        raise ValueError(f"unknown task {task!r}; expected one of {', '.join(TASK_COLUMNS)}")


def engine_processor_config(cfg: RunConfig) -> Any:
    """``ray.data.llm.vLLMEngineProcessorConfig`` from the ``llm.engine_*`` fields of the config."""
    from ray.data.llm import vLLMEngineProcessorConfig

    llm = cfg.llm
    if not llm.engine_model_source:
        raise ValueError("llm.engine_model_source is empty: name the model directory the engines load")
    return vLLMEngineProcessorConfig(
        model_source=llm.engine_model_source,
        engine_kwargs=dict(llm.engine_kwargs),
        concurrency=llm.engine_replicas,
        batch_size=llm.engine_batch_size,
        accelerator_type=llm.engine_accelerator_type,
        should_continue_on_error=True,  # a bad row becomes a reject, it does not stop the dataset
        runtime_env={"env_vars": {"HF_HUB_OFFLINE": "1"}},
    )


def _as_list(value: Any) -> list:
    """Ray Data hands list columns over as numpy arrays; the tasks want lists of str."""
    return [str(v) for v in (value.tolist() if hasattr(value, "tolist") else value)]


def _request(task: str, row: dict[str, Any], cfg: RunConfig) -> dict[str, Any]:

    roles, texts, lang = _as_list(row["roles"]), _as_list(row[_INPUT_TEXTS[task]]), str(row["language"])
    pattern = SPOKEN_TEXT_PATTERN if cfg.llm.text_pattern else None
    if task == "rewrite":
        return rewrite_request(roles, texts, lang, cfg.rewrite, text_pattern=pattern)
    if task == "judge":
        return judge_request(roles, texts, lang)
    return spoken_request(roles, texts, lang, cfg.spoken, text_pattern=pattern)


def make_preprocess(task: str, cfg: RunConfig) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """Row -> the same row plus ``messages`` and ``sampling_params`` (with the JSON schema)."""
    _check_task(task)
    temperature, seed = cfg.llm.temperature, cfg.seed

    def preprocess(row: dict[str, Any]) -> dict[str, Any]:
        req = _request(task, row, cfg)
        return {
            **row,
            "messages": req["messages"],
            "sampling_params": {
                "temperature": temperature,
                "max_tokens": req["max_tokens"],
                "seed": seed,
                "structured_outputs": {"json": req["schema"]},
            },
        }

    return preprocess


def _parse(task: str, row: dict[str, Any], value: dict) -> tuple[Any, str, str]:
    """(output column value, reject reason or "", note) of one checked reply.

    Spoken replies pass the spoken stage's guards (``kespeechchat.speakable.guard_spoken``): glosses
    dropped, and a reply with markup or drift replaced by the rule-normalised rewrite, with the
    reason as the note (there is no re-ask in one engine pass); markup left after that rejects the
    row as ``spoken_markup``.
    """

    roles, lang = _as_list(row["roles"]), str(row["language"])
    if task == "rewrite":
        return parse_rewrite(value, roles, language=lang), "", ""
    if task == "judge":
        keep, why = parse_judge(value)
        return (why, "", "") if keep else (None, f"judge_{why}", "")
    rewritten = _as_list(row["rewritten_texts"])
    texts = parse_spoken(value, roles, language=lang, source_texts=rewritten)
    spoken, note = guard_spoken(roles, rewritten, texts, lang)
    hit = next(((i, m) for i, t in enumerate(spoken) if (m := markup(t))), None)
    if hit:
        return None, "spoken_markup", f"turn {hit[0]}: {hit[1]}"
    return spoken, "", note


def finish_reason(task: str, row: dict[str, Any], cfg: RunConfig) -> str | None:
    """The row's ``finish_reason`` when the engine gave one, else "length" when the reply used
    all of its ``max_tokens`` (Ray's vLLM output rows carry only ``num_generated_tokens``)."""
    if row.get("finish_reason"):
        return str(row["finish_reason"])
    n = int(row.get("num_generated_tokens") or 0)
    return "length" if n and n >= int(_request(task, row, cfg)["max_tokens"]) else None


def _schema(task: str, n_turns: int, cfg: RunConfig) -> dict:

    if task == "judge":
        return judge_schema()
    return turns_schema(n_turns, SPOKEN_TEXT_PATTERN if cfg.llm.text_pattern else None)


def make_postprocess(
    task: str, cfg: RunConfig, keep_columns: list[str]
) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """Engine output row -> ``keep_columns`` + the task's column + reject_reason/detail + tokens.

    Also applied to rows the engine failed on (they bypass Ray's postprocess; see ``finalize``).
    """
    _check_task(task)
    out_col = TASK_COLUMNS[task]

    def postprocess(row: dict[str, Any]) -> dict[str, Any]:

        out: dict[str, Any] = {c: row.get(c) for c in keep_columns}
        out.update(
            {
                out_col: None,
                **({"spoken_notes": ""} if task == "spoken" else {}),
                "reject_reason": "",
                "reject_detail": "",
                "tokens_in": int(row.get("num_input_tokens") or 0),
                "tokens_out": int(row.get("num_generated_tokens") or 0),
            }
        )
        error = row.get(ERROR_COLUMN) or ""
        if error:
            out.update(reject_reason="llm_unavailable", reject_detail=str(error)[:2000])
            return out
        try:
            schema = _schema(task, len(_as_list(row["roles"])), cfg)
            value = parse_reply(row.get("generated_text"), finish_reason(task, row, cfg), schema)
            result, reason, note = _parse(task, row, value)
        except ValueError as e:
            out.update(reject_reason="llm_invalid_output", reject_detail=f"{e}"[:2000])
            return out
        out[out_col] = result
        if reason:
            out.update(reject_reason=reason, reject_detail=(note or str(row.get("generated_text")))[:500])
        elif task == "spoken":
            out["spoken_notes"] = note
        return out

    return postprocess


def finalize(
    task: str, cfg: RunConfig, keep_columns: list[str]
) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """After the processor: failed rows (which skipped postprocess) become ``llm_unavailable``
    rejects with the same columns as the rest; the error column goes."""
    post = make_postprocess(task, cfg, keep_columns)

    def fix(row: dict[str, Any]) -> dict[str, Any]:
        if row.get(ERROR_COLUMN):
            return post(row)
        return {k: v for k, v in row.items() if k != ERROR_COLUMN}

    return fix


def build_task_processor(task: str, cfg: RunConfig, keep_columns: list[str]) -> Any:
    """The Ray Data processor of one task (needs vLLM, transformers and GPUs to build and run)."""
    import importlib.util

    try:
        from ray.data.llm import build_processor
    except ImportError as e:
        raise ImportError(f"{INSTALL_HINT} ({e})") from None
    missing = [m for m in ("vllm", "transformers") if importlib.util.find_spec(m) is None]
    if missing:  # checked first: without them Ray would start a cluster and fail deep inside
        raise ImportError(f"{INSTALL_HINT} ({', '.join(missing)} missing)")
    _check_task(task)
    try:
        return build_processor(
            engine_processor_config(cfg),
            preprocess=make_preprocess(task, cfg),
            postprocess=make_postprocess(task, cfg, keep_columns),
        )
    except ModuleNotFoundError as e:
        raise ImportError(f"{INSTALL_HINT} ({e})") from None


def run_task(ds: Any, task: str, cfg: RunConfig, keep_columns: list[str] | None = None) -> Any:
    """``ds`` (dialogue rows) through the task's engine processor; the result is lazy, like any Dataset."""
    cols = list(keep_columns or [c for c in ds.columns() if c != ERROR_COLUMN])
    processor = build_task_processor(task, cfg, cols)
    return processor(ds).map(finalize(task, cfg, cols))
