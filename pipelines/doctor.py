"""``kespeechchat doctor --config C``: is everything a run needs there, before a long run starts?

Each check reads what the run would read, without loading a model's weights: model directories
(files present, dimensions and sample rates where a small file says them), the LLM endpoints
(reachable, serving the configured model, accepting the structured output the stages send), the
voices (a library or pool the TTS backend can speak), Ray's resources against what each stage's
actor asks for, and the storage path (writable, free space, and on a Ray cluster the same files
seen from every node). The result is a table; the exit code is non-zero when anything is missing.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kespeechchat.backends import registry
from kespeechchat.models import is_prepared, llm_gguf_path
from kespeechchat.stage import Runtime
from pipelines.executors import init_ray
from pipelines.runner import make_stages
from pipelines.voices import resolve_voices

if TYPE_CHECKING:
    from kespeechchat.config import RunConfig

MIN_FREE_GB = 5.0


@dataclass
class Check:
    """One line of the report: ``ok`` True (ready), False (missing: the run would fail) or None
    (a warning, or not checked here)."""

    component: str
    item: str
    ok: bool | None
    detail: str


def _module(component: str, module: str, hint: str) -> Check:
    f = registry.module_present(module, hint)
    return Check(component, f.item, f.ok, f.detail)


def _guard(component: str, item: str, fn: Callable[[], list[Check]]) -> list[Check]:
    try:
        return fn()
    except Exception as e:  # a check that cannot run is itself a finding
        return [Check(component, item, False, f"{type(e).__name__}: {e}"[:300])]


# --- models ----------------------------------------------------------------------------------------


def check_backend(cfg: RunConfig, kind: str) -> list[Check]:
    """What the configured adapter of ``kind`` says it needs (``Backend.diagnose`` in its own file)."""
    section = getattr(cfg, kind)
    backend = registry.get(kind, section.backend)
    if backend.diagnose is None:
        return [Check(kind, section.backend, None, "the adapter has no checks")]
    return [Check(f.component or kind, f.item, f.ok, f.detail) for f in backend.diagnose(section)]


# --- LLM --------------------------------------------------------------------------------------------


def _uses_llm(cfg: RunConfig) -> bool:
    return cfg.rewrite.mode == "llm" or cfg.filter.llm_judge or cfg.spoken.mode == "llm"


def check_llm(cfg: RunConfig, *, probe: bool = True, timeout_s: float = 20.0) -> list[Check]:
    if not _uses_llm(cfg):
        return [Check("llm", "text stages", None, "no stage uses the LLM (passthrough / rules)")]
    llm = cfg.llm
    if llm.backend == "llamacpp":
        path = Path(llm.model_path) if llm.model_path else llm_gguf_path(check=False)
        ok = path.is_file() if llm.model_path else is_prepared("llm")
        return [
            Check("llm", "GGUF model", ok, str(path) if ok else f"missing: {path} (run `make models`)"),
            _module("llm", "llama_cpp", "make install (llama-cpp-python[server])"),
        ]
    if not llm.endpoints:
        return [Check("llm", "endpoints", False, "llm.endpoints is empty")]
    if not probe:
        return [Check("llm", ep, None, "not contacted (--no-probe)") for ep in llm.endpoints]
    out = []
    for ep in llm.endpoints:
        out += _guard("llm", f"{ep} reachable", lambda ep=ep: _probe_endpoint(cfg, ep, timeout_s))
    return out


def _probe_endpoint(cfg: RunConfig, endpoint: str, timeout_s: float) -> list[Check]:
    """GET /models, then one tiny chat request with the structured output the stages use."""
    from openai import OpenAI

    llm = cfg.llm
    client = OpenAI(
        base_url=endpoint, api_key=os.environ.get(llm.api_key_env) or "none", timeout=timeout_s, max_retries=0
    )
    models = [m.id for m in client.models.list().data]
    model = models[0] if llm.model == "auto" and models else llm.model
    out = [Check("llm", f"{endpoint} reachable", True, f"serves {', '.join(models[:3]) or 'no models'}")]
    if model not in models:
        return out + [Check("llm", f"{endpoint} model", False, f"{model!r} not among {models}")]
    schema = {
        "type": "object",
        "properties": {"ok": {"type": "boolean"}},
        "required": ["ok"],
        "additionalProperties": False,
    }
    if llm.structured_output == "json_object_schema":
        fmt: dict[str, Any] = {"type": "json_object", "schema": schema}
    else:
        fmt = {"type": "json_schema", "json_schema": {"name": "doctor", "schema": schema, "strict": True}}
    r = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": 'Reply with the JSON object {"ok": true}.'}],
        response_format=fmt,  # type: ignore[arg-type]
        max_tokens=32,
        temperature=0,
    )
    text = r.choices[0].message.content or ""
    try:
        ok = isinstance(json.loads(text), dict) and "ok" in json.loads(text)
    except json.JSONDecodeError:
        ok = False
    return out + [Check("llm", f"{endpoint} structured output", ok, f"{fmt['type']}: {text[:80]!r}")]


# --- voices, resources, storage ----------------------------------------------------------------------


def check_voices(cfg: RunConfig) -> list[Check]:

    voices, meta = resolve_voices(cfg)
    ids = len({v.identity_id for v in voices})
    return [
        Check(
            "voices",
            "library",
            True,
            f"{len(voices)} voices, {ids} identities ({meta.get('source', 'built')})",
        )
    ]


def stage_requests(cfg: RunConfig) -> list[tuple[str, dict[str, float]]]:
    """(stage, resources one actor asks Ray for), as the Ray executor asks (stage_gpus applied)."""

    out = []
    for st in make_stages(cfg, Runtime(run_dir=cfg.run_dir)):
        gpus = cfg.executor.stage_gpus.get(st.name, st.resources.gpus)
        out.append(
            (st.name, {"CPU": st.resources.cpus, "GPU": gpus, "memory": st.resources.memory_mb * 2**20})
        )
    return out


def check_resources(cfg: RunConfig, totals: dict[str, float]) -> list[Check]:
    out = []
    for name, need in stage_requests(cfg):
        short = [k for k, v in need.items() if v and totals.get(k, 0.0) < v]
        want = ", ".join(
            f"{v / 2**30:.1f} GiB {k}" if k == "memory" else f"{v:g} {k}" for k, v in need.items() if v
        )
        have = ", ".join(
            f"{totals.get(k, 0) / 2**30:.1f} GiB" if k == "memory" else f"{totals.get(k, 0):g} {k}"
            for k in short
        )
        out.append(
            Check(
                "resources",
                name,
                not short,
                f"one actor: {want}" + (f"; cluster has {have}" if short else ""),
            )
        )
    return out


def check_storage(cfg: RunConfig, ray: Any | None = None) -> list[Check]:
    root = Path(cfg.runs_dir).resolve()
    if not root.is_dir():
        if not root.parent.is_dir():
            return [
                Check(
                    "storage",
                    "runs_dir",
                    False,
                    f"{root}: neither it nor its parent exists (mount the shared storage)",
                )
            ]
        root.mkdir()
    marker = root / f".doctor-{uuid.uuid4().hex[:12]}"
    token = uuid.uuid4().hex
    marker.write_text(token, encoding="utf-8")
    try:
        free = shutil.disk_usage(root).free / 2**30
        out = [
            Check("storage", "runs_dir writable", True, str(root)),
            Check(
                "storage",
                "free space",
                free >= MIN_FREE_GB or None,
                f"{free:.1f} GiB free (want ≥ {MIN_FREE_GB:g})",
            ),
        ]
        if ray is not None:
            out += _same_on_every_node(ray, marker, token)
        return out
    finally:
        marker.unlink(missing_ok=True)


def _same_on_every_node(ray: Any, marker: Path, token: str) -> list[Check]:
    """One task pinned to each alive node reads the marker the driver wrote."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    @ray.remote(num_cpus=0)
    def read(path: str) -> str:
        try:
            return Path(path).read_text(encoding="utf-8")
        except OSError as e:
            return f"error: {e}"

    nodes = [n for n in ray.nodes() if n.get("Alive")]
    refs = [
        read.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)).remote(
            str(marker)
        )
        for n in nodes
    ]
    out = []
    for n, got in zip(nodes, ray.get(refs, timeout=60), strict=True):
        ok = got == token
        where = n.get("NodeManagerAddress", n["NodeID"][:8])
        out.append(
            Check(
                "storage", f"same path on node {where}", ok, "reads the driver's files" if ok else got[:200]
            )
        )
    return out


