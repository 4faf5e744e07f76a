"""The router: one table from an A1111 (method, endpoint) to an operation and how it is scheduled (read at
once, or wait for the one queue of generations and state changes), shared by every adapter.

Endpoints are named without A1111's /sdapi/v1/ prefix ("txt2img"); the sd-webui-controlnet extension's are served
outside it, at /controlnet/... ("controlnet/detect"), as the extension serves them."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from enum import Enum
from typing import TYPE_CHECKING, Any, NamedTuple

from engine.tasks.generation import Generation
from engine.imaging.images import decode_image, read_infotext
from schemas import (ExtrasBatchImagesRequest, ExtrasBatchImagesResponse, ExtrasRequest, ExtrasSingleImageRequest,
                     ExtrasSingleImageResponse, GenerationRequest, ImageResponse, Img2ImgRequest, InterrogateRequest,
                     InterrogateResponse, PngInfoRequest, PngInfoResponse, Txt2ImgRequest)

from schemas.controlnet import FIELD as CONTROLNET_FIELD
from schemas.errors import cut
from schemas.infotext import parse_infotext
from schemas.payload import check_payload
from schemas.scripts import SdUpscaleArgs

from . import control, controlnet, listings, scripts
from .delivery import Destination, deliver, encoded_images

if TYPE_CHECKING:
    from PIL import Image
    from pydantic import BaseModel

    from engine.runtime import Engine

API_PREFIX = "sdapi/v1/"
EXTENSION_PREFIXES = ("controlnet/",)  # endpoints served at /<name>, outside API_PREFIX


class UnknownEndpoint(LookupError):
    """No operation for this method and endpoint."""


def _image_response(request: GenerationRequest, generation: Generation, echoed: dict[str, Any],
                    destination: Destination) -> dict[str, Any]:
    images, note = deliver(encoded_images(generation), destination) if request.send_images else ([], None)
    body = ImageResponse(images=images, parameters=echoed, info=json.dumps(generation.info)).model_dump()
    return {**body, "delivery": note} if note else body


def _styled(engine: Engine, request: GenerationRequest) -> GenerationRequest:
    """The request with its prompt styles applied: what the engine generates (the response echoes the request)."""
    return request.with_styles(engine.styles.find(request.styles or ()))


def _control_images(request: GenerationRequest) -> list[tuple[Image.Image | None, Image.Image | None]]:
    """The enabled ControlNet units' images and masks, decoded (None where a unit sent none)."""
    def decoded(data: str | None, field: str) -> Image.Image | None:
        return decode_image(data, field) if data else None

    return [(decoded(unit.image, f"{CONTROLNET_FIELD}[{index}].image"),
             decoded(unit.mask, f"{CONTROLNET_FIELD}[{index}].mask")) for index, unit in request.control_units]


def txt2img(engine: Engine, payload: dict[str, Any], destination: Destination) -> dict[str, Any]:
    request = Txt2ImgRequest.model_validate(payload)
    firstpass = decode_image(request.firstpass_image, "firstpass_image") if request.firstpass_image else None
    controls = _control_images(request)
    generation = scripts.generate(request, destination,
                                  lambda line: engine.txt2img(_styled(engine, line), firstpass, controls))
    return _image_response(request, generation, request.model_dump(mode="json"), destination)


def img2img(engine: Engine, payload: dict[str, Any], destination: Destination) -> dict[str, Any]:
    request = Img2ImgRequest.model_validate(payload)
    init_images = [decode_image(data, f"init_images.{i}") for i, data in enumerate(request.init_images)]
    mask = decode_image(request.mask, "mask") if request.mask else None
    latent_mask = decode_image(request.latent_mask, "latent_mask") if request.latent_mask else None
    controls = _control_images(request)
    if isinstance(request.script, SdUpscaleArgs):
        generation = scripts.sd_upscale(engine, _styled(engine, request), init_images[0], destination)
    else:
        generation = scripts.generate(request, destination, lambda line: engine.img2img(
            _styled(engine, line), init_images, mask, latent_mask, controls))
    return _image_response(request, generation, request.echo(), destination)


def png_info(engine: Engine, payload: dict[str, Any], destination: Destination) -> dict[str, Any]:
    request = PngInfoRequest.model_validate(payload)
    infotext, items = read_infotext(decode_image(request.image, "image"))
    parameters = parse_infotext(infotext) if infotext else {}
    return PngInfoResponse(info=infotext or "", items=items, parameters=parameters).model_dump()


