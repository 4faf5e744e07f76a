"""S3 delivery's security rules (handler/bucket_policy.py), through the worker's handler, against moto as
a real S3 server on loopback and a stand-in for the metadata services that boto3's default credential
chain asks (AWS_CONTAINER_CREDENTIALS_FULL_URI and AWS_EC2_METADATA_SERVICE_ENDPOINT point at it; it
hands out credentials, so a worker that consulted it would succeed).

A request never gets the operator's credentials for a bucket it chose, never makes boto3 look for
credentials, never points the worker at an internal address; each refusal is one line naming the field,
comes before any generation, and the worker serves the next job.
"""

from __future__ import annotations

import json
import os
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from threading import Thread
from types import SimpleNamespace

import pytest

from conftest import free_port
from handler.bucket_policy import check_endpoint
from handler.worker import make_handler
from schemas import RequestError

SMALL = {"prompt": "a red kite", "steps": 1, "width": 64, "height": 64, "seed": 1}
BUCKETS = ("env-bucket", "allowed-bucket", "own-bucket")
OPERATOR_KEY, OPERATOR_SECRET = "OPERATORKEY", "operator-secret-value"
OWN = {"accessId": "CALLERKEY", "accessSecret": "caller-secret-value"}
ROLE_KEY = "ROLEKEY"  # what the stand-in metadata service hands out
SECRETS = (OPERATOR_SECRET, OWN["accessSecret"], "role-secret-value")


@pytest.fixture(scope="module")
def moto():
    import boto3
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    url = f"http://127.0.0.1:{port}"
    client = boto3.client("s3", endpoint_url=url, region_name="us-east-1",
                          aws_access_key_id="setup", aws_secret_access_key="setup")
    for bucket in BUCKETS:
        client.create_bucket(Bucket=bucket)
    yield SimpleNamespace(url=url, client=client)
    server.stop()


class _MetadataServer(ThreadingHTTPServer):
    """Counts every connection; answers every request with container credentials."""

    connections = 0

    def verify_request(self, request, client_address) -> bool:
        self.connections += 1
        return True


