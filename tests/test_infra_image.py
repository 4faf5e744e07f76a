"""infra.deploy build / push against a fake `docker` first on PATH that records its arguments and stdin:
the exact commands, the tags, the login with the password on stdin only, and failures."""

from __future__ import annotations

import json
import os
import stat
import sys
from pathlib import Path

import pytest

from infra import deploy
from infra.image import project_version

REPO_ROOT = Path(__file__).resolve().parent.parent
PASSWORD = "registry-password-must-never-be-printed"
HF_TOKEN = "hf_token_must_never_be_printed"
CONFIG = """
image: {registry: registry.example.com, repository: team/worker, platform: linux/amd64, manifest: models.toml}
environments: {}
"""
FAKE_DOCKER = """#!{python}
import json, os, sys
argv = sys.argv[1:]
stdin = sys.stdin.read() if "--password-stdin" in argv else None
with open(os.environ["FAKE_DOCKER_LOG"], "a") as log:
    log.write(json.dumps({{"argv": argv, "stdin": stdin}}) + "\\n")
sys.exit(1 if argv[0] == os.environ.get("FAKE_DOCKER_FAIL") else 0)
"""


@pytest.fixture
def docker(tmp_path, monkeypatch):
    """The fake docker's log: docker() -> [{"argv": [...], "stdin": str | None}, ...]."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "docker"
    fake.write_text(FAKE_DOCKER.format(python=sys.executable))
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    log = tmp_path / "docker.log"
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_DOCKER_LOG", str(log))
    for name in ("REGISTRY", "GITHUB_REF_TYPE", "GITHUB_REF_NAME", "CIVITAI_TOKEN", "FAKE_DOCKER_FAIL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("GITHUB_SHA", "abc1234" + "0" * 33)
    monkeypatch.setenv("REGISTRY_USERNAME", "ci-bot")
    monkeypatch.setenv("REGISTRY_PASSWORD", PASSWORD)
    monkeypatch.setenv("HF_TOKEN", HF_TOKEN)
    return lambda: [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


@pytest.fixture
def cli(tmp_path, capsys):
    config = tmp_path / "deploy.yaml"
    config.write_text(CONFIG)

    def run(*argv: str) -> tuple[int, str, str]:
        try:
            deploy.main(["--config", str(config), *argv])
            code = 0
        except SystemExit as exit_:
            code, message = 1, exit_.code
        out, err = capsys.readouterr()
        err += message + "\n" if code else ""
        assert PASSWORD not in out + err and HF_TOKEN not in out + err
        return code, out, err

    return run


def tags(registry: str = "registry.example.com") -> list[str]:
    version = project_version()
    return [f"{registry}/team/worker:{version}", f"{registry}/team/worker:{version}-abc1234"]


def buildx(output: str, registry: str = "registry.example.com") -> list[str]:
    first, second = tags(registry)
    return ["buildx", "build", "--platform", "linux/amd64", "--build-arg", "MANIFEST=models.toml",
            "--secret", "id=HF_TOKEN,env=HF_TOKEN", "--tag", first, "--tag", second, output, str(REPO_ROOT)]


def test_push_logs_in_with_the_password_on_stdin_then_builds_and_pushes_both_tags(docker, cli):
    code, out, _ = cli("push")

    assert code == 0
    assert docker() == [
        {"argv": ["login", "registry.example.com", "--username", "ci-bot", "--password-stdin"], "stdin": PASSWORD},
        {"argv": buildx("--push"), "stdin": None},
    ]
    assert f"pushed: {', '.join(tags())}" in out


def test_build_loads_locally_without_logging_in(docker, cli):
    code, _, _ = cli("build")

    assert code == 0 and docker() == [{"argv": buildx("--load"), "stdin": None}]


def test_registry_from_the_environment_overrides_the_settings(docker, cli, monkeypatch):
    monkeypatch.setenv("REGISTRY", "ghcr.io")

    cli("push")

    assert docker()[0]["argv"][1] == "ghcr.io" and docker()[1]["argv"] == buildx("--push", registry="ghcr.io")


def test_build_secrets_are_passed_by_name_only_when_set(docker, cli, monkeypatch):
    monkeypatch.delenv("HF_TOKEN")
    monkeypatch.setenv("CIVITAI_TOKEN", "civitai-secret")

    cli("build")

    argv = docker()[0]["argv"]
    assert "id=HF_TOKEN,env=HF_TOKEN" not in argv
    assert argv[argv.index("--secret") + 1] == "id=CIVITAI_TOKEN,env=CIVITAI_TOKEN" and "civitai-secret" not in argv


def test_push_dry_run_prints_the_commands_and_runs_nothing(docker, cli):
    code, out, _ = cli("push", "--dry-run")

    assert code == 0 and docker() == []
    assert "would run: docker login registry.example.com --username ci-bot --password-stdin < $REGISTRY_PASSWORD" in out
    assert "would run: docker buildx build --platform linux/amd64" in out


def test_without_registry_credentials_push_uses_the_existing_login(docker, cli, monkeypatch):
    monkeypatch.delenv("REGISTRY_USERNAME")
    monkeypatch.delenv("REGISTRY_PASSWORD")

    code, out, _ = cli("push")

    assert code == 0 and [call["argv"][0] for call in docker()] == ["buildx"]
    assert "pushing with docker's existing login" in out


def test_half_the_credentials_is_an_error(docker, cli, monkeypatch):
    monkeypatch.delenv("REGISTRY_USERNAME")

    code, _, err = cli("push")

    assert code == 1 and docker() == []
    assert err == "error: set both REGISTRY_USERNAME and REGISTRY_PASSWORD, or neither\n"


def test_a_failed_build_fails_with_a_clear_message(docker, cli, monkeypatch):
    monkeypatch.setenv("FAKE_DOCKER_FAIL", "buildx")

    code, _, err = cli("push")

    assert code == 1 and err == "error: docker buildx build failed (exit 1); its output is above\n"


def test_a_release_tag_must_match_the_version(docker, cli, monkeypatch):
    monkeypatch.setenv("GITHUB_REF_TYPE", "tag")
    monkeypatch.setenv("GITHUB_REF_NAME", "v99.0.0")

    code, _, err = cli("push")

    assert code == 1 and docker() == []
    assert f"error: git tag v99.0.0 does not match pyproject.toml's version {project_version()}" in err
    monkeypatch.setenv("GITHUB_REF_NAME", f"v{project_version()}")
    assert cli("push")[0] == 0
