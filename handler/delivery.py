"""Output delivery: images as base64 in A1111's `images`, or as URLs of uploads to a bucket.

Nothing is lost silently: base64 over the platform's response limit is uploaded instead when a
bucket is configured, and fails with a clear error otherwise; a failed upload falls back to base64
when that fits. Whenever delivery is not plain base64, the response says so in `delivery`.
"""

from __future__ import annotations

import base64
import os
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ValidationError

from engine.tasks.generation import Generation
from engine.imaging.images import EncodedImage, encode_image
from schemas import RequestError
from schemas.delivery import DeliveryRequest, S3Config

from .bucket_policy import job_bucket
from .errors import describe
from .s3 import Bucket, UploadError, upload

DEFAULT_RESPONSE_LIMIT_MB = 10  # RunPod returns at most 10 MB from /run (20 MB from /runsync)
# The fewest base64 bytes a generated image plausibly takes per pixel (JPEG at low quality): a request
# over the limit even at this rate can't be answered in base64, so it is refused before any GPU time.
MIN_BASE64_BYTES_PER_PIXEL = 0.15


class DeliveryError(RuntimeError):
    """The images can't be delivered; the message says why and what would fix it."""


@dataclass(frozen=True)
class Destination:
    """Where one job's images go."""

    job_id: str
    mode: str  # "base64" or "s3"
    bucket: Bucket | None  # the bucket the rules allow the job (handler/bucket_policy.py), or None
    limit: int  # the most base64 bytes the response may carry

    @classmethod
    def for_job(cls, job_id: str, delivery: dict | None = None, s3_config: dict | None = None,
                env=os.environ) -> Destination:
        """The job's destination from its `delivery` and `s3Config` and the operator's settings; every rule
        of handler/bucket_policy.py is checked here, before any generation work."""
        request = _parsed("delivery", DeliveryRequest, delivery)
        bucket = job_bucket(request, _parsed("s3Config", S3Config, s3_config or None), env)
        mode = (request and request.mode) or ("s3" if bucket else "base64")
        if mode == "s3" and bucket is None:
            raise RequestError("delivery.mode", "s3 needs a bucket: set BUCKET_NAME and the BUCKET_* settings, "
                                                "or send the job's s3Config with its own credentials")
        limit = int(float(env.get("RESPONSE_LIMIT_MB", DEFAULT_RESPONSE_LIMIT_MB)) * 1_000_000)
        return cls(job_id, mode, bucket, limit)

    def preflight(self, count: int, width: int, height: int) -> None:
        """Refuse, before generating, a base64-only request whose images can't fit in the response."""
        if self.bucket is not None or count * width * height * MIN_BASE64_BYTES_PER_PIXEL <= self.limit:
            return
        raise RequestError("batch_size", f"{count} images of {width}x{height} can't fit in the "
                                         f"{self.limit / 1e6:g} MB response as base64; {_FIX}")


def _parsed(field: str, model: type[BaseModel], value: Any) -> Any:
    """`value` validated as `model`, None for None; errors name the field and never echo a value (a secret)."""
    if value is None:
        return None
    try:
        return model.model_validate(value)
    except ValidationError as error:
        raise RequestError(field, describe(error, inputs=False)) from None


_FIX = "configure a bucket (BUCKET_* settings or the job's s3Config) or ask for fewer or smaller images"


def encoded_images(generation: Generation) -> list[EncodedImage]:
    """The images with their infotexts, then the extra images (ControlNet's detected maps), in samples_format."""
    options = generation.options
    return [*(encode_image(g.image, g.infotext, options.samples_format, options.jpeg_quality)
              for g in generation.images),
            *(encode_image(image, None, options.samples_format, options.jpeg_quality)
              for image in generation.extra_images)]


def deliver(images: list[EncodedImage], destination: Destination) -> tuple[list[str], dict[str, Any] | None]:
    """(the response's `images`: base64 strings or URLs, a `delivery` note or None for plain base64)."""
    if destination.mode == "s3":
        try:
            return upload(destination.bucket, destination.job_id, images), _uploaded(destination)
        except UploadError as error:
            encoded = _base64(images)
            if _size(encoded) <= destination.limit:
                return encoded, {"mode": "base64", "note": f"{error}; the images are returned as base64 instead"}
            raise DeliveryError(f"{error}; and as base64 the images ({_size(encoded) / 1e6:.1f} MB) exceed the "
                                f"{destination.limit / 1e6:g} MB response limit") from None
    encoded = _base64(images)
    if _size(encoded) <= destination.limit:
        return encoded, None
    note = (f"the images ({_size(encoded) / 1e6:.1f} MB as base64) exceed the {destination.limit / 1e6:g} MB "
            "response limit")
    if destination.bucket is None:
        raise DeliveryError(f"output: {note}; {_FIX}")
    try:
        urls = upload(destination.bucket, destination.job_id, images)
    except UploadError as error:
        raise DeliveryError(f"output: {note}, and {error}") from None
    return urls, {**_uploaded(destination), "note": f"{note}: uploaded instead"}


def _uploaded(destination: Destination) -> dict[str, Any]:
    return {"mode": "s3", "bucket": destination.bucket.name}


def _base64(images: list[EncodedImage]) -> list[str]:
    return [base64.b64encode(image.data).decode("ascii") for image in images]


def _size(encoded: list[str]) -> int:
    return sum(len(e) for e in encoded)