class _CredentialsHandler(BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps({"AccessKeyId": ROLE_KEY, "SecretAccessKey": "role-secret-value", "Token": "role-token",
                           "Expiration": "2999-01-01T00:00:00Z"}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_PUT = do_GET  # IMDSv2's token request

    def log_message(self, *args):
        pass


@pytest.fixture
def metadata(monkeypatch, tmp_path):
    """The stand-in metadata service, with every other source of AWS credentials and every BUCKET_*
    setting cleared."""
    for name in list(os.environ):
        if name.startswith("BUCKET_") or name.startswith("AWS_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    server = _MetadataServer(("127.0.0.1", 0), _CredentialsHandler)
    Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    monkeypatch.setenv("AWS_CONTAINER_CREDENTIALS_FULL_URI", f"{url}/credentials")
    monkeypatch.setenv("AWS_EC2_METADATA_SERVICE_ENDPOINT", f"{url}/")
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def generations(engine, monkeypatch):
    """The txt2img calls the engine gets during the test (they still run)."""
    calls, original = [], engine.txt2img
    monkeypatch.setattr(engine, "txt2img", lambda request, *rest: calls.append(request) or original(request, *rest))
    return calls


def configure_operator(monkeypatch, moto, keys: bool = True, **settings: str) -> None:
    """The operator's bucket, env-bucket on moto, with the operator's keys (or none), plus `settings`."""
    monkeypatch.setenv("BUCKET_NAME", "env-bucket")
    monkeypatch.setenv("BUCKET_ENDPOINT_URL", moto.url)
    monkeypatch.setenv("BUCKET_REGION", "us-east-1")
    monkeypatch.setenv("BUCKET_MAX_ATTEMPTS", "1")
    if keys:
        monkeypatch.setenv("BUCKET_ACCESS_KEY_ID", OPERATOR_KEY)
        monkeypatch.setenv("BUCKET_SECRET_ACCESS_KEY", OPERATOR_SECRET)
    for name, value in settings.items():
        monkeypatch.setenv(name, value)


def run_job(engine, job_input: dict, **job) -> tuple[str, dict]:
    job_id = f"job-{uuid.uuid4().hex[:8]}"
    return job_id, make_handler(engine)({"id": job_id, "input": job_input, **job})


def stored_keys(moto, job_id: str) -> list[str]:
    return [f"{bucket}/{item['Key']}" for bucket in BUCKETS
            for item in moto.client.list_objects_v2(Bucket=bucket).get("Contents", []) if job_id in item["Key"]]


def signing_key(url: str) -> str:
    """The access key id that signed a presigned URL."""
    return url.split("X-Amz-Credential=")[1].split("%2F")[0]


# ---------------------------------------------------------------- the harness

def test_the_stand_in_sees_boto3s_default_credential_chain(metadata, moto):
    """The control: a plain boto3 client without keys asks the stand-in (so the 0s below mean something)."""
    import boto3

    client = boto3.session.Session().client("s3", endpoint_url=moto.url, region_name="us-east-1")
    client.put_object(Bucket="own-bucket", Key="control.txt", Body=b"x")
    assert metadata.connections >= 1


# ---------------------------------------------------------------- refusals

REFUSALS = {
    "own bucket, none configured": (
        None, {"delivery": {"bucket": "own-bucket"}}, None,
        "delivery.bucket: bucket 'own-bucket' is not allowed: a request may name a bucket with its own credentials"),
    "s3Config with only bucketName, none configured": (
        None, {}, {"bucketName": "own-bucket"}, "s3Config.bucketName: bucket 'own-bucket' is not allowed"),
    "delivery.bucket overriding the configured bucket": (
        "keys", {"delivery": {"bucket": "own-bucket"}}, None, "delivery.bucket: bucket 'own-bucket' is not allowed"),
    "s3Config.bucketName overriding the configured bucket": (
        "keys", {}, {"bucketName": "own-bucket"}, "s3Config.bucketName: bucket 'own-bucket' is not allowed"),
    "a request-named bucket with the operator's default chain": (
        "default chain", {"delivery": {"bucket": "own-bucket"}}, None,
        "delivery.bucket: bucket 'own-bucket' is not allowed"),
    "the metadata address as endpoint": (
        None, {}, {**OWN, "bucketName": "own-bucket", "endpointUrl": "http://169.254.169.254"},
        "s3Config.endpointUrl: endpoint host '169.254.169.254' is not allowed: 169.254.169.254 is a link-local "
        "address; a request's endpoint must be public, or listed in BUCKET_ALLOWED_ENDPOINTS"),
    "a loopback endpoint not allowed": (
        None, {}, {**OWN, "bucketName": "own-bucket", "endpointUrl": "{moto}"},
        "s3Config.endpointUrl: endpoint host '127.0.0.1' is not allowed: 127.0.0.1 is a loopback address"),
    "a hostname resolving to loopback": (
        None, {}, {**OWN, "bucketName": "own-bucket", "endpointUrl": "http://localhost:9000"},
        "s3Config.endpointUrl: endpoint host 'localhost' is not allowed: "),
    "a request endpoint with the operator's keys": (
        "keys", {}, {"bucketName": "env-bucket", "endpointUrl": "http://169.254.169.254"},
        "s3Config.endpointUrl: a request's endpoint needs its own credentials (s3Config.accessId and "
        "s3Config.accessSecret)"),
    "half a key pair": (
        "keys", {}, {"accessId": "CALLERKEY", "bucketName": "own-bucket"},
        "s3Config.accessSecret: required with s3Config.accessId"),
    "the other half": (
        "keys", {}, {"accessSecret": "caller-secret-value", "bucketName": "own-bucket"},
        "s3Config.accessId: required with s3Config.accessSecret"),
    "s3Config without a bucket, none configured": (
        None, {}, OWN, "s3Config.bucketName: required: this worker has no bucket configured (BUCKET_NAME)"),
    "a secret that is not a string": (
        None, {}, {"accessId": "CALLERKEY", "accessSecret": 987654321, "bucketName": "own-bucket"},
        "s3Config: accessSecret: Input should be a valid string"),
}


@pytest.mark.parametrize("operator, job_input, s3_config, message", REFUSALS.values(), ids=REFUSALS.keys())
def test_refused_before_generating_and_without_asking_for_credentials(
        engine, moto, metadata, generations, monkeypatch, operator, job_input, s3_config, message):
    if operator == "keys":
        configure_operator(monkeypatch, moto)
    elif operator == "default chain":
        configure_operator(monkeypatch, moto, keys=False, BUCKET_USE_DEFAULT_CREDENTIALS="1")
    job = {"s3Config": json.loads(json.dumps(s3_config).replace("{moto}", moto.url))} if s3_config else {}
    job_id, output = run_job(engine, {**SMALL, **job_input}, **job)
    error = output["error"]
    assert error.startswith(message) and "\n" not in error
    assert not any(secret in error for secret in (*SECRETS, "987654321"))
    assert generations == [] and metadata.connections == 0 and stored_keys(moto, job_id) == []

    _, output = run_job(engine, {**SMALL, "delivery": {"mode": "base64"}})  # the next job is served
    assert "error" not in output and len(output["images"]) == 1 and len(generations) == 1
    assert metadata.connections == 0


def test_operator_bucket_without_keys_never_asks_for_credentials(engine, moto, metadata, monkeypatch):
    configure_operator(monkeypatch, moto, keys=False)
    job_id, output = run_job(engine, SMALL)
    assert output["delivery"]["mode"] == "base64" and len(output["images"]) == 1  # nothing lost
    assert output["delivery"]["note"].startswith("upload to bucket 'env-bucket' needs credentials: set "
                                                 "BUCKET_ACCESS_KEY_ID and BUCKET_SECRET_ACCESS_KEY, or "
                                                 "BUCKET_USE_DEFAULT_CREDENTIALS=1")
    assert metadata.connections == 0 and stored_keys(moto, job_id) == []


@pytest.mark.parametrize("url", ["http://[::1]:9000", "http://10.1.2.3", "http://192.168.0.1", "http://100.64.0.1",
                                 "http://0.0.0.0:80", "http://[fe80::1]", "http://[::ffff:169.254.169.254]",
                                 "http://0x7f000001", "http://2130706433", "http://224.0.0.1",
                                 "ftp://example.com", "http://:80", "http://host:port"])
def test_internal_or_malformed_endpoints_are_refused(url):
    with pytest.raises(RequestError) as refused:
        check_endpoint("s3Config.endpointUrl", url, set())
    assert str(refused.value).startswith("s3Config.endpointUrl: ")


def test_public_and_listed_endpoints_pass():
    check_endpoint("f", "https://8.8.8.8", set())
    check_endpoint("f", "HTTP://127.0.0.1:9000/", {"http://127.0.0.1:9000"})


# ---------------------------------------------------------------- what is allowed

@pytest.mark.parametrize("configured", [False, True], ids=["none configured", "operator's bucket configured"])
def test_own_credentials_upload_with_those_only(engine, moto, metadata, monkeypatch, configured):
    if configured:
        configure_operator(monkeypatch, moto)  # its endpoint is allowed: it is the operator's
    else:
        monkeypatch.setenv("BUCKET_ALLOWED_ENDPOINTS", f"https://s3.example.com, {moto.url}/")
    s3_config = {**OWN, "bucketName": "own-bucket", "endpointUrl": moto.url}
    job_id, output = run_job(engine, SMALL, s3Config=s3_config)
    assert output["delivery"] == {"mode": "s3", "bucket": "own-bucket"}
    assert stored_keys(moto, job_id) == [f"own-bucket/{job_id}/0.png"]
    assert signing_key(output["images"][0]) == OWN["accessId"]  # never the operator's
    assert metadata.connections == 0


@pytest.mark.parametrize("job_input, s3_config", [({"delivery": {"bucket": "allowed-bucket"}}, None),
                                                   ({}, {"bucketName": "allowed-bucket"})],
                         ids=["delivery.bucket", "s3Config.bucketName"])
def test_bucket_allowed_lets_a_request_use_the_operators_keys(engine, moto, metadata, monkeypatch, job_input,
                                                              s3_config):
    configure_operator(monkeypatch, moto, BUCKET_ALLOWED="other-bucket, allowed-bucket",
                       BUCKET_PUBLIC_URL="https://cdn.example.com")
    job_id, output = run_job(engine, {**SMALL, **job_input}, **({"s3Config": s3_config} if s3_config else {}))
    assert output["delivery"] == {"mode": "s3", "bucket": "allowed-bucket"}
    assert stored_keys(moto, job_id) == [f"allowed-bucket/{job_id}/0.png"]
    assert signing_key(output["images"][0]) == OPERATOR_KEY  # presigned: the CDN serves env-bucket only
    assert metadata.connections == 0


def test_default_chain_only_with_the_operators_opt_in(engine, moto, metadata, monkeypatch):
    configure_operator(monkeypatch, moto, keys=False, BUCKET_USE_DEFAULT_CREDENTIALS="1")
    job_id, output = run_job(engine, SMALL)
    assert output["delivery"] == {"mode": "s3", "bucket": "env-bucket"}
    assert stored_keys(moto, job_id) == [f"env-bucket/{job_id}/0.png"]
    assert signing_key(output["images"][0]) == ROLE_KEY and metadata.connections >= 1
