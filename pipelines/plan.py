"""What a big run will cost, from measured figures only.

``kespeechchat plan --config C --hours H`` works out, per stage, how much work a target of H accepted
audio hours (or N accepted dialogues) means, how fast each stage does that work on its device, and
what that comes to in GPU-hours and core-hours and in days on a given cluster.

Two kinds of numbers go in, and every one of them carries its source:

* the **shape of the work**: how many dialogues each stage keeps, how many output tokens an LLM
  stage writes per dialogue, how many audio seconds are synthesised (retries and repairs included)
  and scored per dialogue, and how long an accepted dialogue is. They come from a real run
  (``--from-run RUN``) or from a reference run recorded in the figures file;
* the **throughput** of each stage on its device (work per device-second): from the run's own
  markers, or from the figures file (bench results with their dates and machines, or published
  figures with their address).

A figure the planner cannot source is refused with a message that names it and says how to give
it (``--assume``); it is never guessed.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from kespeechchat.config import RunConfig
from kespeechchat.stage import Runtime
from kespeechchat.store import RunStore
from pipelines.units import make_stages

DEFAULT_FIGURES = Path(__file__).resolve().parents[1] / "configs" / "throughputs.yaml"

# What a stage's work is counted in, and the metric of a unit's stats that holds it.
WORK = {
    "rewrite": ("output tokens", "tokens_out"),
    "filter": ("output tokens", "tokens_out"),
    "spoken": ("output tokens", "tokens_out"),
    "assign": ("dialogues", None),
    "synthesize": ("audio s", "audio_s"),
    "verify": ("audio s", "audio_s"),
    "repair": ("audio s", "resynthesised_audio_s"),
    "select": ("dialogues", None),
}


class PlanError(ValueError):
    """A figure the plan needs has no source."""


@dataclass
class Figure:
    value: float
    source: str


@dataclass
class StagePlan:
    stage: str
    device: str  # "gpu" | "cpu"
    backend: str
    unit: str
    dialogues_in: float
    work: float
    rate: Figure  # work per device-second
    pass_rate: Figure
    work_per_dialogue: Figure

    @property
    def device_hours(self) -> float:
        return self.work / self.rate.value / 3600.0 if self.work else 0.0


@dataclass
class Plan:
    target: str
    stages: list[StagePlan]
    audio_s_per_dialogue: Figure
    accepted_dialogues: float
    input_dialogues: float
    gpus: int
    cpus: int
    assumptions: list[str] = field(default_factory=list)

    def hours(self, device: str) -> float:
        return sum(s.device_hours for s in self.stages if s.device == device)

    @property
    def days(self) -> float:
        return max(self.hours("gpu") / max(self.gpus, 1), self.hours("cpu") / max(self.cpus, 1)) / 24.0

    @property
    def bounding(self) -> StagePlan:
        pool = (
            "gpu" if self.hours("gpu") / max(self.gpus, 1) >= self.hours("cpu") / max(self.cpus, 1) else "cpu"
        )
        return max((s for s in self.stages if s.device == pool), key=lambda s: s.device_hours)


# --------------------------------------------------------------------------- the figures file


def load_figures(path: str | Path = DEFAULT_FIGURES) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"figures file {p} not found")
    data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    for i, f in enumerate(data.get("throughputs", [])):
        missing = {"stage", "backend", "device", "value", "source", "date", "machine"} - set(f)
        if missing:
            raise ValueError(f"{p}: throughputs[{i}] lacks {sorted(missing)}")
    for name, shape in (data.get("shapes") or {}).items():
        if not {"source", "date", "machine"} <= set(shape):
            raise ValueError(f"{p}: shape {name!r} lacks source, date or machine")
    return data


def _describe(entry: dict[str, Any]) -> str:
    kind = entry.get("kind", "measured")
    return f"{kind}: {entry['source']} ({entry['date']}, {entry['machine']})"


def table_rate(figures: dict[str, Any], stage: str, backend: str, device: str, model: str) -> Figure | None:
    """The figures file's throughput for (stage, backend, device), the most specific model match first."""
    best = None
    for f in figures.get("throughputs", []):
        stages = f["stage"] if isinstance(f["stage"], list) else [f["stage"]]
        if stage not in stages or f["backend"] != backend or f["device"] != device:
            continue
        pattern = str(f.get("model", "")).lower()
        if pattern and pattern not in model.lower():
            continue
        if best is None or len(pattern) > len(str(best.get("model", ""))):
            best = f
    return None if best is None else Figure(float(best["value"]), _describe(best))


