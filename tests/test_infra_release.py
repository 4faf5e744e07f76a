"""The release workflow (.github/workflows/release.yml): it parses, runs on version tags, tests before it
deploys, and its jobs call the make targets the README shows, which call `python -m infra.deploy`; the
secrets it uses are the ones the README names."""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
WORKFLOW = yaml.safe_load((ROOT / ".github" / "workflows" / "release.yml").read_text())
README = (ROOT / "README.md").read_text()
DEPLOYING = README[README.index("## Deploying to RunPod"):README.index("## Layout")]
README_COMMANDS = {line.split("#")[0].strip() for line in DEPLOYING.splitlines() if line.startswith("make ")}
INFRA_SUBCOMMANDS = {"build": "build", "push": "push", "deploy": "deploy", "deploy-dry-run": "deploy",
                     "smoke": "smoke", "rollback": "rollback"}


def runs(job: str) -> list[str]:
    return [step["run"] for step in WORKFLOW["jobs"][job]["steps"] if "run" in step]


def make_commands(job: str) -> list[str]:
    return [command for command in runs(job) if command.startswith("make ")]


def test_it_runs_on_version_tags_only():
    triggers = WORKFLOW.get("on", WORKFLOW.get(True))  # YAML 1.1 reads the key `on` as true
    assert triggers == {"push": {"tags": ["v*"]}}


def test_the_test_job_runs_the_readme_test_command():
    assert make_commands("test") == ["make test"]
    assert "make test" in README


def test_deploy_needs_the_tests_and_pushes_deploys_then_smoke_tests_each_environment():
    assert WORKFLOW["jobs"]["deploy"]["needs"] == "test"
    assert make_commands("deploy") == [
        "make push",
        "make deploy ENV=staging", "make smoke ENV=staging",
        "make deploy ENV=production", "make smoke ENV=production",
        "make rollback ENV=production",
    ]
    steps = {step.get("run"): step for step in WORKFLOW["jobs"]["deploy"]["steps"]}
    rollback, smoke = steps["make rollback ENV=production"], steps["make smoke ENV=production"]
    assert rollback["if"] == f"failure() && steps.{smoke['id']}.outcome == 'failure'"


@pytest.mark.parametrize("command", sorted({c for job in WORKFLOW["jobs"] for c in make_commands(job)} - {"make test"}))
def test_each_make_command_of_the_workflow_is_in_the_readme_and_runs_infra_deploy(command):
    assert command in README_COMMANDS
    target, *assignments = shlex.split(command)[1:]
    dry_run = subprocess.run(["make", "-n", target, *assignments], cwd=ROOT, capture_output=True, text=True,
                             timeout=60)
    assert dry_run.returncode == 0, dry_run.stderr
    environment = dict(assignment.split("=", 1) for assignment in assignments)
    expected = f"-m infra.deploy {INFRA_SUBCOMMANDS[target]}"
    if "ENV" in environment:
        expected += f" --env {environment['ENV']}"
    assert expected in dry_run.stdout


def test_the_readme_make_commands_all_exist():
    targets = set(re.findall(r"^([\w-]+):", (ROOT / "Makefile").read_text(), re.MULTILINE))
    assert {shlex.split(command)[1] for command in README_COMMANDS} <= targets
    assert set(INFRA_SUBCOMMANDS) <= targets


def test_the_secrets_it_uses_are_named_in_the_readme_and_only_passed_as_environment():
    text = (ROOT / ".github" / "workflows" / "release.yml").read_text()
    secrets = set(re.findall(r"\$\{\{\s*secrets\.(\w+)\s*\}\}", text))
    assert {"RUNPOD_API_KEY", "REGISTRY_USERNAME", "REGISTRY_PASSWORD"} <= secrets
    for name in secrets:
        assert f"`{name}`" in DEPLOYING
        assert WORKFLOW["jobs"]["deploy"]["env"][name] == f"${{{{ secrets.{name} }}}}"
    assert all("secrets." not in command for job in WORKFLOW["jobs"] for command in runs(job))