def interrogate(engine: Engine, payload: dict[str, Any], destination: Destination) -> dict[str, Any]:
    request = InterrogateRequest.model_validate(payload)
    caption = engine.interrogate(request, decode_image(request.image, "image"))
    return InterrogateResponse(caption=caption).model_dump()


def _extras_response(engine: Engine, request: ExtrasRequest, images: list[Image.Image], destination: Destination,
                     respond: Callable[[list[str], str], BaseModel]) -> dict[str, Any]:
    """`respond(images, html_info)` builds the endpoint's body."""
    result = engine.extras(request, images)
    delivered, note = deliver(result.images, destination)
    body = respond(delivered, result.html_info).model_dump()
    return {**body, "delivery": note} if note else body


def extra_single_image(engine: Engine, payload: dict[str, Any], destination: Destination) -> dict[str, Any]:
    request = ExtrasSingleImageRequest.model_validate(payload)
    return _extras_response(engine, request, [decode_image(request.image, "image")], destination,
                            lambda images, html_info: ExtrasSingleImageResponse(image=images[0], html_info=html_info))


def extra_batch_images(engine: Engine, payload: dict[str, Any], destination: Destination) -> dict[str, Any]:
    request = ExtrasBatchImagesRequest.model_validate(payload)
    images = [decode_image(item.data, f"imageList.{i}.data") for i, item in enumerate(request.imageList)]
    return _extras_response(engine, request, images, destination,
                            lambda images, html_info: ExtrasBatchImagesResponse(images=images, html_info=html_info))


Operation = Callable[["Engine", dict[str, Any], Destination], Any]


class Kind(Enum):
    """How an endpoint is scheduled beside the others."""

    READ = "read"  # reads state, or signals the running job (/interrupt, /skip): never waits
    CHANGE = "change"  # changes loaded models, options or the file lists: waits for its turn in the queue
    GENERATE = "generate"  # waits for its turn in the queue too, and /progress reports it


class Route(NamedTuple):
    operation: Operation
    kind: Kind


READ, CHANGE, GENERATE = Kind.READ, Kind.CHANGE, Kind.GENERATE

ROUTES: dict[tuple[str, str], Route] = {
    ("POST", "txt2img"): Route(txt2img, GENERATE),
    ("POST", "img2img"): Route(img2img, GENERATE),
    ("POST", "png-info"): Route(png_info, READ),
    ("POST", "extra-single-image"): Route(extra_single_image, GENERATE),
    ("POST", "extra-batch-images"): Route(extra_batch_images, GENERATE),
    ("POST", "interrogate"): Route(interrogate, GENERATE),  # runs a network: one at a time, like generations
    ("GET", "options"): Route(control.get_options, READ),
    ("POST", "options"): Route(control.set_options, CHANGE),
    ("GET", "progress"): Route(control.progress, READ),
    ("POST", "interrupt"): Route(control.interrupt, READ),
    ("POST", "skip"): Route(control.skip, READ),
    ("POST", "refresh-checkpoints"): Route(control.refresh_checkpoints, CHANGE),
    ("POST", "refresh-vae"): Route(control.refresh_vae, CHANGE),
    ("POST", "refresh-loras"): Route(control.refresh_loras, CHANGE),
    ("POST", "refresh-embeddings"): Route(control.refresh_embeddings, CHANGE),
    ("POST", "unload-checkpoint"): Route(control.unload_checkpoint, CHANGE),
    ("POST", "reload-checkpoint"): Route(control.reload_checkpoint, CHANGE),
    ("GET", "sd-models"): Route(listings.sd_models, READ),
    ("GET", "samplers"): Route(listings.samplers, READ),
    ("GET", "schedulers"): Route(listings.schedulers, READ),
    ("GET", "upscalers"): Route(listings.upscalers, READ),
    ("GET", "latent-upscale-modes"): Route(listings.latent_upscale_modes, READ),
    ("GET", "sd-vae"): Route(listings.sd_vae, READ),
    ("GET", "sd-modules"): Route(listings.sd_modules, READ),
    ("GET", "loras"): Route(listings.loras, READ),
    ("GET", "hypernetworks"): Route(listings.nothing_listed, READ),
    ("GET", "prompt-styles"): Route(listings.prompt_styles, READ),
    ("GET", "face-restorers"): Route(listings.face_restorers, READ),
    ("GET", "realesrgan-models"): Route(listings.realesrgan_models, READ),
    ("GET", "embeddings"): Route(listings.embeddings, READ),
    ("GET", "scripts"): Route(listings.scripts, READ),
    ("GET", "script-info"): Route(listings.script_info, READ),
    ("GET", "extensions"): Route(listings.nothing_listed, READ),
    ("GET", "cmd-flags"): Route(listings.cmd_flags, READ),
    ("GET", "memory"): Route(listings.memory, READ),
    # the sd-webui-controlnet extension's
    ("GET", "controlnet/version"): Route(controlnet.version, READ),
    ("GET", "controlnet/model_list"): Route(controlnet.model_list, READ),
    ("GET", "controlnet/module_list"): Route(controlnet.module_list, READ),
    ("GET", "controlnet/control_types"): Route(controlnet.control_types, READ),
    ("GET", "controlnet/settings"): Route(controlnet.settings, READ),
    ("POST", "controlnet/detect"): Route(controlnet.detect, GENERATE),  # runs networks: one at a time
    # A1111 endpoints a serverless worker refuses (NotOffered), at once
    ("POST", "create/embedding"): Route(control.not_offered(control.NO_TRAINING), READ),
    ("POST", "create/hypernetwork"): Route(control.not_offered(control.NO_TRAINING), READ),
    ("POST", "train/embedding"): Route(control.not_offered(control.NO_TRAINING), READ),
    ("POST", "train/hypernetwork"): Route(control.not_offered(control.NO_TRAINING), READ),
    ("POST", "server-kill"): Route(control.not_offered(control.NO_SERVER_CONTROL), READ),
    ("POST", "server-restart"): Route(control.not_offered(control.NO_SERVER_CONTROL), READ),
    ("POST", "server-stop"): Route(control.not_offered(control.NO_SERVER_CONTROL), READ),
}


