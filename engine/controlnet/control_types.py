"""/controlnet/control_types: the extension's control-type filters (All, Canny, Depth, ...), computed from the modules
this worker offers and the models it lists, by the extension's rules.

The types are "All" and every tag of an offered module, sorted. A type lists "none" and the modules tagged with it
(in /controlnet/module_list's order, as labels), defaulting to the first after "none"; and "None" and the models
whose lower-cased title holds the type's lower-cased name, one of its aliases, or "union" for the types a
ControlNet Union model handles, defaulting to the first with "11" in its name (a ControlNet 1.1 model), else the
first after "None". The extension's API does not filter by the checkpoint's family, and neither does this.
"""

from __future__ import annotations

from .preprocessors import PREPROCESSORS, find_preprocessor, module_list

ALL = "All"
NO_MODULE, NO_MODEL = "none", "None"
# the extension's other names for a type's models
_ALIASES = {"instructp2p": ("ip2p",), "segmentation": ("seg",), "normalmap": ("normal",),
            "t2i-adapter": ("t2i_adapter", "t2iadapter", "t2ia"), "ip-adapter": ("ip_adapter", "ipadapter"),
            "openpose": ("openpose", "densepose"), "instant-id": ("instant_id", "instantid"),
            "scribble": ("sketch",), "tile": ("blur",)}
# the types a ControlNet Union model handles: "union" models are listed under them too
_UNION = frozenset({"openpose", "depth", "softedge", "scribble", "canny", "lineart", "mlsd", "normalmap",
                    "segmentation", "inpaint", "tile"})


def control_types(models: list[str]) -> dict[str, dict]:
    """{type: {module_list, model_list, default_option, default_model}}; `models`: the titles, "None" first."""
    tags = sorted({tag for preprocessor in PREPROCESSORS for tag in preprocessor.tags})
    return {tag: control_type(tag, models) for tag in (ALL, *tags)}


def control_type(tag: str, models: list[str]) -> dict:
    if tag.lower() == ALL.lower():
        return _entry(module_list(alias_names=True), models, NO_MODULE, NO_MODEL)
    modules = [label for label in module_list(alias_names=True)
               if label == NO_MODULE or tag in find_preprocessor(label).tags]
    wanted = {tag.lower(), *_ALIASES.get(tag.lower(), ()), *(("union",) if tag.lower() in _UNION else ())}
    chosen = [m for m in models if m.lower() == NO_MODEL.lower() or any(part in m.lower() for part in wanted)]
    default_model = NO_MODEL if len(chosen) < 2 else next((m for m in chosen if "11" in m.split("[")[0]), chosen[1])
    return _entry(modules, chosen, modules[0] if len(modules) == 1 else modules[1], default_model)


def _entry(modules: list[str], models: list[str], default_option: str, default_model: str) -> dict:
    return {"module_list": modules, "model_list": models, "default_option": default_option,
            "default_model": default_model}
