"""Uploads to S3-compatible buckets (AWS S3, Cloudflare R2, MinIO, Backblaze B2, ...).

botocore (boto3's core) is imported only here, and only when a job uploads (it costs cold-start
time otherwise). Retries are botocore's own ("standard" mode). Checksums are computed only when
required and the signature is s3v4: what R2 and MinIO accept, which recent boto3 defaults break. The
client signs with the bucket's own keys; the default credential chain (environment, ~/.aws, container
and instance metadata services) is consulted only for a bucket of the operator's that opted in to it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass


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
    default_credentials: bool = False  # without keys, use boto3's default chain (BUCKET_USE_DEFAULT_CREDENTIALS)

    def __repr__(self) -> str:  # never print credentials
        return f"Bucket(name={self.name!r}, endpoint_url={self.endpoint_url!r}, prefix={self.prefix!r})"

    @classmethod
    def from_env(cls, env=os.environ, name: str | None = None) -> Bucket | None:
        """The operator's bucket, in RunPod's BUCKET_* convention: BUCKET_NAME, or `name` with the same
        settings (BUCKET_PUBLIC_URL serves BUCKET_NAME only); None when neither names one."""
        configured = env.get("BUCKET_NAME")
        name = name or configured
        if not name:
            return None
        return cls(
            name=name,
            endpoint_url=env.get("BUCKET_ENDPOINT_URL") or None,
            access_key_id=env.get("BUCKET_ACCESS_KEY_ID") or None,
            secret_access_key=env.get("BUCKET_SECRET_ACCESS_KEY") or None,
            region=env.get("BUCKET_REGION") or None,
            prefix=env.get("BUCKET_PREFIX", ""),
            public_url=(env.get("BUCKET_PUBLIC_URL") or None) if name == configured else None,
            expiry=int(env.get("BUCKET_URL_EXPIRY", 7 * 24 * 3600)),
            addressing_style=env.get("BUCKET_ADDRESSING_STYLE", "path"),
            max_attempts=int(env.get("BUCKET_MAX_ATTEMPTS", 3)),
            default_credentials=env.get("BUCKET_USE_DEFAULT_CREDENTIALS") == "1",
        )

    @property
    def has_keys(self) -> bool:
        return bool(self.access_key_id and self.secret_access_key)

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
    from botocore.exceptions import BotoCoreError, ClientError

    if not bucket.has_keys and not bucket.default_credentials:
        raise UploadError(f"upload to bucket '{bucket.name}' needs credentials: set BUCKET_ACCESS_KEY_ID and "
                          "BUCKET_SECRET_ACCESS_KEY, or BUCKET_USE_DEFAULT_CREDENTIALS=1 for the default AWS "
                          "credential chain (an IAM role)")
    client = _client(bucket)
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


def _client(bucket: Bucket):
    """An S3 client for the bucket. Unless the bucket opted in to the default credential chain, its
    session has no credential provider at all: it signs with the bucket's keys or not at all."""
    import botocore.session
    from botocore.config import Config
    from botocore.credentials import CredentialResolver

    session = botocore.session.get_session()
    if not bucket.default_credentials:
        session.register_component("credential_provider", CredentialResolver(providers=[]))
    return session.create_client(
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
