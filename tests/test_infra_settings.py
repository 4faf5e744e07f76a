"""infra/deploy.yaml: the shipped file describes staging and production, and mistakes are refused with the
key that is wrong."""

from __future__ import annotations

import pytest

from infra.errors import DeployError
from infra.settings import DEFAULT_CONFIG, load

VALID = """
image: {registry: docker.io, repository: team/worker}
environments:
  staging:
    template:
      name: worker-staging
      containerDiskInGb: 20
      env: {WORKER_MAX_MODELS: "2"}
      secrets: {BUCKET_SECRET_ACCESS_KEY: bucket_secret}
    endpoint: {name: worker-staging, gpuTypeIds: ["NVIDIA L4"], workersMin: 0, workersMax: 1}
"""


def test_the_shipped_settings_describe_staging_and_production(monkeypatch):
    monkeypatch.delenv("REGISTRY", raising=False)
    settings = load(DEFAULT_CONFIG)

    assert list(settings.environments) == ["staging", "production"]
    staging, production = settings.environment("staging"), settings.environment("production")
    assert staging.template["name"] != production.template["name"]
    assert staging.endpoint["name"] != production.endpoint["name"]
    for environment in (staging, production):
        assert environment.template["containerDiskInGb"] > 0
        assert environment.template["env"]["BUCKET_SECRET_ACCESS_KEY"].startswith("{{ RUNPOD_SECRET_")
        assert {"gpuTypeIds", "workersMin", "workersMax", "idleTimeout", "scalerType", "scalerValue", "flashboot",
                "executionTimeoutMs"} <= environment.endpoint.keys()
    assert production.template["env"]["BUCKET_PREFIX"] == "production"


def test_secrets_become_runpod_references_and_registry_can_come_from_the_environment(tmp_path, monkeypatch):
    path = tmp_path / "deploy.yaml"
    path.write_text(VALID)
    monkeypatch.setenv("REGISTRY", "ghcr.io")

    settings = load(path)

    assert settings.image.ref("1.0") == "ghcr.io/team/worker:1.0"
    assert settings.environment("staging").template == {
        "name": "worker-staging", "containerDiskInGb": 20,
        "env": {"WORKER_MAX_MODELS": "2", "BUCKET_SECRET_ACCESS_KEY": "{{ RUNPOD_SECRET_bucket_secret }}"}}


@pytest.mark.parametrize("change, message", [
    (("workersMax: 1", "workersMax: 1, workersMaximum: 3"), "staging.endpoint.workersMaximum: unknown key"),
    (("workersMin: 0, ", ""), "environments.staging.endpoint.workersMin: is required"),
    (("containerDiskInGb: 20", "containerDiskInGb: big"), "staging.template.containerDiskInGb: must be an integer"),
    (("workersMin: 0", "workersMin: true"), "environments.staging.endpoint.workersMin: must be an integer"),
    (('["NVIDIA L4"]', "NVIDIA L4"), "environments.staging.endpoint.gpuTypeIds: must be a list of strings"),
    (('WORKER_MAX_MODELS: "2"', "WORKER_MAX_MODELS: 2"), "template.env.WORKER_MAX_MODELS: quote the value"),
    (('WORKER_MAX_MODELS: "2"', "BUCKET_SECRET_ACCESS_KEY: plain-text"),
     "template.env.BUCKET_SECRET_ACCESS_KEY: looks like a secret: list it under `secrets`"),
    (("bucket_secret", "'{{ RUNPOD_SECRET_x }}'"), "template.secrets.BUCKET_SECRET_ACCESS_KEY: must be the name"),
    (("workersMin: 0", "workersMin: 3"), "environments.staging.endpoint.workersMin: is more than workersMax"),
    (("workersMax: 1", "workersMax: 1, scalerType: FAST"), "endpoint.scalerType: must be one of QUEUE_DELAY"),
    (("repository: team/worker", "repo: team/worker"), "image.repo: unknown key"),
    (("image:", "images:"), "images: unknown key"),
    (("environments:", "environments: []\nx:"), "environments: must be a mapping"),
])
def test_mistakes_are_refused_naming_the_key(tmp_path, change, message):
    path = tmp_path / "deploy.yaml"
    path.write_text(VALID.replace(*change))

    with pytest.raises(DeployError) as error:
        load(path)

    assert str(error.value).startswith(f"{path}: ") and message in str(error.value)


def test_an_unknown_environment_lists_the_defined_ones(tmp_path):
    path = tmp_path / "deploy.yaml"
    path.write_text(VALID)

    with pytest.raises(DeployError, match="no environment 'prod' \\(defined: staging\\)"):
        load(path).environment("prod")
