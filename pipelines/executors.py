"""Executors run (stage, shard) units; the pipeline plans them. Same stages, same files, either way.

- ``LocalExecutor``: in-process, stage by stage (debugging, unit tests).
- ``RayExecutor``: one actor pool per stage with the stage's declared resources; a model is loaded
  once per actor; a shard moves on to the next stage as soon as it is done, so stages overlap.
"""

from __future__ import annotations

import os
from collections import deque
from typing import TYPE_CHECKING, Any

from kespeechchat.config import RunConfig
from kespeechchat.stage import Runtime

if TYPE_CHECKING:
    from pipelines.runner import Pipeline, Unit


class LocalExecutor:
    """Runs every unit in this process; stage-major so each model is loaded once and used for all shards."""

    def __init__(self) -> None:
        self._ready: set[int] = set()

    def run(self, pipe: Pipeline, units: list[Unit], last: int) -> None:
        from pipelines.runner import execute_unit

        pending = list(units)
        while pending:
            pending.sort(key=lambda u: (u.stage_index, u.shard))
            u = pending.pop(0)
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
            if not any(p.stage_index == u.stage_index for p in pending):
                stage.teardown()
                self._ready.discard(u.stage_index)
            nxt = pipe.plan(u.stage_index + 1, u.shard, marker["output_fingerprint"], last)
            if nxt:
                pending.append(nxt)

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
    """Ray actor body: builds one stage, loads its model once, runs units of that stage."""

    def __init__(self, stage_index: int, cfg_json: dict[str, Any], runtime: Runtime):
        from kespeechchat.config import RunConfig
        from kespeechchat.store import RunStore
        from pipelines.runner import make_stages

        stages = make_stages(RunConfig.model_validate(cfg_json), runtime)
        self.stage = stages[stage_index]
        self.stage.setup()
        self.store = RunStore(runtime.run_dir)
        self.input_stage = "ingest" if stage_index == 0 else stages[stage_index - 1].name

    def run(self, shard: int, input_fp: str) -> dict[str, Any]:
        import ray

        from pipelines.runner import execute_unit

        ctx = ray.get_runtime_context()
        worker = {
            "executor": "ray",
            "pid": os.getpid(),
            "node_id": ctx.get_node_id(),
            "gpu_ids": [str(g) for g in ray.get_gpu_ids()],
        }
        try:
            return execute_unit(self.stage, self.store, self.input_stage, shard, input_fp, worker)
        finally:
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

    A unit whose worker dies is given to a fresh actor (up to ``executor.max_unit_retries`` times):
    a unit only becomes visible through its marker, written last, so a half-done unit is simply redone.
    A stage that raises fails the run at once; rerunning resumes from the markers.
    """

    def __init__(self, cfg: RunConfig, address: str | None = None, shutdown_on_close: bool = True):
        self.cfg = cfg
        self.ray = init_ray(cfg, address)
        self._owns_cluster = shutdown_on_close
        self._classes: dict[str, Any] = {}
        self.worker_deaths: list[tuple[str, int, str]] = []

    def _actor_class(self, stage_name: str) -> Any:
        if stage_name not in self._classes:
            cls = type(worker_class_name(stage_name), (_Worker,), {"__module__": __name__})
            self._classes[stage_name] = self.ray.remote(max_restarts=0)(cls)
        return self._classes[stage_name]

    def _actor_options(self, stage) -> dict[str, Any]:
        name = stage.name
        gpus = self.cfg.executor.stage_gpus.get(name, stage.resources.gpus)
        return {
            "num_cpus": stage.resources.cpus,
            "num_gpus": gpus,
            "memory": stage.resources.memory_mb * 1024 * 1024,
        }

    def _check_fits(self, name: str, opts: dict[str, Any]) -> None:
        """Fail fast instead of waiting forever for resources the cluster does not have."""
        total = self.ray.cluster_resources()
        for key, need in (("CPU", opts["num_cpus"]), ("GPU", opts["num_gpus"])):
            if need and total.get(key, 0) < need:
                raise RuntimeError(
                    f"stage {name} needs {need} {key} per actor but the Ray cluster has {total.get(key, 0)}; "
                    f"add nodes with {key}s or lower executor.stage_gpus/{name}"
                )

    def run(self, pipe: Pipeline, units: list[Unit], last: int) -> None:
        from pipelines.runner import RunError

        ray = self.ray
        cfg_json = pipe.cfg.model_dump(mode="json")
        max_retries = self.cfg.executor.max_unit_retries
        queues: dict[int, deque[Unit]] = {}
        idle: dict[int, list[Any]] = {}
        actors: dict[int, list[Any]] = {}
        inflight: dict[Any, tuple[Any, Unit]] = {}
        deaths: dict[tuple[int, int], int] = {}
        recovering: set[int] = set()  # stages whose replacement actor has not finished a unit yet

        def new_actor(i: int) -> Any:
            stage = pipe.stages[i]
            return (
                self._actor_class(stage.name)
                .options(**self._actor_options(stage))
                .remote(i, cfg_json, pipe.runtime)
            )

        def kill_all() -> None:
            for a_list in actors.values():
                for a in a_list:
                    ray.kill(a)
            actors.clear()

        def release_idle_after(i: int) -> None:
            """Free the idle actors of stages after ``i``: a replacement actor for stage ``i`` must not wait
            for resources held by later stages that are themselves waiting for stage ``i`` (deadlock on a
            small cluster). They are started again when work reaches them."""
            for j in [j for j in actors if j > i and not queues.get(j)]:
                free = idle.get(j, [])
                for a in free:
                    ray.kill(a)
                actors[j] = [a for a in actors[j] if not any(a is f for f in free)]
                idle[j] = []
                if not actors[j]:
                    actors.pop(j)
                    idle.pop(j, None)

        def shards_left_for(i: int) -> bool:
            return bool(queues.get(i)) or any(u.stage_index <= i for _, u in inflight.values())

        def start_pool(i: int) -> None:
            stage = pipe.stages[i]
            n = max(1, self.cfg.executor.stage_workers.get(stage.name, 1))
            opts = self._actor_options(stage)
            self._check_fits(stage.name, opts)
            pipe.progress.note(
                f"[{stage.name}] starting {n} actor(s) {opts['num_cpus']} CPU / {opts['num_gpus']} GPU each"
            )
            actors[i] = [new_actor(i) for _ in range(n)]
            idle[i] = list(actors[i])

        def enqueue(u: Unit, front: bool = False) -> None:
            q = queues.setdefault(u.stage_index, deque())
            q.appendleft(u) if front else q.append(u)
            if u.stage_index not in actors:
                start_pool(u.stage_index)

        def dispatch() -> None:
            for i, q in queues.items():
                if q and i not in actors:  # its idle actors were released; start the pool again
                    start_pool(i)
                while q and idle.get(i):
                    u = q.popleft()
                    actor = idle[i].pop()
                    pipe.progress.unit_started(pipe.stages[i].name, u.shard)
                    inflight[actor.run.remote(u.shard, u.input_fingerprint)] = (actor, u)

        for u in units:
            enqueue(u)
        dispatch()
        try:
            while inflight:
                done, _ = ray.wait(list(inflight), num_returns=1)
                ref = done[0]
                actor, u = inflight.pop(ref)
                stage = pipe.stages[u.stage_index]
                try:
                    marker = ray.get(ref)
                except Exception as e:
                    if not _is_worker_death(e):
                        raise RunError(
                            f"stage {stage.name} failed on shard {u.shard}: {_root_cause(e)}"
                        ) from e
                    key = (u.stage_index, u.shard)
                    deaths[key] = deaths.get(key, 0) + 1
                    self.worker_deaths.append((stage.name, u.shard, _root_cause(e)[:200]))
                    if deaths[key] > max_retries:
                        raise RunError(
                            f"stage {stage.name} failed on shard {u.shard}: its worker died {deaths[key]} time(s) "
                            f"(executor.max_unit_retries={max_retries}); last: {_root_cause(e)}"
                        ) from e
                    pipe.progress.warn(
                        f"[{stage.name}] worker died on shard {u.shard} ({type(e).__name__}); "
                        f"retrying on a fresh actor ({deaths[key]}/{max_retries})"
                    )
                    ray.kill(actor)
                    pool = actors[u.stage_index]
                    pool[pool.index(actor)] = replacement = new_actor(u.stage_index)
                    idle[u.stage_index].append(replacement)
                    recovering.add(u.stage_index)
                    enqueue(u, front=True)
                    release_idle_after(min(recovering))
                    dispatch()
                    continue
                idle[u.stage_index].append(actor)
                recovering.discard(u.stage_index)
                pipe.progress.unit_done(stage.name, u.shard, marker)
                nxt = pipe.plan(u.stage_index + 1, u.shard, marker["output_fingerprint"], last)
                if nxt:
                    enqueue(nxt)
                # Free a stage's actors (and their models) once no shard can reach it any more.
                for i in list(actors):
                    if not shards_left_for(i):
                        for a in actors.pop(i):
                            ray.kill(a)
                        idle.pop(i, None)
                if recovering:
                    release_idle_after(min(recovering))
                dispatch()
        finally:
            kill_all()
        left = sum(len(q) for q in queues.values())
        if left:
            raise RunError(f"{left} unit(s) were never dispatched (executor bug); rerun to resume")
        if self.worker_deaths:
            # Nothing is in flight now: what the dead workers were writing can go.
            removed = pipe.store.remove_tmp_files()
            pipe.progress.warn(
                f"{len(self.worker_deaths)} unit(s) redone after their worker died; "
                f"removed {removed} temporary file(s) they left"
            )

    def close(self) -> None:
        if self._owns_cluster and self.ray.is_initialized():
            self.ray.shutdown()


def _root_cause(e: BaseException) -> str:
    cause = getattr(e, "cause", None) or e.__cause__ or e
    return f"{type(cause).__name__}: {cause}".strip()[:2000]


def make_executor(cfg: RunConfig, address: str | None = None) -> RayExecutor:
    return RayExecutor(cfg, address=address)
