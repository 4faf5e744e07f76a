"""How a job's images are delivered: the per-request `delivery` field and RunPod's job `s3Config`."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from .errors import RequestError


class DeliveryRequest(BaseModel):
    """`input.delivery`: base64 in the response, or an upload to an S3-compatible bucket."""

    model_config = ConfigDict(extra="forbid")

    mode: Literal["base64", "s3"] | None = Field(None, description="default: s3 when a bucket is configured")
    bucket: str | None = Field(None, min_length=3, max_length=63,
                               description="another bucket: one the operator allowed (BUCKET_ALLOWED), or the "
                                           "job's own when its s3Config carries credentials")
    prefix: str | None = Field(None, max_length=512, description="overrides the configured key prefix")


class S3Config(BaseModel):
    """RunPod's job-level `s3Config` (sent beside `input`): the job's own bucket and credentials.

    With accessId and accessSecret, the job's bucket is used with those keys only. Without them, it
    may only name a bucket the operator allowed, which then gets the operator's credentials.
    """

    model_config = ConfigDict(extra="ignore")

    accessId: str | None = None
    accessSecret: str | None = None
    bucketName: str | None = None
    endpointUrl: str | None = None

    def own_credentials(self) -> bool:
        """Whether the job brings its own keys; half a pair is a RequestError naming the missing half."""
        if bool(self.accessId) == bool(self.accessSecret):
            return bool(self.accessId)
        missing, given = ("accessSecret", "accessId") if self.accessId else ("accessId", "accessSecret")
        raise RequestError(f"s3Config.{missing}", f"required with s3Config.{given}")
