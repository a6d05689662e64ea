"""Executors run (stage, shard) units; the pipeline plans them. Same stages, same files, either way.

- ``LocalExecutor``: in-process, stage by stage (debugging, unit tests).
- ``RayExecutor``: one actor pool per stage with the stage's declared resources; a model is loaded
  once per actor; a shard moves on to the next stage as soon as it is done, so stages overlap.
"""

from __future__ import annotations

import heapq
import os
import time
from collections import Counter
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from kespeechchat.config import RunConfig
from kespeechchat.store import RunStore
from pipelines.reaper import Reaper, child_pids
from pipelines.scheduler import BUSY, LOADING, PLACING, Request, Scheduler, Slot
from pipelines.units import RunError, Unit, execute_unit

if TYPE_CHECKING:
    from pipelines.runner import Pipeline


class LocalExecutor:
    """Runs every unit in this process; stage-major so each model is loaded once and used for all shards."""

    def __init__(self) -> None:
        self._ready: set[int] = set()

    def run(self, pipe: Pipeline, units: list[Unit], last: int) -> None:
        # a heap in (stage, shard) order and a count per stage: O(log n) per unit, so a resume of a
        # hundred thousand shards does not re-sort the queue for every unit
        pending = [(u.stage_index, u.shard, k, u) for k, u in enumerate(units)]
        heapq.heapify(pending)
        left = Counter(u.stage_index for u in units)
        pushed = len(pending)
        while pending:
            *_, u = heapq.heappop(pending)
            left[u.stage_index] -= 1
            stage = pipe.stages[u.stage_index]
            if u.stage_index not in self._ready:
                pipe.progress.note(f"[{stage.name}] loading …")
                stage.setup()
                self._ready.add(u.stage_index)
            pipe.progress.unit_started(stage.name, u.shard)
            marker = execute_unit(
                stage,
                pipe.store,
                pipe.input_stage_name(u.stage_index),
                u.shard,
                u.input_fingerprint,
                {"executor": "local", "pid": os.getpid()},
            )
            pipe.progress.unit_done(stage.name, u.shard, marker)
            if not left[u.stage_index]:
                stage.teardown()
                self._ready.discard(u.stage_index)
            nxt = pipe.plan(u.stage_index + 1, u.shard, marker["output_fingerprint"], last)
            if nxt:
                heapq.heappush(pending, (nxt.stage_index, nxt.shard, pushed, nxt))
                left[nxt.stage_index] += 1
                pushed += 1

    def close(self) -> None:
        pass


