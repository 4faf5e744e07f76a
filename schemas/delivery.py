"""How a job's images are delivered: the per-request `delivery` field and RunPod's job `s3Config`."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class DeliveryRequest(BaseModel):
    """`input.delivery`: base64 in the response, or an upload to an S3-compatible bucket."""

    model_config = ConfigDict(extra="forbid")

    mode: Literal["base64", "s3"] | None = Field(None, description="default: s3 when a bucket is configured")
    bucket: str | None = Field(None, min_length=3, max_length=63, description="overrides the configured bucket")
    prefix: str | None = Field(None, max_length=512, description="overrides the configured key prefix")


class S3Config(BaseModel):
    """RunPod's job-level `s3Config` (sent beside `input`); it overrides the worker's BUCKET_* settings."""

    model_config = ConfigDict(extra="ignore")

    accessId: str | None = None
    accessSecret: str | None = None
    bucketName: str | None = None
    endpointUrl: str | None = None
