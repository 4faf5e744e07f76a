"""Uploads to S3-compatible buckets (AWS S3, Cloudflare R2, MinIO, Backblaze B2, ...).

boto3 is imported only here, and only when a job uploads (it costs cold-start time otherwise).
Retries are boto3's own ("standard" mode). Checksums are computed only when required and the
signature is s3v4: what R2 and MinIO accept, which recent boto3 defaults break.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace

from schemas.delivery import DeliveryRequest, S3Config


class UploadError(RuntimeError):
    """An upload failed after boto3's retries; the message names the bucket and the cause, never a secret."""


@dataclass(frozen=True)
class Bucket:
    name: str
    endpoint_url: str | None = None
    access_key_id: str | None = None
    secret_access_key: str | None = None
    region: str | None = None
    prefix: str = ""
    public_url: str | None = None  # set: plain object URLs under it; unset: presigned GET URLs
    expiry: int = 7 * 24 * 3600  # presigned URL lifetime, seconds
    addressing_style: str = "path"  # what MinIO needs and R2 and AWS accept
    max_attempts: int = 3

    def __repr__(self) -> str:  # never print credentials
        return f"Bucket(name={self.name!r}, endpoint_url={self.endpoint_url!r}, prefix={self.prefix!r})"

    @classmethod
    def from_env(cls, env=os.environ) -> Bucket | None:
        """RunPod's BUCKET_* convention; None when no bucket is configured."""
        name = env.get("BUCKET_NAME")
        if not name:
            return None
        return cls(
            name=name,
            endpoint_url=env.get("BUCKET_ENDPOINT_URL") or None,
            access_key_id=env.get("BUCKET_ACCESS_KEY_ID") or None,
            secret_access_key=env.get("BUCKET_SECRET_ACCESS_KEY") or None,
            region=env.get("BUCKET_REGION") or None,
            prefix=env.get("BUCKET_PREFIX", ""),
            public_url=env.get("BUCKET_PUBLIC_URL") or None,
            expiry=int(env.get("BUCKET_URL_EXPIRY", 7 * 24 * 3600)),
            addressing_style=env.get("BUCKET_ADDRESSING_STYLE", "path"),
            max_attempts=int(env.get("BUCKET_MAX_ATTEMPTS", 3)),
        )

    def overridden(self, s3_config: S3Config | None, request: DeliveryRequest | None) -> Bucket:
        """This bucket with a job's s3Config and a request's bucket/prefix applied."""
        bucket = self
        if s3_config is not None:
            bucket = replace(bucket, name=s3_config.bucketName or bucket.name,
                             endpoint_url=s3_config.endpointUrl or bucket.endpoint_url,
                             access_key_id=s3_config.accessId or bucket.access_key_id,
                             secret_access_key=s3_config.accessSecret or bucket.secret_access_key)
        if request is not None:
            bucket = replace(bucket, name=request.bucket or bucket.name,
                             prefix=bucket.prefix if request.prefix is None else request.prefix)
        return bucket

    def key(self, job_id: str, index: int, extension: str) -> str:
        """prefix/job id/index.extension: predictable, and unique per job and image."""
        return "/".join(part.strip("/") for part in (self.prefix, job_id, f"{index}.{extension}") if part.strip("/"))

    def scrub(self, text: str) -> str:
        for secret in (self.secret_access_key, self.access_key_id):
            if secret:
                text = text.replace(secret, "***")
        return text


def upload(bucket: Bucket, job_id: str, images) -> list[str]:
    """Upload encoded images; their URLs (presigned, or plain under public_url), in order."""
    import boto3
    from botocore.config import Config
    from botocore.exceptions import BotoCoreError, ClientError

    client = boto3.client(
        "s3",
        endpoint_url=bucket.endpoint_url,
        aws_access_key_id=bucket.access_key_id,
        aws_secret_access_key=bucket.secret_access_key,
        region_name=bucket.region,
        config=Config(signature_version="s3v4", s3={"addressing_style": bucket.addressing_style},
                      retries={"mode": "standard", "max_attempts": bucket.max_attempts},
                      request_checksum_calculation="when_required", response_checksum_validation="when_required",
                      connect_timeout=5, read_timeout=60),
    )
    urls = []
    try:
        for index, image in enumerate(images):
            key = bucket.key(job_id, index, image.extension)
            client.put_object(Bucket=bucket.name, Key=key, Body=image.data, ContentType=image.content_type)
            urls.append(f"{bucket.public_url.rstrip('/')}/{key}" if bucket.public_url else
                        client.generate_presigned_url("get_object", Params={"Bucket": bucket.name, "Key": key},
                                                      ExpiresIn=bucket.expiry))
    except ClientError as error:
        details = error.response.get("Error", {})
        cause = f"{details.get('Code', 'error')}: {details.get('Message', '')}".strip(": ")
        raise UploadError(bucket.scrub(f"upload to bucket '{bucket.name}' failed: {cause}")) from None
    except BotoCoreError as error:
        raise UploadError(bucket.scrub(f"upload to bucket '{bucket.name}' failed: {error}")) from None
    return urls