def normalize_endpoint(endpoint: str) -> str:
    """"/sdapi/v1/txt2img", "sdapi/v1/txt2img" and "txt2img" all name the same endpoint; so do
    "/controlnet/detect" and "controlnet/detect"."""
    return endpoint.strip().strip("/").removeprefix(API_PREFIX)


def http_path(endpoint: str) -> str:
    """The HTTP path an endpoint is served at: "/sdapi/v1/txt2img", "/controlnet/detect"."""
    return f"/{endpoint}" if endpoint.startswith(EXTENSION_PREFIXES) else f"/{API_PREFIX}{endpoint}"


def _key(method: str, endpoint: str) -> tuple[str, str]:
    return method.upper(), normalize_endpoint(endpoint)


def queued(method: str, endpoint: str) -> bool:
    """Whether the endpoint generates or changes state, so that it must wait for the one generation queue
    (an adapter that runs several requests at once serializes these; an unknown endpoint is not queued)."""
    entry = ROUTES.get(_key(method, endpoint))
    return entry is not None and entry.kind is not READ


def _not_offered(method: str, endpoint: str) -> UnknownEndpoint:
    """The error for an endpoint not in ROUTES: the method to use if only that is wrong, else the generating ones."""
    other = next((m for m, e in ROUTES if e == endpoint and m != method), None)
    hint = (f"use {other} {http_path(endpoint)}" if other else "the generating endpoints are " + ", ".join(
        f"{m} {http_path(e)}" for (m, e), entry in ROUTES.items() if entry.kind is GENERATE))
    return UnknownEndpoint(f"api.endpoint: {method} {http_path(cut(endpoint))} is not offered; {hint}")


def route(engine: Engine, method: str, endpoint: str, payload: dict[str, Any],
          destination: Destination | None = None, previews: int | None = None) -> Any:
    """Run an endpoint's operation; images go to `destination` (default: base64, or the BUCKET_* bucket). A generation
    keeps a live preview every `previews` steps (0: none; None: as A1111's options say)."""
    destination = destination or Destination.for_job(uuid.uuid4().hex)
    key = _key(method, endpoint)
    if key not in ROUTES:
        raise _not_offered(*key)
    check_payload(payload)
    operation, kind = ROUTES[key]
    if kind is not GENERATE:
        return operation(engine, payload, destination)
    every = control.preview_period(engine.options) if previews is None else previews
    engine.progress.begin(key[1], preview_every=every)
    try:
        return operation(engine, payload, destination)
    finally:
        engine.progress.end()