# --------------------------------------------------------------------------- stages of a config


def stage_device(cfg: RunConfig, stage: Any) -> tuple[str, str, str]:
    """(device, backend, model) of a stage under ``cfg``."""
    name = stage.name
    if stage.needs_llm():
        device = "cpu" if cfg.llm.backend == "llamacpp" else "gpu"
        return device, cfg.llm.backend, str(cfg.llm.model_path or cfg.llm.model)
    gpus = cfg.executor.stage_gpus.get(name, stage.resources.gpus)
    device = "gpu" if gpus else "cpu"
    if name in ("synthesize", "repair"):
        return device, cfg.tts.backend, ""
    if name == "verify":
        return device, cfg.asr.backend, ""
    return device, "-", ""


def _active_stages(cfg: RunConfig) -> list[Any]:
    return make_stages(cfg, Runtime(run_dir=Path(".")))


# --------------------------------------------------------------------------- a run's measurements


def _interval(marker: dict[str, Any]) -> tuple[float, float] | None:
    """(start, end) of a unit from its marker; None for a marker without a finish time."""
    if "finished_at" not in marker:
        return None
    end = datetime.strptime(marker["finished_at"], "%Y-%m-%dT%H:%M:%S%z").timestamp()
    return end - float(marker["duration_s"]), end


def shared_seconds(intervals: dict[str, list[tuple[float, float]]]) -> dict[str, float]:
    """Seconds of one shared resource per stage: at each moment it is split evenly between the
    stages that had a unit running (a stage's own overlapping units count once)."""
    events = sorted({t for ivs in intervals.values() for iv in ivs for t in iv})
    out = dict.fromkeys(intervals, 0.0)
    for a, b in zip(events, events[1:], strict=False):
        busy = [k for k, ivs in intervals.items() if any(s <= a and b <= e for s, e in ivs)]
        for k in busy:
            out[k] += (b - a) / len(busy)
    return out


def run_measurements(cfg: RunConfig, run_dir: str | Path) -> dict[str, dict[str, float]]:
    """Per stage: dialogues in and out, work done (in the stage's unit) and busy seconds summed over
    units; for the LLM stages also their share of the one server they used (``server_s``). Each
    marker is read once."""
    store = RunStore(run_dir)
    out: dict[str, dict[str, float]] = {}
    llm_intervals: dict[str, list[tuple[float, float]]] = {}
    for st in _active_stages(cfg):
        stage = st.name
        metric = WORK.get(stage, ("", None))[1] if _stage_work_unit(st) != "dialogues" else None
        row = {"rows_in": 0.0, "rows_out": 0.0, "work": 0.0, "busy_s": 0.0, "units": 0.0}
        intervals = []
        for shard in store.shards():
            m = store.read_marker(stage, shard)
            if not m:
                continue
            row["units"] += 1
            row["rows_in"] += m["rows_in"]
            row["rows_out"] += m["rows_out"]
            row["busy_s"] += float(m.get("duration_s", 0.0))
            row["work"] += float((m.get("metrics") or {}).get(metric, 0.0)) if metric else m["rows_in"]
            iv = _interval(m)
            if iv is not None:
                intervals.append(iv)
        if row["units"]:
            out[stage] = row
            if st.needs_llm():
                llm_intervals[stage] = intervals
    for stage, secs in shared_seconds(llm_intervals).items():  # the LLM stages share one server
        out[stage]["server_s"] = secs
    return out


