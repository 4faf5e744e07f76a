"""Output delivery against moto running as a real S3 HTTP server on loopback, with IAM auth enforced,
through the worker's real input path (job dict -> handler)."""

from __future__ import annotations

import base64
import io
import json
import socket
import subprocess
import sys
import time
from contextlib import contextmanager

import pytest
import requests
from PIL import Image

from conftest import free_port
from engine.imaging.images import read_infotext
from handler.worker import make_handler

BODY = {"prompt": "a blue door", "steps": 2, "width": 64, "height": 64, "seed": 3}
SETUP_CALLS = 3  # create user, access key, policy: then an auth-enforcing moto checks every signature


@contextmanager
def moto_server(enforce_auth: bool):
    """moto's S3 server on a free loopback port, with an IAM user allowed s3:* and two buckets.

    With enforce_auth every request after the setup must be signed with that user's key (moto then
    can't check presigned URLs, so URL downloads use a server without it).
    """
    import boto3

    port = free_port()
    env = {"PATH": "", "AWS_ACCESS_KEY_ID": "setup", "AWS_SECRET_ACCESS_KEY": "setup"}
    if enforce_auth:
        env["INITIAL_NO_AUTH_ACTION_COUNT"] = str(SETUP_CALLS)
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            break
        except OSError:
            assert time.monotonic() < deadline and server.poll() is None, "moto server did not start"
            time.sleep(0.1)
    try:
        iam = boto3.client("iam", endpoint_url=url, region_name="us-east-1",
                           aws_access_key_id="setup", aws_secret_access_key="setup")
        iam.create_user(UserName="worker")
        key = iam.create_access_key(UserName="worker")["AccessKey"]
        iam.put_user_policy(UserName="worker", PolicyName="s3", PolicyDocument=json.dumps(
            {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}))
        client = boto3.client("s3", endpoint_url=url, region_name="us-east-1",
                              aws_access_key_id=key["AccessKeyId"], aws_secret_access_key=key["SecretAccessKey"])
        for bucket in ("env-bucket", "job-bucket"):
            client.create_bucket(Bucket=bucket)
        yield {"url": url, "key_id": key["AccessKeyId"], "secret": key["SecretAccessKey"], "client": client}
    finally:
        server.terminate()
        server.wait(timeout=10)


@pytest.fixture(scope="module")
def s3_server():
    with moto_server(enforce_auth=False) as server:
        yield server


@pytest.fixture(scope="module")
def auth_server():
    with moto_server(enforce_auth=True) as server:
        yield server


def _configure(monkeypatch, server):
    monkeypatch.setenv("BUCKET_ENDPOINT_URL", server["url"])
    monkeypatch.setenv("BUCKET_ACCESS_KEY_ID", server["key_id"])
    monkeypatch.setenv("BUCKET_SECRET_ACCESS_KEY", server["secret"])
    monkeypatch.setenv("BUCKET_NAME", "env-bucket")
    monkeypatch.setenv("BUCKET_REGION", "us-east-1")
    monkeypatch.setenv("BUCKET_PREFIX", "renders")
    monkeypatch.setenv("BUCKET_MAX_ATTEMPTS", "2")
    return server


@pytest.fixture
def auth_env(monkeypatch, auth_server):
    return _configure(monkeypatch, auth_server)


@pytest.fixture
def bucket_env(monkeypatch, s3_server):
    return _configure(monkeypatch, s3_server)


def run_job(engine, job_input, **job):
    return make_handler(engine)({"id": "job-1", "input": job_input, **job})


def png_bytes_of(output_b64: str) -> bytes:
    return base64.b64decode(output_b64)


def test_upload_returns_presigned_urls_to_the_exact_png(engine, bucket_env):
    output = run_job(engine, {**BODY, "batch_size": 2})
    assert output["delivery"] == {"mode": "s3", "bucket": "env-bucket"}
    assert len(output["images"]) == 2 and all(url.startswith("http://127.0.0.1") for url in output["images"])
    expected = run_job(engine, {**BODY, "batch_size": 2, "delivery": {"mode": "base64"}})["images"]
    for index, url in enumerate(output["images"]):
        response = requests.get(url, timeout=10)
        assert response.status_code == 200 and response.content == png_bytes_of(expected[index])
        head = bucket_env["client"].head_object(Bucket="env-bucket", Key=f"renders/job-1/{index}.png")
        assert head["ContentType"] == "image/png"
    infotext, _ = read_infotext(Image.open(io.BytesIO(requests.get(output["images"][0], timeout=10).content)))
    assert infotext.startswith("a blue door\nSteps: 2")


def test_job_s3_config_overrides_the_environment(engine, bucket_env):
    output = run_job(engine, BODY, s3Config={"bucketName": "job-bucket", "accessId": bucket_env["key_id"],
                                             "accessSecret": bucket_env["secret"], "endpointUrl": bucket_env["url"]})
    assert output["delivery"]["bucket"] == "job-bucket"
    assert bucket_env["client"].head_object(Bucket="job-bucket", Key="renders/job-1/0.png")