def ray_env() -> None:
    """Keep a local cluster quiet and on loopback (no usage stats, no token auth prompts)."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("NO_PROXY", "127.0.0.1,localhost")


def init_ray(cfg: RunConfig, address: str | None = None) -> Any:
    """Join ``address`` (a real cluster) or start a local cluster sized by the config."""
    ray_env()
    try:
        import ray
    except ImportError as e:  # pragma: no cover - depends on extras
        raise RuntimeError("the Ray executor needs the 'ray' extra: pip install 'kespeechchat[ray]'") from e
    if ray.is_initialized():
        return ray
    address = address or cfg.executor.address
    runtime_env = {
        "env_vars": {"OMP_WAIT_POLICY": "PASSIVE", "NO_PROXY": "127.0.0.1,localhost", "OMP_NUM_THREADS": "1"}
    }
    if address:
        ray.init(address=address, log_to_driver=False, logging_level="WARNING", runtime_env=runtime_env)
    else:
        # address="local": always a new cluster of our own, never one some `ray start` left running.
        ray.init(
            address="local",
            num_cpus=cfg.executor.num_cpus or os.cpu_count(),
            object_store_memory=cfg.executor.object_store_mb * 1024 * 1024,
            include_dashboard=False,
            log_to_driver=False,
            logging_level="WARNING",
            _node_ip_address="127.0.0.1",
            runtime_env=runtime_env,
        )
    return ray


# A full collection and malloc_trim cost tens of milliseconds in a worker that has loaded Ray, Arrow
# and a model; after a unit that took this long (one that held audio or model outputs) they are noise,
# after a bookkeeping unit of a few milliseconds they would be most of its time.
RELEASE_AFTER_S = 1.0


def release_free_memory() -> None:
    """Hand freed heap pages back to the OS after a unit (glibc keeps them otherwise, and a long-lived
    worker's RSS creeps up shard after shard with fragmentation). A no-op where there is no glibc."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class _Worker:
    """Ray actor body: builds one stage, loads its model once, runs units of that stage.

    ``__init__`` does nothing, so the executor can tell an actor Ray has not placed yet (``where()``
    pending) from one that is loading its model (``setup()`` pending)."""

    def __init__(self, stage_index: int, build_stages: Callable[[], list[Any]], run_dir: str):
        self._index = stage_index
        self._build = build_stages
        self._run_dir = run_dir
        self.stage = None

    def where(self) -> dict[str, Any]:
        import ray

        return {"pid": os.getpid(), "node_id": ray.get_runtime_context().get_node_id()}

    def setup(self) -> None:

        stages = self._build()
        self.stage = stages[self._index]
        self.input_stage = "ingest" if self._index == 0 else stages[self._index - 1].name
        self.store = RunStore(self._run_dir)
        self.stage.setup()

    def run(self, shard: int, input_fp: str) -> dict[str, Any]:
        import ray

        ctx = ray.get_runtime_context()
        worker = {
            "executor": "ray",
            "pid": os.getpid(),
            "node_id": ctx.get_node_id(),
            "gpu_ids": [str(g) for g in ray.get_gpu_ids()],
        }
        t0 = time.perf_counter()
        try:
            return execute_unit(self.stage, self.store, self.input_stage, shard, input_fp, worker)
        finally:
            if time.perf_counter() - t0 >= RELEASE_AFTER_S:
                release_free_memory()


def worker_class_name(stage_name: str) -> str:
    """Actor class per stage, so `ps`, `ray list actors` and the dashboard say which stage a worker runs."""
    return "".join(part.capitalize() for part in stage_name.split("_")) + "Worker"


def _is_worker_death(e: BaseException) -> bool:
    """The process running a unit is gone (SIGKILL, OOM kill, node lost): the unit itself may be fine."""
    from ray import exceptions as rx

    kinds = tuple(
        k
        for k in (
            getattr(rx, "RayActorError", None),
            getattr(rx, "WorkerCrashedError", None),
            getattr(rx, "NodeDiedError", None),
            getattr(rx, "LocalRayletDiedError", None),
        )
        if k is not None
    )
    return isinstance(e, kinds) and not isinstance(e, rx.RayTaskError)


class RayExecutor:
    """Actor pool per stage; units flow shard by shard from one stage's pool to the next.

    Which actors exist at any moment is decided by ``pipelines.scheduler`` (its docstring states the
    rule and why it cannot deadlock). A watchdog stops the run with a diagnosis when work waits and
    nothing has run for ``executor.stall_timeout_s``, or when one unit runs past
    ``executor.unit_timeout_s``. A unit whose worker dies is given to a fresh actor (up to
    ``executor.max_unit_retries`` times): a unit only becomes visible through its marker, written
    last, so a half-done unit is simply redone. A stage that raises fails the run at once; rerunning
    resumes from the markers.
    """

    def __init__(self, cfg: RunConfig, address: str | None = None, shutdown_on_close: bool = True):
        self.cfg = cfg
        self._reaper = None
        if not (address or cfg.executor.address):
            self._reaper = Reaper()
            before = child_pids(os.getpid())
        self.ray = init_ray(cfg, address)
        if self._reaper is not None:
            self._reaper.track(child_pids(os.getpid()) - before - {self._reaper.pid})
        self._owns_cluster = shutdown_on_close
        self._classes: dict[str, Any] = {}
        self.worker_deaths: list[tuple[str, int, str]] = []

    def actor_class(self, stage_name: str) -> Any:
        if stage_name not in self._classes:
            cls = type(worker_class_name(stage_name), (_Worker,), {"__module__": __name__})
            self._classes[stage_name] = self.ray.remote(max_restarts=0)(cls)
        return self._classes[stage_name]

    def actor_options(self, stage) -> dict[str, Any]:
        gpus = self.cfg.executor.stage_gpus.get(stage.name, stage.resources.gpus)
        return {
            "num_cpus": stage.resources.cpus,
            "num_gpus": gpus,
            "memory": stage.resources.memory_mb * 1024 * 1024,
        }

    def check_fits(self, name: str, opts: dict[str, Any], total: dict[str, float] | None = None) -> None:
        """Fail fast instead of waiting forever for resources the cluster does not have."""
        total = self.ray.cluster_resources() if total is None else total
        for key, need in (("CPU", opts["num_cpus"]), ("GPU", opts["num_gpus"]), ("memory", opts["memory"])):
            if need and total.get(key, 0) < need:
                have = total.get(key, 0)
                if key == "memory":
                    need_s, have_s = f"{need / 2**30:.2f} GiB", f"{have / 2**30:.2f} GiB"
                else:
                    need_s, have_s = f"{need:g}", f"{have:g}"
                raise RuntimeError(
                    f"stage {name} needs {need_s} {key} per actor but the Ray cluster has {have_s}; "
                    f"add nodes with {key} or lower executor.stage_gpus/{name}"
                )

    def run(self, pipe: Pipeline, units: list[Unit], last: int) -> None:
        _RayRun(self, pipe, last).run(units)

    def close(self) -> None:
        if self._owns_cluster and self.ray.is_initialized():
            self.ray.shutdown()
        if self._reaper is not None:
            self._reaper.close()
            self._reaper = None


class _RayRun:
    """One ``RayExecutor.run``: the scheduler's decisions turned into Ray calls, results fed back, and
    the watchdog."""

    TICK_S = 1.0  # how often the watchdog looks when nothing finishes
    CAPACITY_EVERY_S = 30.0  # how often the cluster's totals are read again (nodes come and go)

    def __init__(self, ex: RayExecutor, pipe: Pipeline, last: int):
        self.ex, self.pipe, self.last, self.ray = ex, pipe, last, ex.ray
        self.xcfg = ex.cfg.executor
        self.stages = pipe.stages
        self.opts = [ex.actor_options(st) for st in self.stages]
        requests = [Request(o["num_cpus"], o["num_gpus"], o["memory"]) for o in self.opts]
        workers = [self.xcfg.stage_workers.get(st.name, 1) for st in self.stages]
        self.totals = self.ray.cluster_resources()
        server = pipe.llm_server  # its threads do the LLM stages' work
        llm_stages = frozenset(i for i, st in enumerate(self.stages) if st.needs_llm())
        self.sched = Scheduler(
            requests,
            workers,
            Request.of(self.totals),
            reserve=Request(CPU=float(server.n_threads)) if server is not None else None,
            reserve_for=llm_stages if server is not None else frozenset(),
        )
        if self.sched.reserve.CPU > 0:
            pipe.progress.note(
                f"llama.cpp server: {self.sched.reserve.CPU:g} of its {server.n_threads} thread(s) "
                "reserved as CPUs while the LLM stages have work"
            )
        self.build = pipe.stage_builder()
        self.run_dir = str(pipe.runtime.run_dir)
        self.actors: dict[int, Any] = {}  # slot id -> actor handle
        self.refs: dict[Any, tuple[str, Slot]] = {}  # pending call -> (what it is, whose)
        self.deaths: dict[tuple[int, int | None], int] = {}
        self.stalled_since: float | None = None
        self.capacity_read = time.monotonic()

    # -- the loop ---------------------------------------------------------------------------------
    def run(self, units: list[Unit]) -> None:
        for i in range(min(u.stage_index for u in units), self.last + 1):
            self.ex.check_fits(self.stages[i].name, self.opts[i], self.totals)
        for u in units:
            self.sched.submit(u)
        try:
            self.apply(self.sched.decide(time.monotonic()))
            while self.sched.active():
                if self.refs:
                    done, _ = self.ray.wait(list(self.refs), num_returns=1, timeout=self.TICK_S)
                else:
                    done = []
                    time.sleep(self.TICK_S)
                for ref in done:
                    self.on_ready(ref)
                now = time.monotonic()
                self.refresh_capacity(now)
                self.apply(self.sched.decide(now))
                self.watch(now)
        finally:
            for actor in self.actors.values():
                self.ray.kill(actor)
            self.actors.clear()
        if self.ex.worker_deaths:
            # Nothing is in flight now: what the dead workers were writing can go.
            removed = self.pipe.store.remove_tmp_files()
            self.pipe.progress.warn(
                f"{len(self.ex.worker_deaths)} unit(s) redone after their worker died; "
                f"removed {removed} temporary file(s) they left"
            )

    def apply(self, d) -> None:
        for slot in d.release:
            self.drop(slot)
            if slot.id in d.made_room_for:
                self.pipe.progress.note(
                    f"[{self.stages[slot.stage].name}] idle actor released: "
                    f"{self.stages[d.made_room_for[slot.id]].name} needs its resources"
                )
        for slot in d.start:
            st = self.stages[slot.stage]
            actor = (
                self.ex.actor_class(st.name)
                .options(**self.opts[slot.stage])
                .remote(slot.stage, self.build, self.run_dir)
            )
            self.actors[slot.id] = actor
            self.refs[actor.where.remote()] = ("placed", slot)
            self.refs[actor.setup.remote()] = ("loaded", slot)
            self.pipe.progress.note(
                f"[{st.name}] starting an actor ({self.sched.requests[slot.stage].describe()})"
            )
        for slot, u in d.dispatch:
            self.pipe.progress.unit_started(self.stages[u.stage_index].name, u.shard)
            self.refs[self.actors[slot.id].run.remote(u.shard, u.input_fingerprint)] = ("unit", slot)

    def drop(self, slot: Slot) -> None:
        """Kill a slot's actor and forget its pending calls."""
        for ref in [r for r, (_, s) in self.refs.items() if s is slot]:
            del self.refs[ref]
        actor = self.actors.pop(slot.id, None)
        if actor is not None:
            self.ray.kill(actor)

    def on_ready(self, ref: Any) -> None:
        kind, slot = self.refs.pop(ref)
        st = self.stages[slot.stage]
        now = time.monotonic()
        try:
            value = self.ray.get(ref)
        except Exception as e:
            if not _is_worker_death(e):
                if kind == "unit":
                    raise RunError(
                        f"stage {st.name} failed on shard {slot.unit.shard}: {_root_cause(e)}"
                    ) from e
                raise RunError(f"stage {st.name} could not set up its worker: {_root_cause(e)}") from e
            self.on_death(slot, e)
            return
        if kind == "placed":
            slot.info.update(value)
            self.sched.placed(slot, now)
        elif kind == "loaded":
            self.sched.loaded(slot, now)
        else:
            u = self.sched.finished(slot, now)
            self.pipe.progress.unit_done(st.name, u.shard, value)
            nxt = self.pipe.plan(u.stage_index + 1, u.shard, value["output_fingerprint"], self.last)
            if nxt:
                self.sched.submit(nxt)

    def on_death(self, slot: Slot, e: BaseException) -> None:
        st = self.stages[slot.stage]
        unit = slot.unit
        key = (slot.stage, unit.shard if unit else None)
        self.deaths[key] = self.deaths.get(key, 0) + 1
        n, budget = self.deaths[key], self.xcfg.max_unit_retries
        self.drop(slot)
        self.sched.lost(slot)  # its unit goes back to the front of the queue
        if unit is None:
            if n > budget:
                raise RunError(
                    f"stage {st.name}: its worker died {n} time(s) while starting "
                    f"(executor.max_unit_retries={budget}); last: {_root_cause(e)}"
                ) from e
            self.pipe.progress.warn(
                f"[{st.name}] worker died while starting ({type(e).__name__}); starting another"
            )
            return
        self.ex.worker_deaths.append((st.name, unit.shard, _root_cause(e)[:200]))
        if n > budget:
            raise RunError(
                f"stage {st.name} failed on shard {unit.shard}: its worker died {n} time(s) "
                f"(executor.max_unit_retries={budget}); last: {_root_cause(e)}"
            ) from e
        self.pipe.progress.warn(
            f"[{st.name}] worker died on shard {unit.shard} ({type(e).__name__}); "
            f"retrying on a fresh actor ({n}/{budget})"
        )

    def refresh_capacity(self, now: float) -> None:
        if now - self.capacity_read >= self.CAPACITY_EVERY_S:
            self.capacity_read = now
            self.sched.capacity = Request.of(self.ray.cluster_resources())

    # -- the watchdog -----------------------------------------------------------------------------
    def watch(self, now: float) -> None:
        limit = self.xcfg.unit_timeout_s
        for s in self.sched.slots.values():
            if limit and s.state in (BUSY, LOADING) and now - s.since > limit:
                st = self.stages[s.stage]
                what = f"shard {s.unit.shard} has run" if s.state == BUSY else "its worker has been loading"
                raise RunError(
                    f"stage {st.name}: {what} for {now - s.since:.0f} s, past executor.unit_timeout_s={limit:g} "
                    f"(worker pid {s.info.get('pid', '?')} on node {str(s.info.get('node_id', '?'))[:12]}); "
                    f"the run stops here, rerunning resumes from the last finished unit"
                )
        waiting = any(self.sched.waiting.values())
        running = any(s.state in (BUSY, LOADING) for s in self.sched.slots.values())
        if not waiting or running:
            self.stalled_since = None
            return
        self.stalled_since = self.stalled_since or now
        if now - self.stalled_since > self.xcfg.stall_timeout_s:
            raise RunError(self.diagnose(now))

    def diagnose(self, now: float) -> str:
        sched = self.sched
        lines = [
            f"no progress for {now - (self.stalled_since or now):.0f} s (executor.stall_timeout_s="
            f"{self.xcfg.stall_timeout_s:g}): work waits and nothing runs."
        ]
        for i, q in sorted(sched.waiting.items()):
            if not q:
                continue
            name = self.stages[i].name
            mine = sched.stage_slots(i)
            if mine:
                state = "; ".join(
                    f"actor {s.state} for {now - s.since:.0f} s"
                    + (" (Ray has not found room for it)" if s.state == PLACING else "")
                    for s in mine
                )
            else:
                state = f"no actor: the run's budget has {sched.room().describe()} free"
            lines.append(
                f"  {name}: {len(q)} unit(s) waiting; one actor asks {sched.requests[i].describe()}; {state}"
            )
        held = [
            f"{self.stages[s.stage].name} ({s.state}, {sched.requests[s.stage].describe()})"
            for s in sorted(sched.slots.values(), key=lambda s: s.stage)
        ]
        if sched.reserving() and sched.reserve.CPU > 0:
            held.append(f"llama.cpp server ({sched.reserve.describe()} reserved)")
        lines.append("  held by this run: " + (", ".join(held) or "nothing"))
        try:
            free = Request.of(self.ray.available_resources()).describe()
        except Exception:  # pragma: no cover - the cluster itself is going away
            free = "unknown"
        lines.append(f"  cluster: {sched.capacity.describe()} in all; free now according to Ray: {free}")
        lines.append(
            "What is not free and not held by this run is used by something else on the cluster (another "
            "job, actors of a run that was killed). Free it, or lower the stage's requests; rerunning resumes."
        )
        return "\n".join(lines)


def _root_cause(e: BaseException) -> str:
    cause = getattr(e, "cause", None) or e.__cause__ or e
    return f"{type(cause).__name__}: {cause}".strip()[:2000]


def make_executor(cfg: RunConfig, address: str | None = None) -> RayExecutor:
    return RayExecutor(cfg, address=address)
