"""The stages of the flow, in order. Ingest and package are whole-run steps; the rest run per shard."""

from __future__ import annotations

from pipelines.stages.assign import AssignStage
from pipelines.stages.filter import FilterStage
from pipelines.stages.repair import RepairStage
from pipelines.stages.rewrite import RewriteStage
from pipelines.stages.select import SelectStage
from pipelines.stages.spoken import SpokenStage
from pipelines.stages.synthesize import SynthesizeStage
from pipelines.stages.verify import VerifyStage

SHARD_STAGES = (
    RewriteStage,
    FilterStage,
    SpokenStage,
    AssignStage,
    SynthesizeStage,
    VerifyStage,
    RepairStage,
    SelectStage,
)
STAGE_NAMES = ("ingest",) + tuple(s.name for s in SHARD_STAGES) + ("package",)

__all__ = ["SHARD_STAGES", "STAGE_NAMES"]