def test_request_chooses_prefix_and_public_urls(engine, bucket_env, monkeypatch):
    monkeypatch.setenv("BUCKET_PUBLIC_URL", "https://cdn.example.com/")
    output = run_job(engine, {**BODY, "delivery": {"prefix": "team/a"}})
    assert output["images"] == ["https://cdn.example.com/team/a/job-1/0.png"]
    assert bucket_env["client"].head_object(Bucket="env-bucket", Key="team/a/job-1/0.png")


@pytest.mark.parametrize("setting, value, cause", [
    ("BUCKET_NAME", "no-such-bucket", "NoSuchBucket"),
    ("BUCKET_SECRET_ACCESS_KEY", "wrong-secret-value", "SignatureDoesNotMatch"),
    ("BUCKET_ENDPOINT_URL", "http://127.0.0.1:9", "Could not connect"),
])
def test_failed_upload_falls_back_to_base64_and_says_why(engine, auth_env, monkeypatch, setting, value, cause):
    monkeypatch.setenv(setting, value)
    output = run_job(engine, BODY)
    assert output["delivery"]["mode"] == "base64"
    note = output["delivery"]["note"]
    assert cause in note and "bucket '" in note
    assert auth_env["secret"] not in note and "wrong-secret-value" not in note
    assert Image.open(io.BytesIO(png_bytes_of(output["images"][0]))).size == (64, 64)  # nothing lost


def test_failed_upload_that_base64_cannot_carry_fails_clearly(engine, bucket_env, monkeypatch):
    monkeypatch.setenv("BUCKET_NAME", "no-such-bucket")
    monkeypatch.setenv("RESPONSE_LIMIT_MB", "0.001")
    error = run_job(engine, BODY)["error"]
    assert "bucket 'no-such-bucket'" in error and "NoSuchBucket" in error and "response limit" in error
    assert bucket_env["secret"] not in error and "\n" not in error


def test_oversized_base64_is_uploaded_instead(engine, bucket_env, monkeypatch):
    monkeypatch.setenv("RESPONSE_LIMIT_MB", "0.001")
    output = run_job(engine, {**BODY, "delivery": {"mode": "base64"}})
    assert output["delivery"]["mode"] == "s3" and "uploaded instead" in output["delivery"]["note"]
    assert requests.get(output["images"][0], timeout=10).content.startswith(b"\x89PNG")


def test_oversized_base64_without_a_bucket_fails_naming_the_limit(engine, monkeypatch):
    monkeypatch.setenv("RESPONSE_LIMIT_MB", "0.001")
    error = run_job(engine, BODY)["error"]
    assert error.startswith("output: the images") and "0.001 MB response limit" in error and "bucket" in error


def test_request_that_cannot_fit_is_refused_before_generating(engine, monkeypatch):
    calls = []
    monkeypatch.setattr(engine, "txt2img", lambda request, *rest: calls.append(request))
    error = run_job(engine, {**BODY, "width": 2048, "height": 2048, "batch_size": 8, "n_iter": 10})["error"]
    assert error.startswith("batch_size: 80 images of 2048x2048 can't fit") and calls == []


@pytest.mark.parametrize("fmt, magic", [("jpg", b"\xff\xd8"), ("webp", b"RIFF")])
def test_jpeg_and_webp_carry_the_infotext(engine, fmt, magic):
    output = run_job(engine, {**BODY, "override_settings": {"samples_format": fmt, "jpeg_quality": 90}})
    data = png_bytes_of(output["images"][0])
    assert data.startswith(magic)
    infotext, _ = read_infotext(Image.open(io.BytesIO(data)))
    assert infotext == json.loads(output["info"])["infotexts"][0]


@pytest.mark.parametrize("delivery, message", [
    ({"mode": "s3"}, "delivery.mode: s3 needs a bucket"),
    ({"mode": "ftp"}, "delivery: mode: "),
    ({"unknown": 1}, "delivery: unknown: "),
])
def test_bad_delivery_requests_are_clear(engine, delivery, message):
    assert run_job(engine, {**BODY, "delivery": delivery})["error"].startswith(message)


def test_boto3_is_not_imported_for_base64_delivery():
    code = ("import sys, handler.worker, handler.router, handler.delivery; "
            "from handler.delivery import Destination, deliver; "
            "from engine.imaging.images import encode_image; from PIL import Image; "
            "deliver([encode_image(Image.new('RGB', (8, 8)), 'x')], Destination.for_job('j')); "
            "assert 'boto3' not in sys.modules, 'boto3 imported'")
    env = {"PATH": "", "HF_HUB_OFFLINE": "1"}
    assert subprocess.run([sys.executable, "-c", code], env=env, timeout=120).returncode == 0
