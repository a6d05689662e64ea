"""Configs cannot point writes outside the run directory, and carry no secrets."""

from __future__ import annotations

import pytest
import yaml
from pydantic import ValidationError

from kespeechchat.config import RunConfig, load_config


@pytest.mark.parametrize("name", ["../escape", "a/b", "..", ".", ".hidden", "a\\b", ""])
def test_run_name_cannot_leave_the_runs_directory(name):
    with pytest.raises(ValidationError, match="plain directory name"):
        RunConfig.model_validate({"name": name, "input": {"sources": []}})


def test_set_override_is_validated_too(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump({"name": "ok", "input": {"sources": []}}), encoding="utf-8")
    assert load_config(p).run_dir.name == "ok"
    with pytest.raises(ValidationError, match="plain directory name"):
        load_config(p, ["name=../../etc"])


def test_a_key_in_the_config_is_refused_not_stored(tmp_path):
    """Secrets are read from the environment by name; a literal key field is an unknown field."""
    for section, field in (("llm", "api_key"), ("package", "hf_token")):
        with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
            RunConfig.model_validate({"name": "x", "input": {"sources": []}, section: {field: "sk-123"}})
    cfg = RunConfig.model_validate({"name": "x", "input": {"sources": []}})
    assert cfg.llm.api_key_env and "sk-" not in yaml.safe_dump(cfg.model_dump(mode="json"))