def accepted_audio_per_dialogue(run_dir: str | Path) -> tuple[float, int]:
    """Mean audio seconds of an accepted dialogue, and how many were accepted."""
    store = RunStore(run_dir)
    total, n = 0.0, 0
    for shard in store.shards():
        if store.data_path("select", shard).is_file():
            t = store.read_table("select", shard, rehydrate=False)
            if "durations_s" in t.column_names:
                for durs in t.column("durations_s").to_pylist():
                    total += sum(durs)
                    n += 1
    return (total / n if n else 0.0), n


def run_rate(cfg: RunConfig, stage: Any, m: dict[str, float], run_name: str) -> Figure | None:
    """Work per device-second from a run's markers: LLM stages over the server's threads while any
    unit was busy; other stages over the cores (or GPUs) each unit reserved while it ran."""
    if not m.get("work") or not m.get("busy_s"):
        return None
    device, _, _ = stage_device(cfg, stage)
    if stage.needs_llm():
        threads = cfg.llm.n_threads or os.cpu_count() or 1
        if cfg.llm.backend != "llamacpp":
            return None  # a remote endpoint's devices are not the run's: use the figures file
        busy = m["server_s"]
        secs = busy * threads
        how = f"{busy:.4g} s of the shared server x {threads} thread(s)"
    else:
        per_unit = (
            cfg.executor.stage_gpus.get(stage.name, stage.resources.gpus)
            if device == "gpu"
            else max(stage.resources.cpus, 1.0)
        )
        secs = m["busy_s"] * per_unit
        how = f"{m['busy_s']:.4g} unit-s x {per_unit:g} {device}(s)"
    return Figure(
        m["work"] / secs, f"run {run_name}, {stage.name}: {m['work']:.4g} {_stage_work_unit(stage)} in {how}"
    )


# --------------------------------------------------------------------------- the plan


@dataclass
class Shape:
    """Per stage: share of dialogues kept and work per dialogue in; audio of an accepted dialogue."""

    pass_rates: dict[str, Figure]
    work_per_dialogue: dict[str, Figure]
    audio_s_per_dialogue: Figure | None


def shape_from_run(cfg: RunConfig, run_dir: str | Path, measured: dict[str, dict[str, float]]) -> Shape:
    name = Path(run_dir).name
    units = {st.name: _stage_work_unit(st) for st in _active_stages(cfg)}
    passes, works = {}, {}
    for stage, m in measured.items():
        if m["rows_in"]:
            passes[stage] = Figure(
                m["rows_out"] / m["rows_in"], f"run {name}: dialogues in and kept per stage"
            )
            works[stage] = Figure(
                m["work"] / m["rows_in"],
                f"run {name}: work done per stage ({units[stage]}) over dialogues in",
            )
    audio, n = accepted_audio_per_dialogue(run_dir)
    per = Figure(audio, f"run {name}: mean of {n} accepted dialogue(s)") if n else None
    return Shape(passes, works, per)


def shape_from_figures(figures: dict[str, Any], name: str | None) -> Shape:
    shapes = figures.get("shapes") or {}
    if not shapes:
        raise PlanError("the figures file holds no reference shape: pass --from-run RUN")
    name = name or next(iter(shapes))
    if name not in shapes:
        raise PlanError(f"no shape {name!r} in the figures file (it has {', '.join(shapes)})")
    s = shapes[name]
    src = f"shape {name}: {s['source']} ({s['date']}, {s['machine']})"
    per = s.get("audio_s_per_dialogue")
    return Shape(
        {k: Figure(float(v), src) for k, v in (s.get("pass_rates") or {}).items()},
        {k: Figure(float(v), src) for k, v in (s.get("work_per_dialogue") or {}).items()},
        Figure(float(per), src) if per is not None else None,
    )


