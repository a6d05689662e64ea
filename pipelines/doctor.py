"""``kespeechchat doctor --config C``: is everything a run needs there, before a long run starts?

Each check reads what the run would read, without loading a model's weights: model directories
(files present, dimensions and sample rates where a small file says them), the LLM endpoints
(reachable, serving the configured model, accepting the structured output the stages send), the
voices (a library or pool the TTS backend can speak), Ray's resources against what each stage's
actor asks for, and the storage path (writable, free space, and on a Ray cluster the same files
seen from every node). The result is a table; the exit code is non-zero when anything is missing.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kespeechchat.backends.speaker import CAMPlusEncoder
from kespeechchat.models import is_prepared, kokoro_dir, llm_gguf_path, whisper_dir
from kespeechchat.stage import Runtime
from pipelines.executors import init_ray
from pipelines.runner import make_stages
from pipelines.voices import resolve_voices

if TYPE_CHECKING:
    from kespeechchat.config import RunConfig

MIN_FREE_GB = 5.0
# what CosyVoice 2's loader reads from its model directory (alternatives in a tuple)
COSYVOICE_FILES: list[str | tuple[str, ...]] = [
    "cosyvoice2.yaml",
    "llm.pt",
    "flow.pt",
    ("hift.pt", "hifigan.pt"),
    "campplus.onnx",
    ("speech_tokenizer_v2.onnx", "speech_tokenizer_v1.onnx"),
]


@dataclass
class Check:
    """One line of the report: ``ok`` True (ready), False (missing: the run would fail) or None
    (a warning, or not checked here)."""

    component: str
    item: str
    ok: bool | None
    detail: str


def _files(component: str, root: str | Path | None, names: list[str | tuple[str, ...]]) -> list[Check]:
    """Each name (or any of a tuple of alternatives) present under ``root``."""
    if not root:
        return [Check(component, "model directory", False, "not set in the config")]
    d = Path(root)
    if not d.exists():
        return [Check(component, "model directory", False, f"{d} does not exist")]
    out = [Check(component, "model directory", True, str(d))]
    for n in names:
        alts = (n,) if isinstance(n, str) else n
        found = next((a for a in alts if (d / a).exists()), None)
        out.append(
            Check(component, " or ".join(alts), found is not None, "present" if found else f"missing in {d}")
        )
    return out


def _module(component: str, module: str, hint: str) -> Check:
    try:
        ok = importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # the parent package is missing
        ok = False
    return Check(component, f"python package {module}", ok, "importable" if ok else f"not installed: {hint}")


def _guard(component: str, item: str, fn: Callable[[], list[Check]]) -> list[Check]:
    try:
        return fn()
    except Exception as e:  # a check that cannot run is itself a finding
        return [Check(component, item, False, f"{type(e).__name__}: {e}"[:300])]


# --- models ----------------------------------------------------------------------------------------


def check_tts(cfg: RunConfig) -> list[Check]:
    t = cfg.tts
    if t.backend == "kokoro":
        ok = is_prepared("kokoro")
        return [
            Check("tts", "kokoro (embedded)", ok, str(kokoro_dir(check=False)) if ok else "run `make models`")
        ]
    out = _files("tts", t.model_dir, COSYVOICE_FILES)
    if t.model_dir and (Path(t.model_dir) / "campplus.onnx").is_file():
        out += _guard("tts", "campplus.onnx", lambda: _campplus(str(t.model_dir)))
    src = t.source_dir or os.environ.get("COSYVOICE_ROOT")
    if src and (Path(src) / "cosyvoice" / "cli" / "cosyvoice.py").is_file():
        out.append(Check("tts", "CosyVoice source", True, src))
    elif importlib.util.find_spec("cosyvoice") is not None:
        out.append(Check("tts", "CosyVoice source", True, "importable"))
    else:
        out.append(
            Check(
                "tts", "CosyVoice source", False, "tts.source_dir (or $COSYVOICE_ROOT): a CosyVoice checkout"
            )
        )
    if t.sample_rate_hz != 24000:
        out.append(
            Check(
                "tts", "sample rate", False, f"tts.sample_rate_hz {t.sample_rate_hz}; CosyVoice 2 makes 24000"
            )
        )
    return out


def _campplus(path: str) -> list[Check]:

    enc = CAMPlusEncoder(path)
    enc.setup()  # checks input (B, T, 80) and a 192-d output
    return [Check("speaker", "CAM++ signature", True, f"{enc.onnx_path().name}: (batch, frames, 80) -> 192")]


def check_asr(cfg: RunConfig) -> list[Check]:
    a = cfg.asr
    whisper = ["model.bin", "config.json", ("tokenizer.json", "vocabulary.txt", "vocabulary.json")]
    if a.backend == "faster_whisper":
        if not a.model_dir:
            ok = is_prepared("whisper")
            return [
                Check(
                    "asr",
                    "whisper base (embedded)",
                    ok,
                    str(whisper_dir(check=False)) if ok else "run `make models`",
                )
            ]
        return _files("asr", a.model_dir, whisper)
    out = _files("asr", a.model_dir, ["config.yaml", "model.pt", ("tokens.json", "tokens.txt")])
    out.append(_module("asr", "funasr", "pip install 'kespeechchat[gpu]'"))
    out += (
        _files("asr (en)", a.en_model_dir, whisper)
        if a.en_model_dir
        else [
            Check(
                "asr (en)",
                "en_model_dir",
                False,
                "funasr reads only Chinese; set asr.en_model_dir to a Whisper directory",
            )
        ]
    )
    out += _cuda("asr", a.device or "cuda")
    return out


def _cuda(component: str, device: str) -> list[Check]:
    if not device.startswith("cuda"):
        return []
    import torch

    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return [
        Check(
            component,
            f"device {device}",
            n > 0,
            f"{n} CUDA device(s) on this machine" if n else "no CUDA device here",
        )
    ]


def check_speaker(cfg: RunConfig) -> list[Check]:
    s = cfg.speaker
    if s.backend == "resemblyzer":
        return [_module("speaker", "resemblyzer", "pip install 'kespeechchat[embedded]'")]
    if s.backend == "campplus":
        if not s.model_dir:
            return [
                Check(
                    "speaker",
                    "model_dir",
                    False,
                    "speaker.model_dir: campplus.onnx or the CosyVoice directory",
                )
            ]
        return _guard("speaker", "campplus.onnx", lambda: _campplus(str(s.model_dir)))
    p = Path(s.model_dir or "")
    ckpt = p if p.is_file() else p / "pytorch_model.bin"
    out = [
        Check(
            "speaker",
            "pyannote checkpoint",
            ckpt.is_file(),
            str(ckpt) if ckpt.is_file() else f"missing: {ckpt}",
        )
    ]
    out.append(_module("speaker", "pyannote.audio", "pip install 'kespeechchat[gpu]'"))
    return out + _cuda("speaker", s.device or "cuda")


def check_quality(cfg: RunConfig) -> list[Check]:
    if cfg.quality.backend == "none":
        return []
    return [_module("quality", "speechmos", "make install (speechmos is installed with --no-deps)")]


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
    for name, item, fn in (
        ("tts", "model", check_tts),
        ("asr", "model", check_asr),
        ("speaker", "model", check_speaker),
        ("quality", "model", check_quality),
        ("voices", "library", check_voices),
    ):
        checks += _guard(name, item, lambda fn=fn: fn(cfg))
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
