"""The run: ingest, the shard stages through an executor, package; markers decide what to skip.

A (stage, shard) unit is skipped only when its marker matches the stage version, the hash of the
stage's config and the fingerprint of its input (the upstream unit's output). ``--rerun S``
deletes the markers of S and everything after it; ``--only S`` runs S alone on existing inputs.
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from kespeechchat.config import RunConfig
from kespeechchat.llm.server import ManagedLlamaServer
from kespeechchat.models import llm_gguf_path
from kespeechchat.progress import Progress
from kespeechchat.stage import Runtime, Stage
from kespeechchat.store import RunStore, write_bytes_atomic
from pipelines.executors import LocalExecutor, make_executor
from pipelines.ingest import run_ingest
from pipelines.package import run_package
from pipelines.report import run_summary
from pipelines.stages import STAGE_NAMES
from pipelines.units import RunError, Unit, build_stages, make_stages
from pipelines.voices import prepare_run_library


@dataclass
class RunResult:
    run_dir: Path
    dataset_dir: Path | None
    summary: dict[str, Any] = field(default_factory=dict)


class Pipeline:
    """Plans units from markers and drives an executor; the executor only runs units."""

    def __init__(self, cfg: RunConfig, *, quiet: bool = False):
        self.cfg = cfg
        self.store = RunStore(cfg.run_dir)
        self.runtime = Runtime(run_dir=self.store.root.resolve())
        self.stages = make_stages(cfg, self.runtime)
        self.progress = Progress(quiet=quiet)
        self._llm_server = None

    def stage_builder(self) -> Callable[[], list[Stage]]:
        """What a worker process calls to build the same stages (picklable)."""
        return functools.partial(build_stages, self.cfg.model_dump(mode="json"), self.runtime)

    # -- planning ---------------------------------------------------------------------------
    def input_stage_name(self, i: int) -> str:
        return "ingest" if i == 0 else self.stages[i - 1].name

    def marker_valid(self, i: int, shard: int, input_fp: str) -> dict[str, Any] | None:
        st = self.stages[i]
        m = self.store.read_marker(st.name, shard)
        if (
            m
            and m.get("stage_version") == st.version
            and m.get("config_hash") == self._hashes[i]
            and m.get("input_fingerprint") == input_fp
            and self.store.data_path(st.name, shard).exists()
        ):
            return m
        return None

    def plan(self, i: int, shard: int, input_fp: str, last: int) -> Unit | None:
        """First unit of ``shard`` from stage ``i`` to ``last`` that needs work (skipping valid markers)."""
        while i <= last:
            m = self.marker_valid(i, shard, input_fp)
            if m is None:
                return Unit(i, shard, input_fp)
            self.progress.unit_skipped(self.stages[i].name, shard, m)
            input_fp = m["output_fingerprint"]
            i += 1
        return None

    # -- whole-run steps ----------------------------------------------------------------------
    def save_config(self) -> None:
        data = self.cfg.model_dump(mode="json")
        write_bytes_atomic(
            self.store.config_path,
            yaml.safe_dump(data, sort_keys=False, allow_unicode=True).encode(),
        )

    def ingest(self) -> dict[str, str]:
        """Read sources into fixed shards; returns shard -> output fingerprint."""

        return run_ingest(self.cfg, self.store, self.progress)

    def package(self) -> Path:

        return run_package(self.cfg, self.store, self.progress)

    # -- LLM server ---------------------------------------------------------------------------
    @property
    def llm_server(self) -> ManagedLlamaServer | None:
        """The llama.cpp server this run started and stops (None with configured endpoints)."""
        return self._llm_server

    def ensure_llm(self) -> None:
        """Start the managed llama.cpp server (embedded profile) or resolve the configured endpoints."""
        if self.runtime.llm_endpoints:
            return
        llm = self.cfg.llm
        if llm.backend == "llamacpp":
            model = Path(llm.model_path) if llm.model_path else llm_gguf_path()
            server = ManagedLlamaServer(
                model,
                n_ctx=llm.n_ctx,
                n_threads=llm.n_threads,
                log_path=self.store.root / "logs" / "llama-server.log",
                start_timeout_s=llm.server_start_timeout_s,
                slots=llm.concurrency,
                engine=llm.server_engine,
            )
            self.progress.note(
                f"starting llama.cpp server ({server.engine}, {server.slots} slot(s)) for {model.name} on 127.0.0.1 …"
            )
            server.start()
            self._llm_server = server
            self.runtime.llm_endpoints = [server.base_url]
            self.runtime.llm_api_key = server.api_key
            self.runtime.llm_model = server.model_name
            self.runtime.llm_structured_output = (
                "json_object_schema" if llm.structured_output == "auto" else llm.structured_output
            )
        else:
            if not llm.endpoints:
                raise RunError("llm.backend is 'openai' but llm.endpoints is empty")
            self.runtime.llm_endpoints = list(llm.endpoints)
            self.runtime.llm_api_key = os.environ.get(llm.api_key_env, "EMPTY")
            self.runtime.llm_model = llm.model
            self.runtime.llm_structured_output = (
                "json_schema" if llm.structured_output == "auto" else llm.structured_output
            )

    def stop_llm(self) -> None:
        if self._llm_server is not None:
            self._llm_server.stop()
            self._llm_server = None

    # -- the run --------------------------------------------------------------------------------
    def run(self, *, only: str | None = None, rerun: str | None = None, executor=None) -> RunResult:

        if only is not None and only not in STAGE_NAMES:
            raise RunError(f"unknown stage {only!r}; stages: {', '.join(STAGE_NAMES)}")
        if rerun is not None and rerun not in STAGE_NAMES:
            raise RunError(f"unknown stage {rerun!r}; stages: {', '.join(STAGE_NAMES)}")
        self.store.root.mkdir(parents=True, exist_ok=True)
        removed = self.store.remove_tmp_files()
        if removed:
            self.progress.note(f"removed {removed} temporary file(s) left by an interrupted run")
        self.save_config()
        if rerun is not None:
            for name in STAGE_NAMES[STAGE_NAMES.index(rerun) :]:
                self.store.clear_markers(name)
            self.progress.note(f"rerun: markers of {rerun} and later stages cleared")
        t0 = time.perf_counter()
        try:
            if only in (None, "ingest"):
                shard_fps = self.ingest()
            else:
                shard_fps = self._ingest_fingerprints()
            if only == "ingest":
                return RunResult(self.store.root, None, self.summary(time.perf_counter() - t0))
            prepare_run_library(self.cfg, self.store.root)
            self._hashes = [st.config_hash() for st in self.stages]
            if only != "package":
                self._run_shards(shard_fps, only, executor)
            dataset = None
            if only in (None, "package"):
                dataset = self.package()
            summary = self.summary(time.perf_counter() - t0)
            return RunResult(self.store.root, dataset, summary)
        finally:
            if executor is not None:
                executor.close()
            self.stop_llm()

    def _ingest_fingerprints(self) -> dict[str, str]:
        m = self.store.read_marker("ingest", None)
        if not m:
            raise RunError(f"{self.store.root}: ingest has not run; run without --only first")
        return m["shard_fingerprints"]

    def _run_shards(self, shard_fps: dict[str, str], only: str | None, executor) -> None:

        names = [s.name for s in self.stages]
        first, last = 0, len(self.stages) - 1
        if only is not None:
            first = last = names.index(only)
        self.progress.start_shards(len(shard_fps), [s.name for s in self.stages[first : last + 1]])
        units: list[Unit] = []
        for shard_key, fp in sorted(shard_fps.items(), key=lambda kv: int(kv[0])):
            shard = int(shard_key)
            input_fp = fp
            if first > 0:
                m = self.store.read_marker(names[first - 1], shard)
                if not m or not self.store.data_path(names[first - 1], shard).exists():
                    raise RunError(f"--only {only}: stage {names[first - 1]} has not finished shard {shard}")
                input_fp = m["output_fingerprint"]
            u = self.plan(first, shard, input_fp, last)
            if u:
                units.append(u)
        if not units:
            return
        if any(st.needs_llm() for st in self.stages[min(u.stage_index for u in units) : last + 1]):
            self.ensure_llm()
        if executor is not None:
            executor.run(self, units, last)
            return
        executor = make_executor(self.cfg) if self.cfg.executor.kind == "ray" else LocalExecutor()
        try:
            executor.run(self, units, last)
        finally:
            executor.close()

    # -- reports ----------------------------------------------------------------------------------
    def summary(self, wall_s: float) -> dict[str, Any]:

        s = run_summary(self.store.root)
        s["wall_s"] = round(wall_s, 1)
        self.progress.summary(s)
        return s
