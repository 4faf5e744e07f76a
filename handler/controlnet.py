"""The sd-webui-controlnet extension's endpoints (/controlnet/..., outside /sdapi/v1), in its response shapes.
GET ones take their query parameters as the payload (`?alias_names=true`, or the envelope's payload)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from engine.controlnet.control_types import NO_MODEL, control_types as compute_control_types
from engine.controlnet.detect import detect as detect_maps
from engine.controlnet.preprocessors import module_detail, module_list as module_names
from engine.faults import out_of_memory_as_error
from engine.imaging.images import decode_image, encode_image
from schemas import limits
from schemas.controlnet import API_VERSION, DetectRequest, DetectResponse, ModelListQuery, ModuleListQuery

from .delivery import Destination, deliver

if TYPE_CHECKING:
    from engine.runtime import Engine


def version(engine: Engine, payload: dict, destination: Destination) -> dict[str, int]:
    return {"version": API_VERSION}


def model_list(engine: Engine, payload: dict, destination: Destination) -> dict[str, list[str]]:
    """The ControlNet files' titles ("name [hash]"), after looking in ControlNet/ again unless update=false."""
    if ModelListQuery.model_validate(payload).update:
        engine.controlnets.refresh()
    return {"model_list": engine.controlnets.listing()}


def module_list(engine: Engine, payload: dict, destination: Destination) -> dict[str, Any]:
    alias_names = ModuleListQuery.model_validate(payload).alias_names
    return {"module_list": module_names(alias_names), "module_detail": module_detail(alias_names)}


def control_types(engine: Engine, payload: dict, destination: Destination) -> dict[str, dict]:
    return {"control_types": compute_control_types([NO_MODEL, *engine.controlnets.files])}


def settings(engine: Engine, payload: dict, destination: Destination) -> dict[str, int]:
    """The units a request may send (WORKER_MAX_CONTROLNET_UNITS), where the extension reports its UI's."""
    return {"control_net_unit_count": limits.MAX_CONTROLNET_UNITS}


def detect(engine: Engine, payload: dict, destination: Destination) -> dict[str, Any]:
    request = DetectRequest.model_validate(payload)
    images = [decode_image(data, f"controlnet_input_images.{i}")
              for i, data in enumerate(request.controlnet_input_images)]
    masks = [decode_image(data, f"controlnet_masks.{i}") for i, data in enumerate(request.controlnet_masks)]
    with out_of_memory_as_error(engine.device, f"detecting {len(images)} image(s)"):
        maps = detect_maps(engine.annotators, request.controlnet_module, images, masks,
                           request.controlnet_processor_res, request.controlnet_threshold_a,
                           request.controlnet_threshold_b)
    options = engine.options
    delivered, note = deliver([encode_image(image, None, options.samples_format, options.jpeg_quality)
                               for image in maps], destination)
    body = DetectResponse(images=delivered).model_dump()
    return {**body, "delivery": note} if note else body
