"""Build and push the worker image with `docker buildx`, tagged `<version>` and `<version>-<git sha>`.

The version is pyproject.toml's; on a CI tag build the tag must be `v<version>`. The registry login takes
REGISTRY_USERNAME and REGISTRY_PASSWORD from the environment, the password on docker's stdin. Build
secrets (HF_TOKEN, CIVITAI_TOKEN, for gated or civitai models) are passed by name, so their values stay
in the environment: docker reads them itself.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import tomllib
from pathlib import Path

from .console import say
from .errors import DeployError
from .settings import Image

ROOT = Path(__file__).resolve().parent.parent
BUILD_SECRETS = ("HF_TOKEN", "CIVITAI_TOKEN")  # the Dockerfile's --mount=type=secret ids


def project_version() -> str:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]


def git_sha() -> str:
    """The commit's short sha: GITHUB_SHA in GitHub Actions, else git's."""
    if os.environ.get("GITHUB_SHA"):
        return os.environ["GITHUB_SHA"][:7]
    try:
        return subprocess.run(["git", "rev-parse", "--short=7", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError) as error:
        raise DeployError(f"cannot read the git commit for the image tag: {error}") from None


def release_tag() -> str:
    """The tag a deploy uses by default, `<version>-<git sha>`: immutable, unlike `<version>`."""
    return f"{project_version()}-{git_sha()}"


def check_tag_matches_version() -> None:
    """On a tag build in GitHub Actions, the tag must be v<pyproject version>."""
    version = project_version()
    if os.environ.get("GITHUB_REF_TYPE") == "tag" and os.environ.get("GITHUB_REF_NAME") != f"v{version}":
        raise DeployError(f"git tag {os.environ.get('GITHUB_REF_NAME')} does not match pyproject.toml's version "
                          f"{version}: tag v{version}, or bump the version")


def build(image: Image, *, push: bool, dry_run: bool) -> list[str]:
    """Builds the image (and pushes it, after logging in); the image references it was tagged with."""
    check_tag_matches_version()
    refs = [image.ref(project_version()), image.ref(release_tag())]
    if push:
        _login(image.registry, dry_run)
    command = ["docker", "buildx", "build", "--platform", image.platform, "--build-arg", f"MANIFEST={image.manifest}"]
    for name in BUILD_SECRETS:
        if os.environ.get(name):
            command += ["--secret", f"id={name},env={name}"]
    for ref in refs:
        command += ["--tag", ref]
    _run(command + ["--push" if push else "--load", str(ROOT)], dry_run)
    return refs


def _login(registry: str, dry_run: bool) -> None:
    username, password = os.environ.get("REGISTRY_USERNAME"), os.environ.get("REGISTRY_PASSWORD")
    if not username and not password:
        say(f"REGISTRY_USERNAME and REGISTRY_PASSWORD are not set: pushing with docker's existing login to {registry}")
        return
    if not (username and password):
        raise DeployError("set both REGISTRY_USERNAME and REGISTRY_PASSWORD, or neither")
    _run(["docker", "login", registry, "--username", username, "--password-stdin"], dry_run, stdin=password)


def _run(command: list[str], dry_run: bool, stdin: str | None = None) -> None:
    say(("would run: " if dry_run else "+ ") + shlex.join(command) + (" < $REGISTRY_PASSWORD" if stdin else ""))
    if dry_run:
        return
    try:
        result = subprocess.run(command, input=stdin, text=True)
    except OSError as error:
        raise DeployError(f"cannot run {command[0]}: {error}") from None
    if result.returncode != 0:
        raise DeployError(f"{shlex.join(command[:3])} failed (exit {result.returncode}); its output is above")
