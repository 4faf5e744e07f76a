"""infra/deploy.yaml, read and checked: the image's name, and each environment's template and endpoint.

Keys under `template` and `endpoint` are the RunPod REST API's own field names (infra/README.md), so the
file reads as what is sent. Two keys are ours: `template.env` values must be plain settings (a name that
looks secret is refused), and `template.secrets` maps an environment variable to a RunPod secret, sent as
the reference `{{ RUNPOD_SECRET_<name> }}` that RunPod resolves when a worker starts. Secret values are
never read, so they can't reach a plan or a log. `REGISTRY` in the environment overrides `image.registry`.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from .errors import DeployError

DEFAULT_CONFIG = Path(__file__).with_name("deploy.yaml")

# allowed keys and their types, and the required ones
IMAGE_KEYS = {"registry": str, "repository": str, "platform": str, "manifest": str}
TEMPLATE_KEYS = {"name": str, "containerDiskInGb": int, "containerRegistryAuthId": str, "env": dict,
                 "secrets": dict}
ENDPOINT_KEYS = {"name": str, "gpuTypeIds": list, "workersMin": int, "workersMax": int, "gpuCount": int,
                 "idleTimeout": int, "scalerType": str, "scalerValue": int, "flashboot": bool,
                 "executionTimeoutMs": int, "networkVolumeId": str, "dataCenterIds": list,
                 "allowedCudaVersions": list}
REQUIRED = {"image": ("registry", "repository"), "template": ("name", "containerDiskInGb"),
            "endpoint": ("name", "gpuTypeIds", "workersMin", "workersMax")}
TYPE_NAMES = {str: "a string", int: "an integer", bool: "true or false", list: "a list of strings",
              dict: "a mapping"}
SCALER_TYPES = ("QUEUE_DELAY", "REQUEST_COUNT")
SECRET_LOOKING = re.compile(r"SECRET|PASSWORD|TOKEN|API_KEY|ACCESS_KEY|PRIVATE", re.IGNORECASE)
SECRET_NAME = re.compile(r"[A-Za-z0-9_-]+")


def secret_reference(secret_name: str) -> str:
    """How a RunPod template refers to a RunPod secret."""
    return "{{ RUNPOD_SECRET_%s }}" % secret_name


@dataclass(frozen=True)
class Image:
    registry: str
    repository: str
    platform: str = "linux/amd64"
    manifest: str = "models.toml"

    def ref(self, tag: str) -> str:
        return f"{self.registry}/{self.repository}:{tag}"


@dataclass(frozen=True)
class Environment:
    name: str
    template: dict  # API fields; `env` holds plain values and secret references
    endpoint: dict  # API fields, without templateId


@dataclass(frozen=True)
class Settings:
    path: Path
    image: Image
    environments: dict[str, Environment]

    def environment(self, name: str) -> Environment:
        if name not in self.environments:
            raise DeployError(f"{self.path}: no environment {name!r} (defined: {', '.join(self.environments)})")
        return self.environments[name]


def load(path: Path = DEFAULT_CONFIG) -> Settings:
    try:
        data = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as error:
        raise DeployError(f"cannot read deploy settings {path}: {error}") from None
    where = _Where(Path(path))
    where.check(data, {"image": dict, "environments": dict}, "", ("image", "environments"))
    image = where.check(data["image"], IMAGE_KEYS, "image", REQUIRED["image"])
    if os.environ.get("REGISTRY"):
        image["registry"] = os.environ["REGISTRY"]
    environments = {name: _environment(where, name, section) for name, section in data["environments"].items()}
    return Settings(Path(path), Image(**image), environments)


def _environment(where: _Where, name: str, section) -> Environment:
    prefix = f"environments.{name}"
    section = where.check(section, {"template": dict, "endpoint": dict}, prefix, ("template", "endpoint"))
    template = where.check(section["template"], TEMPLATE_KEYS, f"{prefix}.template", REQUIRED["template"])
    endpoint = where.check(section["endpoint"], ENDPOINT_KEYS, f"{prefix}.endpoint", REQUIRED["endpoint"])
    env = {}
    for key, value in template.pop("env", {}).items():
        if not isinstance(value, str):
            where.fail(f"{prefix}.template.env.{key}", "quote the value: RunPod environment values are strings")
        if SECRET_LOOKING.search(key):
            where.fail(f"{prefix}.template.env.{key}", "looks like a secret: list it under `secrets` with the "
                                                       "name of a RunPod secret instead")
        env[key] = value
    for key, secret in template.pop("secrets", {}).items():
        if not isinstance(secret, str) or not SECRET_NAME.fullmatch(secret):
            where.fail(f"{prefix}.template.secrets.{key}", "must be the name of a RunPod secret")
        env[key] = secret_reference(secret)
    template["env"] = env
    if endpoint["workersMin"] > endpoint["workersMax"]:
        where.fail(f"{prefix}.endpoint.workersMin", "is more than workersMax")
    if endpoint.get("scalerType", SCALER_TYPES[0]) not in SCALER_TYPES:
        where.fail(f"{prefix}.endpoint.scalerType", f"must be one of {', '.join(SCALER_TYPES)}")
    return Environment(name, template, endpoint)


class _Where:
    """Checks sections of one settings file; errors name the file and the key."""

    def __init__(self, path: Path):
        self.path = path

    def fail(self, key: str, problem: str):
        raise DeployError(f"{self.path}: {key}: {problem}")

    def check(self, section, keys: dict[str, type], prefix: str, required: tuple[str, ...]) -> dict:
        """A copy of `section` once it is a mapping with only `keys`, each of its type, and `required`."""
        if not isinstance(section, dict):
            self.fail(prefix or "top level", "must be a mapping")
        for key, value in section.items():
            name = f"{prefix}.{key}".lstrip(".")
            if key not in keys:
                self.fail(name, f"unknown key (known: {', '.join(keys)})")
            kind = keys[key]
            if (not isinstance(value, kind) or (kind is int and isinstance(value, bool))
                    or (kind is list and not all(isinstance(item, str) for item in value))):
                self.fail(name, f"must be {TYPE_NAMES[kind]}")
        for key in required:
            if key not in section:
                self.fail(f"{prefix}.{key}".lstrip("."), "is required")
        return dict(section)