def parse_assumptions(items: list[str]) -> dict[str, float]:
    """``--assume rate.synthesize=4.5`` (also ``pass.STAGE``, ``work.STAGE``, ``audio_s_per_dialogue``)."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        kind = key.split(".", 1)[0]
        if not sep or (kind not in ("rate", "pass", "work") and key != "audio_s_per_dialogue"):
            raise ValueError(
                f"--assume {item!r}: expected rate.STAGE=, pass.STAGE=, work.STAGE= or audio_s_per_dialogue="
            )
        try:
            out[key] = float(value)
        except ValueError:
            raise ValueError(f"--assume {item!r}: {value!r} is not a number") from None
        if out[key] < 0 or (kind in ("rate",) and out[key] == 0):
            raise ValueError(f"--assume {item!r}: must be positive")
    return out


def _pick(assumed: dict[str, float], key: str, *candidates: Figure | None) -> Figure | None:
    if key in assumed:
        return Figure(assumed[key], "given with --assume")
    return next((c for c in candidates if c is not None), None)


def _stage_work_unit(stage: Any) -> str:
    unit, _ = WORK.get(stage.name, ("dialogues", None))
    if unit == "output tokens" and not stage.needs_llm():
        return "dialogues"  # rules or passthrough: no model, counted per dialogue
    return unit


def _repair_rate(cfg: RunConfig, figures: dict[str, Any], device: str) -> Figure | None:
    """Repair re-synthesises a turn and scores it again: the TTS and ASR figures of the repair's
    device in series."""
    syn = table_rate(figures, "synthesize", cfg.tts.backend, device, "")
    ver = table_rate(figures, "verify", cfg.asr.backend, device, "")
    if syn is None or ver is None:
        return None
    return Figure(
        1.0 / (1.0 / syn.value + 1.0 / ver.value),
        f"synthesize ({syn.value:.3g}) and verify ({ver.value:.3g}) figures on {device} in series: "
        "repair re-synthesises a turn and scores it again",
    )


def _stage_plans(
    cfg: RunConfig,
    shape: Shape,
    figures: dict[str, Any],
    assumed: dict[str, float],
    measured: dict[str, dict[str, float]] | None,
    run_name: str,
    input_dialogues: float,
) -> list[StagePlan]:
    plans, missing = [], []
    dialogues = input_dialogues
    for stage in _active_stages(cfg):
        name = stage.name
        device, backend, model = stage_device(cfg, stage)
        unit = _stage_work_unit(stage)
        key_backend = backend if unit != "dialogues" or name in ("assign", "select") else "rules"
        m = (measured or {}).get(name)
        rate = _pick(
            assumed,
            f"rate.{name}",
            run_rate(cfg, stage, m, run_name) if m else None,
            table_rate(figures, name, key_backend, device, model),
            _repair_rate(cfg, figures, device) if name == "repair" else None,
        )
        passed = _pick(assumed, f"pass.{name}", shape.pass_rates.get(name))
        per = _pick(assumed, f"work.{name}", shape.work_per_dialogue.get(name))
        for what, fig, hint in (
            ("throughput", rate, f"rate.{name}=<{unit} per {device}-second>"),
            ("share of dialogues kept", passed, f"pass.{name}=<0..1>"),
            ("work per dialogue", per, f"work.{name}=<{unit} per dialogue>"),
        ):
            if fig is None:
                where = f" with {key_backend}{f' ({model})' if model else ''}" if what == "throughput" else ""
                missing.append(f"{what} of {name} on {device}{where}: --assume {hint}")
        if rate is None or passed is None or per is None:
            continue
        plans.append(
            StagePlan(name, device, key_backend, unit, dialogues, dialogues * per.value, rate, passed, per)
        )
        dialogues *= passed.value
    if missing:
        raise PlanError(
            "no sourced figure for:\n  "
            + "\n  ".join(missing)
            + "\nadd measured figures to the figures file (with source, date and machine) or give them with --assume"
        )
    return plans


def make_plan(
    cfg: RunConfig,
    *,
    hours: float | None = None,
    dialogues: float | None = None,
    figures: dict[str, Any] | None = None,
    run_dir: str | Path | None = None,
    shape_name: str | None = None,
    assumed: dict[str, float] | None = None,
    gpus: int = 8,
    cpus: int = 64,
) -> Plan:
    """The plan for ``hours`` of accepted audio or ``dialogues`` accepted dialogues."""
    if (hours is None) == (dialogues is None):
        raise ValueError("give exactly one of hours or dialogues")
    figures = figures if figures is not None else load_figures()
    assumed = assumed or {}
    measured = run_measurements(cfg, run_dir) if run_dir else None
    shape = shape_from_run(cfg, run_dir, measured) if run_dir else shape_from_figures(figures, shape_name)
    per = _pick(assumed, "audio_s_per_dialogue", shape.audio_s_per_dialogue)
    if hours is not None and (per is None or per.value <= 0):
        raise PlanError("no accepted dialogue to measure audio per dialogue: --assume audio_s_per_dialogue=S")
    accepted = dialogues if dialogues is not None else hours * 3600.0 / per.value
    run_name = Path(run_dir).name if run_dir else ""
    # first pass with one input dialogue gives the overall acceptance; then scale
    probe = _stage_plans(cfg, shape, figures, assumed, measured, run_name, 1.0)
    kept = math.prod(s.pass_rate.value for s in probe)
    if kept <= 0:
        raise PlanError("the shape keeps no dialogue (a stage's share kept is 0): nothing to plan")
    stages = _stage_plans(cfg, shape, figures, assumed, measured, run_name, accepted / kept)
    target = f"{hours:g} accepted audio hours" if hours is not None else f"{dialogues:g} accepted dialogues"
    plan = Plan(target, stages, per or Figure(0.0, "-"), accepted, accepted / kept, gpus, cpus)
    plan.assumptions = _assumptions(cfg, plan, run_dir)
    return plan


def _assumptions(cfg: RunConfig, plan: Plan, run_dir: str | Path | None) -> list[str]:
    out = [
        "Stages run side by side on the cluster (the design's pipelining); days = the larger of "
        "GPU-hours / GPUs and core-hours / cores, over 24 h, with every device busy.",
        "Cluster start-up and data transfer are not counted; the throughputs are busy rates.",
    ]
    if any(s.device == "gpu" and s.backend in ("openai",) for s in plan.stages):
        out.append(
            f"The LLM endpoint ({cfg.llm.model}) runs on GPUs of the same cluster; its GPU-hours are "
            "counted in the GPU pool."
        )
    if run_dir is None:
        out.append(
            "Shares kept and work per dialogue come from a reference run, not from this config's data."
        )
    else:
        out.append(
            "Throughputs from the run are as the run did the work: a unit's time includes loading its "
            "models (paid often in a small run, rarely in a big one), and the LLM stages shared one "
            "server, whose time is split between the stages busy at each moment."
        )
    return out


# --------------------------------------------------------------------------- printing


def _si(x: float) -> str:
    for div, suffix in ((1e12, " T"), (1e9, " G"), (1e6, " M"), (1e3, " k")):
        if abs(x) >= div:
            return f"{x / div:.3g}{suffix}"
    return f"{x:.3g}"


def _rate_unit(unit: str, device: str) -> str:
    short = {"output tokens": "tok", "audio s": "audio s", "dialogues": "dlg"}[unit]
    return f"{short}/{'GPU' if device == 'gpu' else 'core'}-s"


def _days(days: float) -> str:
    return f"{days:,.1f} days" if days >= 1 else f"{days * 24:.2g} hours"


def format_plan(plan: Plan) -> str:
    sources: list[str] = []

    def ref(fig: Figure) -> str:
        if fig.source not in sources:
            sources.append(fig.source)
        return f"[{sources.index(fig.source) + 1}]"

    per = plan.audio_s_per_dialogue
    lines = [
        f"plan: {plan.target} = {_si(plan.accepted_dialogues)} accepted dialogues"
        + (f" of {per.value:.1f} s {ref(per)}" if per.value else ""),
        f"input dialogues needed: {_si(plan.input_dialogues)} "
        f"(the stages keep {plan.accepted_dialogues / plan.input_dialogues:.1%} of them)",
        "",
        f"{'stage':<11}{'device':<7}{'backend':<11}{'in':>9}{'kept':>10}  {'work':<22}"
        f"{'throughput':<24}{'device-hours':>14}",
    ]
    for s in plan.stages:
        work = f"{_si(s.work)} {s.unit}" if s.work else "-"
        rate = f"{s.rate.value:.3g} {_rate_unit(s.unit, s.device)} {ref(s.rate)}"
        hours = f"{s.device_hours:,.1f} {'GPU' if s.device == 'gpu' else 'core'}-h"
        kept = f"{s.pass_rate.value:.0%} {ref(s.pass_rate)}"
        lines.append(
            f"{s.stage:<11}{s.device:<7}{s.backend[:10]:<11}{_si(s.dialogues_in):>9}{kept:>10}  "
            f"{work:<22}{rate:<24}{hours:>14}"
        )
        lines.append(
            f"{'':<11}work per dialogue in: {s.work_per_dialogue.value:.4g} {s.unit} {ref(s.work_per_dialogue)}"
        )
    b = plan.bounding
    gpu_h, cpu_h = plan.hours("gpu"), plan.hours("cpu")
    lines += [
        "",
        f"total: {gpu_h:,.0f} GPU-hours and {cpu_h:,.0f} core-hours",
        f"on {plan.gpus} GPU(s) and {plan.cpus} core(s): {_days(plan.days)}, bounded by {b.stage} "
        f"({b.device_hours / max(plan.hours(b.device), 1e-12):.0%} of the {b.device.upper()}-hours)",
    ]
    if gpu_h:
        keep_pace = ", ".join(
            f"{s.stage} {plan.gpus * s.device_hours / gpu_h:.1f}" for s in plan.stages if s.device == "gpu"
        )
        lines.append(f"GPUs per stage to keep pace: {keep_pace}")
    lines += ["", "sources:"] + [f"  [{i + 1}] {src}" for i, src in enumerate(sources)]
    lines += ["assumptions:"] + [f"  - {a}" for a in plan.assumptions]
    return "\n".join(lines)


def plan_to_dict(plan: Plan) -> dict[str, Any]:
    return {
        "target": plan.target,
        "accepted_dialogues": plan.accepted_dialogues,
        "input_dialogues": plan.input_dialogues,
        "audio_s_per_dialogue": plan.audio_s_per_dialogue.__dict__,
        "gpu_hours": plan.hours("gpu"),
        "core_hours": plan.hours("cpu"),
        "gpus": plan.gpus,
        "cpus": plan.cpus,
        "days": plan.days,
        "bounding_stage": plan.bounding.stage,
        "stages": [
            {
                "stage": s.stage,
                "device": s.device,
                "backend": s.backend,
                "unit": s.unit,
                "dialogues_in": s.dialogues_in,
                "work": s.work,
                "device_hours": s.device_hours,
                "throughput": s.rate.__dict__,
                "kept": s.pass_rate.__dict__,
                "work_per_dialogue": s.work_per_dialogue.__dict__,
            }
            for s in plan.stages
        ],
        "assumptions": plan.assumptions,
    }


__all__ = [
    "Plan",
    "PlanError",
    "format_plan",
    "load_figures",
    "make_plan",
    "parse_assumptions",
    "plan_to_dict",
]
