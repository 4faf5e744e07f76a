"""Which bucket a job's images may go to, and with whose credentials.

The operator's credentials (BUCKET_ACCESS_KEY_ID and BUCKET_SECRET_ACCESS_KEY, or with
BUCKET_USE_DEFAULT_CREDENTIALS=1 boto3's default chain) serve only the operator's buckets: BUCKET_NAME and
the names in BUCKET_ALLOWED, at BUCKET_ENDPOINT_URL. A request (`input.delivery`, the job's `s3Config`)
that names another bucket must bring its own keys (s3Config's accessId and accessSecret), and then none of
the operator's is used. A request's endpoint (s3Config.endpointUrl) needs the request's own keys too, and
a public address: a caller can't point the worker at loopback, the private network or a metadata service,
unless the operator listed that endpoint in BUCKET_ALLOWED_ENDPOINTS. Hostnames are checked by resolving
them (as A1111's api_forbid_local_requests does).
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Mapping
from dataclasses import replace
from urllib.parse import urlsplit

from schemas import RequestError
from schemas.delivery import DeliveryRequest, S3Config
from schemas.errors import quoted

from .s3 import Bucket

_OWN_KEYS = "its own credentials (s3Config.accessId and s3Config.accessSecret)"


def job_bucket(request: DeliveryRequest | None, s3_config: S3Config | None, env: Mapping[str, str]) -> Bucket | None:
    """The bucket the job's images may go to (None: none, base64 only); a RequestError names the field
    that asks for more than the rules allow."""
    field, name = _requested_name(request, s3_config)
    if name is None and s3_config is not None and not env.get("BUCKET_NAME"):
        raise RequestError("s3Config.bucketName", "required: this worker has no bucket configured (BUCKET_NAME)")
    if s3_config is not None and s3_config.own_credentials():
        bucket = _with_own_credentials(Bucket.from_env(env, name), s3_config, env)
    elif s3_config is not None and s3_config.endpointUrl:
        raise RequestError("s3Config.endpointUrl", f"a request's endpoint needs {_OWN_KEYS}")
    elif name is not None and name not in _listed(env, "BUCKET_ALLOWED", "BUCKET_NAME"):
        raise RequestError(field, f"bucket {quoted(name)} is not allowed: a request may name a bucket with "
                                  f"{_OWN_KEYS}, or one the operator allowed (BUCKET_NAME, BUCKET_ALLOWED)")
    else:
        bucket = Bucket.from_env(env, name)
    if bucket is not None and request is not None and request.prefix is not None:
        bucket = replace(bucket, prefix=request.prefix)
    return bucket


def _requested_name(request: DeliveryRequest | None, s3_config: S3Config | None) -> tuple[str, str | None]:
    """(the field, the bucket name) a request asks for: delivery.bucket before s3Config.bucketName."""
    if request is not None and request.bucket:
        return "delivery.bucket", request.bucket
    return "s3Config.bucketName", s3_config.bucketName if s3_config is not None and s3_config.bucketName else None


def _with_own_credentials(bucket: Bucket, s3_config: S3Config, env: Mapping[str, str]) -> Bucket:
    """The bucket with the job's keys instead of the operator's, and the job's endpoint if it names one."""
    bucket = replace(bucket, access_key_id=s3_config.accessId, secret_access_key=s3_config.accessSecret,
                     default_credentials=False)
    if not s3_config.endpointUrl:
        return bucket
    check_endpoint("s3Config.endpointUrl", s3_config.endpointUrl,
                   {_normal(url) for url in _listed(env, "BUCKET_ALLOWED_ENDPOINTS", "BUCKET_ENDPOINT_URL")})
    # path style: the host checked is the host connected to (virtual style puts the bucket name in it)
    return replace(bucket, endpoint_url=s3_config.endpointUrl, addressing_style="path", public_url=None)


def check_endpoint(field: str, url: str, allowed: set[str]) -> None:
    """Refuse an endpoint outside `allowed` (normalised URLs) unless every address of its host is public."""
    if _normal(url) in allowed:
        return
    parts = urlsplit(url)
    try:
        host, port = parts.hostname, parts.port
    except ValueError:  # a port that is not a number
        host = port = None
    if parts.scheme not in ("http", "https") or not host:
        raise RequestError(field, "must be an http:// or https:// URL with a host")
    for address in _addresses(field, host, port or (443 if parts.scheme == "https" else 80)):
        if not address.is_global or address.is_multicast:
            raise RequestError(field, f"endpoint host {quoted(host)} is not allowed: {address} is {_kind(address)}; a "
                                      "request's endpoint must be public, or listed in BUCKET_ALLOWED_ENDPOINTS")


def _addresses(field: str, host: str, port: int) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    """The host's addresses: itself when it is an IP literal, else all that it resolves to."""
    try:
        return [ipaddress.ip_address(host)]
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, port, proto=socket.IPPROTO_TCP)
    except (OSError, UnicodeError):
        raise RequestError(field, f"endpoint host {quoted(host)} does not resolve") from None
    return [ipaddress.ip_address(info[4][0]) for info in infos]


def _kind(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    for kind in ("loopback", "link_local", "private", "multicast"):
        if getattr(address, f"is_{kind}"):
            return f"a {kind.replace('_', '-')} address"
    return "not a public address"


def _listed(env: Mapping[str, str], list_name: str, single_name: str) -> set[str]:
    """The comma-separated values of env[list_name], plus env[single_name] when set."""
    values = [*env.get(list_name, "").split(","), env.get(single_name, "")]
    return {value.strip() for value in values if value.strip()}


def _normal(url: str) -> str:
    return url.strip().rstrip("/").lower()
