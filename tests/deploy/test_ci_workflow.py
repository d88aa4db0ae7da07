"""The GitHub workflow: valid for GitHub, and running exactly the repository's test command."""

from __future__ import annotations

import io
from typing import Any

import pytest
from ruamel.yaml import YAML

from tests.deploy.tools import ROOT, describe, read, require_tool, run

pytestmark = pytest.mark.tools

WORKFLOW = ".github/workflows/ci.yml"


def load_workflow() -> dict[str, Any]:
    loaded: dict[str, Any] = YAML(typ="safe").load(io.StringIO(read(WORKFLOW)))
    return loaded


@pytest.mark.parametrize(
    "schema", ["vendor.github-workflows", "custom.github-workflows-require-timeout"]
)
def test_workflow_matches_the_schema(schema: str) -> None:
    checker = require_tool("check-jsonschema")
    result = run([checker, "--builtin-schema", schema, WORKFLOW], cwd=ROOT)
    assert result.returncode == 0, describe(result)


def test_runs_on_push_and_pull_request() -> None:
    # YAML 1.1 readers turn the key `on` into True; ruamel (YAML 1.2) keeps "on".
    triggers = load_workflow()["on"]
    assert {"push", "pull_request"} <= set(triggers)


def test_runs_the_same_test_command_as_ci_run() -> None:
    steps = [step for job in load_workflow()["jobs"].values() for step in job["steps"]]
    commands = [step["run"].strip() for step in steps if "run" in step]
    assert commands == ["bash .ci/run"]
    assert "scripts/test.sh" in read(".ci/run")
