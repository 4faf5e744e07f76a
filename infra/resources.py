"""What a deploy wants RunPod to hold: the template and endpoint bodies, and the images deployed before.

The image history lives in the template's `readme` (shown in RunPod's console), newest first, so a
rollback finds the previous image wherever it runs, CI included.
"""

from __future__ import annotations

from .errors import DeployError
from .settings import Environment

HISTORY_PREFIX = "Deployed by `python -m infra.deploy`. Images, newest first: "
HISTORY_LENGTH = 10


def image_history(template: dict | None) -> list[str]:
    """The images a template has run, newest (its current image) first."""
    if template is None:
        return []
    readme = template.get("readme") or ""
    recorded = readme.removeprefix(HISTORY_PREFIX).split(", ") if readme.startswith(HISTORY_PREFIX) else []
    return _unique([template.get("imageName"), *recorded])


def previous_image(template: dict | None, template_name: str) -> str:
    """The image deployed before the template's current one."""
    current, *earlier = image_history(template) or [None]
    if not earlier:
        found = f"runs {current} and records no earlier image" if template else "does not exist"
        raise DeployError(f"cannot roll back: template {template_name} {found}; name an image tag with --to")
    return earlier[0]


def desired_template(environment: Environment, image: str, current: dict | None) -> dict:
    """The template body: the settings, the image, and the history with this image first. Serverless
    workers have no Pod volume (volumeInGb 0)."""
    history = _unique([image, *image_history(current)])[:HISTORY_LENGTH]
    return {**environment.template, "imageName": image, "isServerless": True, "volumeInGb": 0,
            "readme": HISTORY_PREFIX + ", ".join(history)}


def desired_endpoint(environment: Environment, template_id: str) -> dict:
    return {**environment.endpoint, "templateId": template_id}


def _unique(items: list[str | None]) -> list[str]:
    """`items` without blanks and repeats, in order."""
    return list(dict.fromkeys(item for item in items if item))
