"""`kespeechchat plan`: the arithmetic on a case computed by hand, sources, refusals, overrides."""

from __future__ import annotations

import pytest
import yaml

from kespeechchat.config import RunConfig
from pipelines.cli import main
from pipelines.plan import PlanError, format_plan, load_figures, make_plan, parse_assumptions

SOURCE = {"source": "hand-made test figure", "date": "2026-12-07", "machine": "test"}


def _cfg(tmp_path) -> RunConfig:
    return RunConfig.model_validate(
        {
            "name": "plan-test",
            "runs_dir": str(tmp_path / "runs"),
            "input": {"sources": []},
            "llm": {"backend": "openai", "endpoints": ["http://127.0.0.1:9/v1"], "model": "test-7b"},
            "rewrite": {"mode": "llm"},
            "filter": {"llm_judge": True},
            "spoken": {"mode": "llm"},
            "executor": {"kind": "ray", "stage_gpus": {"synthesize": 1}},
        }
    )


def _figures(tmp_path, drop: str | None = None):
    rows = [
        {
            "stage": ["rewrite", "filter", "spoken"],
            "backend": "openai",
            "device": "gpu",
            "model": "7b",
            "value": 100,
        },
        {"stage": ["rewrite", "filter", "spoken"], "backend": "openai", "device": "gpu", "value": 1},
        {"stage": "synthesize", "backend": "kokoro", "device": "gpu", "value": 10},
        {"stage": "synthesize", "backend": "kokoro", "device": "cpu", "value": 1},
        {"stage": "verify", "backend": "faster_whisper", "device": "cpu", "value": 2},
        {"stage": "assign", "backend": "-", "device": "cpu", "value": 1000},
        {"stage": "select", "backend": "-", "device": "cpu", "value": 1000},
    ]
    data = {
        "throughputs": [{**r, **SOURCE} for r in rows if r["stage"] != drop],
        "shapes": {
            "hand": {
                **SOURCE,
                "audio_s_per_dialogue": 30,
                "pass_rates": {
                    "rewrite": 0.5,
                    "filter": 0.8,
                    "spoken": 1,
                    "assign": 1,
                    "synthesize": 1,
                    "verify": 1,
                    "repair": 1,
                    "select": 0.5,
                },
                "work_per_dialogue": {
                    "rewrite": 200,
                    "filter": 50,
                    "spoken": 100,
                    "assign": 1,
                    "synthesize": 40,
                    "verify": 40,
                    "repair": 10,
                    "select": 1,
                },
            }
        },
    }
    p = tmp_path / "figures.yaml"
    p.write_text(yaml.safe_dump(data), encoding="utf-8")
    return p


def test_plan_arithmetic_matches_a_hand_computed_case(tmp_path):
    plan = make_plan(_cfg(tmp_path), hours=10, figures=load_figures(_figures(tmp_path)), gpus=2, cpus=4)
    # 10 h / 30 s = 1200 accepted; the stages keep 0.5 * 0.8 * 0.5 = 0.2 -> 6000 in
    assert plan.accepted_dialogues == pytest.approx(1200)
    assert plan.input_dialogues == pytest.approx(6000)
    by = {s.stage: s for s in plan.stages}
    assert [s.stage for s in plan.stages] == [
        "rewrite",
        "filter",
        "spoken",
        "assign",
        "synthesize",
        "verify",
        "repair",
        "select",
    ]
    assert by["rewrite"].rate.value == 100  # the model-specific line wins over the generic one
    expected_hours = {
        "rewrite": 6000 * 200 / 100 / 3600,  # 3.333 GPU-h
        "filter": 3000 * 50 / 100 / 3600,  # 0.4167
        "spoken": 2400 * 100 / 100 / 3600,  # 0.6667
        "assign": 2400 / 1000 / 3600,
        "synthesize": 2400 * 40 / 10 / 3600,  # 2.667 GPU-h
        "verify": 2400 * 40 / 2 / 3600,  # 13.33 core-h
        "repair": 2400 * 10 / (1 / (1 / 1 + 1 / 2)) / 3600,  # kokoro cpu and whisper cpu in series: 10 core-h
        "select": 2400 / 1000 / 3600,
    }
    for stage, hours in expected_hours.items():
        assert by[stage].device_hours == pytest.approx(hours), stage
    assert by["synthesize"].device == "gpu" and by["verify"].device == "cpu"
    assert plan.hours("gpu") == pytest.approx(3.3333 + 0.41667 + 0.66667 + 2.66667, rel=1e-4)
    cpu_h = 13.3333 + 10 + 2 * 2400 / 1000 / 3600
    assert plan.hours("cpu") == pytest.approx(cpu_h, rel=1e-4)
    # CPU-bound: 23.33 core-h on 4 cores is 5.83 h, more than 7.08 GPU-h on 2 GPUs (3.54 h)
    assert plan.days == pytest.approx(cpu_h / 4 / 24, rel=1e-4)
    assert plan.bounding.stage == "verify"
    text = format_plan(plan)
    assert "bounded by verify" in text and "hand-made test figure" in text


def test_plan_for_dialogues_and_overrides(tmp_path):
    figs = load_figures(_figures(tmp_path))
    plan = make_plan(
        _cfg(tmp_path),
        dialogues=1200,
        figures=figs,
        assumed=parse_assumptions(["rate.verify=8", "pass.select=1"]),
        gpus=2,
        cpus=4,
    )
    by = {s.stage: s for s in plan.stages}
    assert plan.input_dialogues == pytest.approx(1200 / 0.4)
    assert by["verify"].rate.source == "given with --assume"
    assert by["verify"].device_hours == pytest.approx(1200 * 40 / 8 / 3600)


def test_plan_refuses_a_figure_without_source(tmp_path, capsys):
    with pytest.raises(PlanError) as e:
        make_plan(_cfg(tmp_path), hours=1, figures=load_figures(_figures(tmp_path, drop="verify")))
    msg = str(e.value)
    assert "throughput of verify on cpu with faster_whisper" in msg
    assert "--assume rate.verify=" in msg
    assert "repair" in msg  # repair is built from synthesize and verify: it has no source either
    with pytest.raises(ValueError, match="not a number"):
        parse_assumptions(["rate.verify=fast"])
    # the command prints the refusal and exits 2, no plan
    cfg_path = tmp_path / "c.yaml"
    cfg_path.write_text(yaml.safe_dump(_cfg(tmp_path).model_dump(mode="json")), encoding="utf-8")
    rc = main(
        [
            "plan",
            "--config",
            str(cfg_path),
            "--hours",
            "1",
            "--figures",
            str(_figures(tmp_path, drop="verify")),
        ]
    )
    out = capsys.readouterr().out
    assert rc == 2 and "cannot plan without sources" in out and "days" not in out


def test_shipped_figures_plan_the_production_config():
    """Every figure the production recipe needs is in configs/throughputs.yaml, with a source."""
    from pathlib import Path

    from kespeechchat.config import load_config

    root = Path(__file__).resolve().parents[1]
    plan = make_plan(load_config(root / "configs" / "production.yaml"), hours=60000, gpus=64, cpus=512)
    assert plan.days > 0 and plan.hours("gpu") > 0
    assert all(s.rate.source.startswith(("measured", "published", "synthesize")) for s in plan.stages)
