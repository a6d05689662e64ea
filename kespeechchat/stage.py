"""Stage base class: one step of the flow, run on one shard at a time.

A stage declares the columns it needs and adds, the resources one worker needs, and the part
of the config that changes its output (hashed into the shard marker). ``setup()`` loads models
once per worker; ``process()`` turns a dialogue table into kept rows and rejected rows.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import pyarrow as pa

from kespeechchat.config import RunConfig, stable_hash
from kespeechchat.schema import REJECT_COLUMNS, rejected_table, table_from_rows


@dataclass(frozen=True)
class Resources:
    """What one worker of a stage needs; the Ray executor maps this onto actor options."""

    cpus: float = 1.0
    gpus: float = 0.0
    memory_mb: int = 512


@dataclass
class Runtime:
    """Values known only when the run starts (never hashed, never saved): endpoints, keys, paths."""

    run_dir: Path
    llm_endpoints: list[str] = field(default_factory=list)
    llm_api_key: str = ""
    llm_model: str = "default"
    llm_structured_output: str = "json_schema"


@dataclass
class StageOutput:
    kept: pa.Table
    rejected: pa.Table
    metrics: dict[str, float] = field(default_factory=dict)


class Stage:
    """Base of all shard stages."""

    name: ClassVar[str] = ""
    version: ClassVar[str] = "1"
    description: ClassVar[str] = ""
    inputs: ClassVar[tuple[str, ...]] = ()
    outputs: ClassVar[tuple[str, ...]] = ()
    resources: ClassVar[Resources] = Resources()
    uses_llm: ClassVar[bool] = False

    def __init__(self, cfg: RunConfig, runtime: Runtime):
        self.cfg = cfg
        self.runtime = runtime

    # -- contract -----------------------------------------------------------------------
    def config_section(self) -> dict[str, Any]:
        """The config values that change this stage's output (hashed into its markers)."""
        return {}

    def config_hash(self) -> str:
        return stable_hash({"stage": self.name, "version": self.version, "config": self.config_section()})

    def needs_llm(self) -> bool:
        return self.uses_llm

    def setup(self) -> None:
        """Load models; called once per worker before the first shard."""

    def teardown(self) -> None:
        """Release resources; called once per worker at the end."""

    def process(self, table: pa.Table, shard: int) -> StageOutput:
        raise NotImplementedError

    # -- helpers for subclasses -----------------------------------------------------------
    def output_columns(self, table: pa.Table) -> list[str]:
        cols = [c for c in table.column_names if c not in self.outputs and c not in REJECT_COLUMNS]
        return cols + list(self.outputs)

    def check_inputs(self, table: pa.Table) -> None:
        missing = [c for c in self.inputs if c not in table.column_names]
        if missing:
            raise ValueError(f"stage {self.name}: input lacks columns {missing}; has {table.column_names}")

    def build_output(
        self,
        table: pa.Table,
        kept: Sequence[dict[str, Any]],
        rejected: Sequence[dict[str, Any]],
        metrics: dict[str, float] | None = None,
    ) -> StageOutput:
        """Tables from row dicts: kept rows get this stage's columns, rejected rows a reason."""
        in_cols = [c for c in table.column_names if c not in REJECT_COLUMNS]
        for r in rejected:
            r.setdefault("reject_stage", self.name)
            if not r.get("reject_reason"):
                raise ValueError(f"stage {self.name}: rejected row {r.get('dialogue_id')} has no reason")
        rej_rows = [{k: v for k, v in r.items() if k in in_cols or k in REJECT_COLUMNS} for r in rejected]
        return StageOutput(
            kept=table_from_rows(kept, self.output_columns(table)),
            rejected=rejected_table(rej_rows, in_cols),
            metrics=dict(metrics or {}),
        )


def reject(row: dict[str, Any], reason: str, detail: str = "") -> dict[str, Any]:
    """A copy of ``row`` marked as rejected; ``reason`` is a short code, ``detail`` says what was wrong."""
    out = dict(row)
    out["reject_reason"] = reason
    out["reject_detail"] = detail[:2000]
    return out


class Timer:
    def __init__(self) -> None:
        self.t0 = time.perf_counter()

    @property
    def elapsed_s(self) -> float:
        return time.perf_counter() - self.t0