# --- all ----------------------------------------------------------------------------------------------


def run_checks(cfg: RunConfig, *, probe: bool = True) -> list[Check]:
    """Every check of the config. ``probe``: contact LLM endpoints and Ray (else files only)."""
    checks: list[Check] = []
    for kind in ("tts", "asr", "speaker", "quality"):
        checks += _guard(kind, "model", lambda kind=kind: check_backend(cfg, kind))
    checks += _guard("voices", "library", lambda: check_voices(cfg))
    checks += check_llm(cfg, probe=probe)
    ray = None
    if cfg.executor.kind == "ray" and probe:
        try:
            ray = init_ray(cfg)
            totals = dict(ray.cluster_resources())
            checks.append(
                Check(
                    "ray",
                    "cluster",
                    True,
                    f"{len(ray.nodes())} node(s), {totals.get('CPU', 0):g} CPU, {totals.get('GPU', 0):g} GPU",
                )
            )
        except Exception as e:
            checks.append(Check("ray", "cluster", False, f"{type(e).__name__}: {e}"[:300]))
    if ray is not None:
        checks += _guard("resources", "stages", lambda: check_resources(cfg, totals))
    else:
        local = {
            "CPU": float(cfg.executor.num_cpus or os.cpu_count() or 1),
            "GPU": _local_gpus(),
            "memory": _local_memory(),
        }
        checks += _guard("resources", "stages", lambda: check_resources(cfg, local))
    checks += _guard("storage", "runs_dir", lambda: check_storage(cfg, ray))
    if ray is not None and not cfg.executor.address:
        ray.shutdown()
    return checks


def _local_gpus() -> float:
    try:
        import torch

        return float(torch.cuda.device_count()) if torch.cuda.is_available() else 0.0
    except ImportError:
        return 0.0


def _local_memory() -> float:
    return float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


def format_checks(checks: list[Check]) -> str:
    mark = {True: "ready", False: "MISSING", None: "note"}
    w1 = max(len(c.component) for c in checks)
    w2 = min(48, max(len(c.item) for c in checks))
    lines = [f"{'component':<{w1}}  {'check':<{w2}}  {'status':<7}  detail"]
    lines += [f"{c.component:<{w1}}  {c.item[:w2]:<{w2}}  {mark[c.ok]:<7}  {c.detail}" for c in checks]
    bad = sum(1 for c in checks if c.ok is False)
    lines.append(
        f"{len(checks)} checks: {sum(1 for c in checks if c.ok)} ready, {bad} missing, "
        f"{sum(1 for c in checks if c.ok is None)} notes"
    )
    return "\n".join(lines)
