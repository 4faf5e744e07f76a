"""The router: one table from an A1111 (method, endpoint) to an operation, shared by every adapter."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from engine.images import decode_image, read_infotext
from engine.infotext import parse_infotext
from engine.generation import Generation
from schemas import (ExtrasBatchImagesRequest, ExtrasBatchImagesResponse, ExtrasRequest, ExtrasSingleImageRequest,
                     ExtrasSingleImageResponse, GenerationRequest, ImageResponse, Img2ImgRequest, PngInfoRequest,
                     PngInfoResponse, Txt2ImgRequest)

from schemas.errors import cut
from schemas.payload import check_payload

from . import control, listings
from .delivery import Destination, deliver, encoded_images

if TYPE_CHECKING:
    from PIL import Image
    from pydantic import BaseModel

    from engine.runtime import Engine

API_PREFIX = "sdapi/v1/"


class UnknownEndpoint(LookupError):
    """No operation for this method and endpoint."""


def _image_response(request: GenerationRequest, generation: Generation, echoed: dict[str, Any],
                    destination: Destination) -> dict[str, Any]:
    images, note = deliver(encoded_images(generation), destination) if request.send_images else ([], None)
    body = ImageResponse(images=images, parameters=echoed, info=json.dumps(generation.info)).model_dump()
    return {**body, "delivery": note} if note else body


def _preflight(request: GenerationRequest, destination: Destination) -> None:
    if request.send_images:
        destination.preflight(request.batch_size * request.n_iter, *request.output_size)


def txt2img(engine: Engine, payload: dict[str, Any], destination: Destination) -> dict[str, Any]:
    request = Txt2ImgRequest.model_validate(payload)
    _preflight(request, destination)
    return _image_response(request, engine.txt2img(request), request.model_dump(mode="json"), destination)


def img2img(engine: Engine, payload: dict[str, Any], destination: Destination) -> dict[str, Any]:
    request = Img2ImgRequest.model_validate(payload)
    _preflight(request, destination)
    init_images = [decode_image(data, f"init_images.{i}") for i, data in enumerate(request.init_images)]
    mask = decode_image(request.mask, "mask") if request.mask else None
    return _image_response(request, engine.img2img(request, init_images, mask), request.echo(), destination)


def png_info(engine: Engine, payload: dict[str, Any], destination: Destination) -> dict[str, Any]:
    request = PngInfoRequest.model_validate(payload)
    infotext, items = read_infotext(decode_image(request.image, "image"))
    parameters = parse_infotext(infotext) if infotext else {}
    return PngInfoResponse(info=infotext or "", items=items, parameters=parameters).model_dump()


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

ROUTES: dict[tuple[str, str], Operation] = {
    ("POST", "txt2img"): txt2img,
    ("POST", "img2img"): img2img,
    ("POST", "png-info"): png_info,
    ("POST", "extra-single-image"): extra_single_image,
    ("POST", "extra-batch-images"): extra_batch_images,
    ("GET", "options"): control.get_options,
    ("POST", "options"): control.set_options,
    ("GET", "progress"): control.progress,
    ("POST", "interrupt"): control.interrupt,
    ("POST", "skip"): control.skip,
    ("POST", "refresh-checkpoints"): control.refresh_checkpoints,
    ("POST", "refresh-vae"): control.refresh_vae,
    ("POST", "refresh-loras"): control.refresh_loras,
    ("POST", "refresh-embeddings"): control.refresh_embeddings,
    ("POST", "unload-checkpoint"): control.unload_checkpoint,
    ("POST", "reload-checkpoint"): control.reload_checkpoint,
    ("GET", "sd-models"): listings.sd_models,
    ("GET", "samplers"): listings.samplers,
    ("GET", "schedulers"): listings.schedulers,
    ("GET", "upscalers"): listings.upscalers,
    ("GET", "latent-upscale-modes"): listings.latent_upscale_modes,
    ("GET", "sd-vae"): listings.sd_vae,
    ("GET", "loras"): listings.loras,
    ("GET", "hypernetworks"): listings.nothing_listed,
    ("GET", "prompt-styles"): listings.nothing_listed,
    ("GET", "face-restorers"): listings.face_restorers,
    ("GET", "embeddings"): listings.embeddings,
    ("GET", "scripts"): listings.scripts,
    ("GET", "cmd-flags"): listings.cmd_flags,
    ("GET", "memory"): listings.memory,
}


# endpoints that generate or load models: one runs at a time, and /progress reports it
GENERATION_ENDPOINTS = {"txt2img", "img2img", "extra-single-image", "extra-batch-images"}


def normalize_endpoint(endpoint: str) -> str:
    """"/sdapi/v1/txt2img", "sdapi/v1/txt2img" and "txt2img" all name the same endpoint."""
    return endpoint.strip().strip("/").removeprefix(API_PREFIX)


def route(engine: Engine, method: str, endpoint: str, payload: dict[str, Any],
          destination: Destination | None = None) -> Any:
    """Run an endpoint's operation; images go to `destination` (default: base64, or the BUCKET_* bucket)."""
    destination = destination or Destination.for_job(uuid.uuid4().hex)
    key = (method.upper(), normalize_endpoint(endpoint))
    if key not in ROUTES:
        offered = ", ".join(f"{m} /{API_PREFIX}{e}" for m, e in ROUTES)
        raise UnknownEndpoint(f"api.endpoint: {key[0]} /{API_PREFIX}{cut(key[1])} is not offered; offered: {offered}")
    check_payload(payload)
    if key[1] not in GENERATION_ENDPOINTS:
        return ROUTES[key](engine, payload, destination)
    engine.progress.begin(key[1])
    try:
        return ROUTES[key](engine, payload, destination)
    finally:
        engine.progress.end()
