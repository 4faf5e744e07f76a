"""Compare what RunPod holds with what the settings want, describe the difference, and apply it.

Each resource is found by name (an endpoint's name may carry RunPod's " -fb" FlashBoot suffix). Absent, it
is created with the whole body (POST); present, only the fields that differ are sent (PATCH); equal,
nothing is sent. The template goes first: the endpoint refers to it by id.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace

from .errors import DeployError
from .resources import desired_endpoint, desired_template
from .runpod_api import RunPodApi
from .settings import Environment

PATHS = {"template": "/templates", "endpoint": "/endpoints"}
NEW_TEMPLATE_ID = "<id of the new template>"
FLASHBOOT_SUFFIX = " -fb"


@dataclass(frozen=True)
class Step:
    kind: str  # "template" or "endpoint"
    current: dict | None  # as RunPod holds it; None: to be created
    desired: dict

    @property
    def changes(self) -> dict[str, tuple]:
        """{field: (current value, desired value)} for the fields to send: all on creation, else those
        that differ (the name is how the resource was found, so it is never changed)."""
        if self.current is None:
            return {key: (None, value) for key, value in self.desired.items()}
        return {key: (self.current.get(key), value) for key, value in self.desired.items()
                if key != "name" and self.current.get(key) != value}

    @property
    def action(self) -> str:
        return "create" if self.current is None else "update" if self.changes else "unchanged"

    def describe(self) -> list[str]:
        found = f" (id {self.current['id']})" if self.current else ""
        lines = [f"{self.kind} {self.desired['name']}{found}: {self.action}"]
        for key, (old, new) in self.changes.items():
            lines += _change_lines(key, old, new, creating=self.current is None)
        return lines

    def apply(self, api: RunPodApi) -> str:
        """Sends what the step needs; the resource's id."""
        if self.current is None:
            created = api.post(PATHS[self.kind], self.desired)
            if not isinstance(created, dict) or not created.get("id"):
                raise DeployError(f"RunPod API: creating {self.kind} {self.desired['name']} returned no id")
            return created["id"]
        if self.changes:
            api.patch(f"{PATHS[self.kind]}/{self.current['id']}", {key: new for key, (_, new) in self.changes.items()})
        return self.current["id"]


@dataclass(frozen=True)
class Plan:
    template: Step
    endpoint: Step

    @property
    def changes_anything(self) -> bool:
        return self.template.action != "unchanged" or self.endpoint.action != "unchanged"

    def describe(self) -> list[str]:
        return self.template.describe() + self.endpoint.describe()

    def apply(self, api: RunPodApi) -> str:
        """Applies the template step, then the endpoint step with the template's id; the endpoint's id."""
        template_id = self.template.apply(api)
        endpoint = self.endpoint
        if endpoint.desired["templateId"] == NEW_TEMPLATE_ID:
            endpoint = replace(endpoint, desired={**endpoint.desired, "templateId": template_id})
        return endpoint.apply(api)


def current_state(api: RunPodApi | None, environment: Environment) -> tuple[dict | None, dict | None]:
    """The environment's template and endpoint as RunPod holds them (None: absent, or no API to ask)."""
    if api is None:
        return None, None
    return (find(api.get(PATHS["template"]), environment.template["name"], "template"),
            find(api.get(PATHS["endpoint"]), environment.endpoint["name"], "endpoint"))


def make_plan(environment: Environment, image: str, template: dict | None, endpoint: dict | None) -> Plan:
    template_id = template["id"] if template else NEW_TEMPLATE_ID
    return Plan(Step("template", template, desired_template(environment, image, template)),
                Step("endpoint", endpoint, desired_endpoint(environment, template_id)))


def find(items, name: str, kind: str) -> dict | None:
    """The one resource in a listing named `name` (or `name -fb`), or None."""
    if not isinstance(items, list):
        raise DeployError(f"RunPod API: the {kind} listing is not a list")
    matches = [item for item in items if item.get("name") in (name, name + FLASHBOOT_SUFFIX)]
    if len(matches) > 1:
        ids = ", ".join(str(item.get("id")) for item in matches)
        raise DeployError(f"{len(matches)} {kind}s are named {name} (ids {ids}): rename or delete all but one")
    return matches[0] if matches else None


def _change_lines(key: str, old, new, creating: bool) -> list[str]:
    """One line per changed value; mappings (env) one line per changed key."""
    if isinstance(new, dict) and isinstance(old, dict | None):
        old = old or {}
        return [line for sub in sorted(old.keys() | new.keys()) if old.get(sub) != new.get(sub)
                for line in _change_lines(f"{key}.{sub}", old.get(sub), new.get(sub), creating)]
    return [f"  {key}: {_show(new)}" if creating else f"  {key}: {_show(old)} -> {_show(new)}"]


def _show(value) -> str:
    return "(unset)" if value is None else json.dumps(value)
