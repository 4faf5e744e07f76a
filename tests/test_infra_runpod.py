"""infra.deploy against a fake RunPod (REST and serverless APIs replaced at the HTTP level by `responses`):
the exact requests of a first deploy, an unchanged second one, a changed setting, a rollback, a dry run,
API errors, the smoke test; and no secret in any output."""

from __future__ import annotations

import base64
import json
import re
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest
import responses

from infra import deploy
from infra.errors import DeployError
from infra.image import project_version
from infra.resources import HISTORY_PREFIX
from infra.runpod_api import RunPodApi
from infra.smoke import run_smoke_test

REPO_ROOT = Path(__file__).resolve().parent.parent
REST = "https://rest.runpod.io/v1"
SERVERLESS = "https://api.runpod.ai/v2"
API_KEY = "rpa_TEST_KEY_must_never_be_printed"
IMAGE = "registry.example.com/team/worker"
PNG_B64 = base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\0" * 32).decode()

CONFIG = """
image: {registry: registry.example.com, repository: team/worker}
environments:
  staging:
    template:
      name: worker-staging
      containerDiskInGb: 20
      env: {WORKER_MAX_MODELS: "2", BUCKET_NAME: images}
      secrets: {BUCKET_SECRET_ACCESS_KEY: bucket_secret}
    endpoint:
      name: worker-staging
      gpuTypeIds: ["NVIDIA RTX A4000", "NVIDIA GeForce RTX 4090"]
      workersMin: 0
      workersMax: 2
      idleTimeout: 5
      scalerType: QUEUE_DELAY
      scalerValue: 4
      flashboot: true
      executionTimeoutMs: 600000
"""
TEMPLATE_BODY = {"name": "worker-staging", "containerDiskInGb": 20,
                 "env": {"WORKER_MAX_MODELS": "2", "BUCKET_NAME": "images",
                         "BUCKET_SECRET_ACCESS_KEY": "{{ RUNPOD_SECRET_bucket_secret }}"},
                 "isServerless": True, "volumeInGb": 0}
ENDPOINT_BODY = {"name": "worker-staging", "gpuTypeIds": ["NVIDIA RTX A4000", "NVIDIA GeForce RTX 4090"],
                 "workersMin": 0, "workersMax": 2, "idleTimeout": 5, "scalerType": "QUEUE_DELAY", "scalerValue": 4,
                 "flashboot": True, "executionTimeoutMs": 600000}


def tag(sha: str = "abc1234") -> str:
    return f"{IMAGE}:{project_version()}-{sha}"


def history(*images: str) -> str:
    return HISTORY_PREFIX + ", ".join(images)


class FakeRunPod:
    """RunPod's REST API for templates and endpoints, holding what it is sent (ids tpl-1, ep-1, ...);
    `fail_next` makes the next matching request answer an error instead."""

    ID_PREFIX = {"templates": "tpl", "endpoints": "ep"}

    def __init__(self, mock: responses.RequestsMock):
        self.mock = mock
        self.held = {"templates": {}, "endpoints": {}}
        self.failures = []
        for kind in self.held:
            for method, url, answer in (("GET", f"{REST}/{kind}", self._list), ("POST", f"{REST}/{kind}", self._create),
                                        ("PATCH", re.compile(rf"{REST}/{kind}/[\w-]+"), self._update)):
                mock.add_callback(method, url,
                                  lambda request, kind=kind, answer=answer: self._answer(kind, request, answer))

    def seed(self, kind: str, **fields) -> None:
        self.held[kind][fields["id"]] = fields

    def fail_next(self, method: str, kind: str, status: int, body: str = "", headers: dict | None = None) -> None:
        self.failures.append((method, kind, (status, headers or {}, body)))

    def _answer(self, kind, request, answer):
        for failure in self.failures:
            if failure[:2] == (request.method, kind):
                self.failures.remove(failure)
                return failure[2]
        return 200, {}, json.dumps(answer(kind, request))

    def _list(self, kind, request):
        return list(self.held[kind].values())

    def _create(self, kind, request):
        new = {**json.loads(request.body), "id": f"{self.ID_PREFIX[kind]}-{len(self.held[kind]) + 1}"}
        self.held[kind][new["id"]] = new
        return new

    def _update(self, kind, request):
        held = self.held[kind][request.url.rsplit("/", 1)[1]]
        held.update(json.loads(request.body))
        return held

    def requests(self, since: int = 0) -> list[tuple]:
        """(method, url, JSON body or None) of each request sent, from the `since`-th on."""
        return [(call.request.method, call.request.url, json.loads(call.request.body) if call.request.body else None)
                for call in self.mock.calls[since:]]


@pytest.fixture
def env(monkeypatch):
    for name in ("REGISTRY", "GITHUB_REF_TYPE", "RUNPOD_REST_URL", "RUNPOD_SERVERLESS_URL", "HF_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("RUNPOD_API_KEY", API_KEY)
    monkeypatch.setenv("GITHUB_SHA", "abc1234" + "0" * 33)
    monkeypatch.setenv("RUNPOD_RETRY_MAX_WAIT", "0")
    return monkeypatch


@pytest.fixture
def config(tmp_path) -> Path:
    path = tmp_path / "deploy.yaml"
    path.write_text(CONFIG)
    return path


@pytest.fixture
def runpod(env):
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        yield FakeRunPod(mock)


@pytest.fixture
def cli(config, capsys):
    """cli(*argv) -> (exit code, stdout, stderr) of `python -m infra.deploy --config CONFIG *argv`; checks
    that no secret reached either stream."""

    def run(*argv: str) -> tuple[int, str, str]:
        try:
            deploy.main(["--config", str(config), *argv])
            code = 0
        except SystemExit as exit_:
            code = exit_.code
        out, err = capsys.readouterr()
        if isinstance(code, str):  # sys.exit(message): printed on stderr, exit status 1
            code, err = 1, err + code + "\n"
        assert API_KEY not in out + err
        return code, out, err

    return run


def deployed(runpod: FakeRunPod, image: str, readme: str | None = None) -> None:
    """RunPod as the first deploy of `image` leaves it."""
    runpod.seed("templates", id="tpl-1", imageName=image, readme=readme or history(image), **TEMPLATE_BODY)
    runpod.seed("endpoints", id="ep-1", templateId="tpl-1", **ENDPOINT_BODY)


# ---------------------------------------------------------------- deploy

def test_first_deploy_creates_the_template_then_the_endpoint_with_its_id(runpod, cli):
    code, out, _ = cli("deploy", "--env", "staging")

    assert code == 0
    template = {**TEMPLATE_BODY, "imageName": tag(), "readme": history(tag())}
    assert runpod.requests() == [
        ("GET", f"{REST}/templates", None),
        ("GET", f"{REST}/endpoints", None),
        ("POST", f"{REST}/templates", template),
        ("POST", f"{REST}/endpoints", {**ENDPOINT_BODY, "templateId": "tpl-1"}),
    ]
    assert "template worker-staging: create" in out and "endpoint worker-staging: create" in out
    assert '  env.BUCKET_SECRET_ACCESS_KEY: "{{ RUNPOD_SECRET_bucket_secret }}"' in out
    assert "done: endpoint worker-staging is ep-1" in out


def test_an_unchanged_second_deploy_only_reads(runpod, cli):
    cli("deploy", "--env", "staging")
    first = len(runpod.mock.calls)

    code, out, _ = cli("deploy", "--env", "staging")

    assert code == 0
    assert runpod.requests(first) == [("GET", f"{REST}/templates", None), ("GET", f"{REST}/endpoints", None)]
    assert "template worker-staging (id tpl-1): unchanged" in out
    assert "endpoint worker-staging (id ep-1): unchanged" in out
    assert "nothing to change" in out


def test_a_changed_setting_patches_only_that_field(runpod, cli, config):
    deployed(runpod, tag())
    config.write_text(CONFIG.replace("workersMax: 2", "workersMax: 3"))

    code, out, _ = cli("deploy", "--env", "staging")

    assert code == 0
    assert runpod.requests()[2:] == [("PATCH", f"{REST}/endpoints/ep-1", {"workersMax": 3})]
    assert "endpoint worker-staging (id ep-1): update\n  workersMax: 2 -> 3\n" in out


def test_a_changed_environment_variable_sends_the_whole_env_and_shows_the_one_change(runpod, cli, config):
    deployed(runpod, tag())
    config.write_text(CONFIG.replace('WORKER_MAX_MODELS: "2"', 'WORKER_MAX_MODELS: "3"'))

    cli("deploy", "--env", "staging")

    assert runpod.requests()[2:] == [
        ("PATCH", f"{REST}/templates/tpl-1", {"env": {**TEMPLATE_BODY["env"], "WORKER_MAX_MODELS": "3"}})]


def test_a_new_image_updates_the_template_records_the_previous_one_and_says_how_to_go_back(runpod, cli):
    old = tag("0000000")
    deployed(runpod, old)

    code, out, _ = cli("deploy", "--env", "staging")

    assert code == 0
    assert runpod.requests()[2:] == [
        ("PATCH", f"{REST}/templates/tpl-1", {"imageName": tag(), "readme": history(tag(), old)})]
    assert f"deploy staging: image {tag()} (running now: {old})" in out
    assert f'  imageName: "{old}" -> "{tag()}"' in out
    assert f"previous image: {old} (make rollback ENV=staging goes back to it)" in out


def test_deploy_tag_chooses_the_image(runpod, cli):
    deployed(runpod, tag())

    cli("deploy", "--env", "staging", "--tag", "0.0.9")

    assert runpod.requests()[2][2]["imageName"] == f"{IMAGE}:0.0.9"


def test_an_endpoint_on_another_template_is_moved_to_ours(runpod, cli):
    deployed(runpod, tag())
    runpod.held["endpoints"]["ep-1"]["templateId"] = "someone-elses"

    cli("deploy", "--env", "staging")

    assert runpod.requests()[2:] == [("PATCH", f"{REST}/endpoints/ep-1", {"templateId": "tpl-1"})]


def test_an_endpoint_renamed_by_flashboot_is_still_found_and_keeps_its_name(runpod, cli):
    deployed(runpod, tag())
    runpod.held["endpoints"]["ep-1"]["name"] = "worker-staging -fb"

    code, out, _ = cli("deploy", "--env", "staging")

    assert code == 0 and len(runpod.requests()) == 2 and "nothing to change" in out


def test_two_endpoints_with_our_name_stop_the_deploy(runpod, cli):
    deployed(runpod, tag())
    runpod.seed("endpoints", id="ep-2", templateId="tpl-1", **ENDPOINT_BODY)

    code, _, err = cli("deploy", "--env", "staging")

    assert code == 1
    assert "error: 2 endpoints are named worker-staging (ids ep-1, ep-2): rename or delete all but one" in err
    assert [method for method, _, _ in runpod.requests()] == ["GET", "GET"]


# ---------------------------------------------------------------- dry run

def test_dry_run_reads_prints_the_plan_and_changes_nothing(runpod, cli, config):
    deployed(runpod, tag())
    config.write_text(CONFIG.replace("idleTimeout: 5", "idleTimeout: 30"))

    code, out, _ = cli("deploy", "--env", "staging", "--dry-run")

    assert code == 0
    assert [method for method, _, _ in runpod.requests()] == ["GET", "GET"]
    assert "endpoint worker-staging (id ep-1): update\n  idleTimeout: 5 -> 30\n" in out
    assert out.endswith("dry run: nothing was changed\n")


def test_dry_run_without_an_api_key_sends_nothing_and_prints_the_settings(runpod, cli, env):
    env.delenv("RUNPOD_API_KEY")

    code, out, _ = cli("deploy", "--env", "staging", "--dry-run")

    assert code == 0 and runpod.requests() == []
    assert "not compared with what RunPod holds" in out and "template worker-staging: create" in out


def test_deploy_without_an_api_key_fails_before_any_request(runpod, cli, env):
    env.delenv("RUNPOD_API_KEY")

    code, _, err = cli("deploy", "--env", "staging")

    assert code == 1 and runpod.requests() == []
    assert err == "error: RUNPOD_API_KEY is not set (a RunPod API key with read/write access)\n"


# ---------------------------------------------------------------- rollback

def test_rollback_deploys_the_image_recorded_before_the_current_one(runpod, cli):
    old = tag("0000000")
    deployed(runpod, tag(), readme=history(tag(), old))

    code, out, _ = cli("rollback", "--env", "staging")

    assert code == 0
    assert runpod.requests()[2:] == [
        ("PATCH", f"{REST}/templates/tpl-1", {"imageName": old, "readme": history(old, tag())})]
    assert f"rollback staging: image {old} (running now: {tag()})" in out


def test_rollback_to_a_tag(runpod, cli):
    deployed(runpod, tag())

    cli("rollback", "--env", "staging", "--to", "0.0.1-fedcba9")

    assert runpod.requests()[2][2]["imageName"] == f"{IMAGE}:0.0.1-fedcba9"


def test_rollback_with_no_earlier_image_says_to_name_one(runpod, cli):
    deployed(runpod, tag())

    code, _, err = cli("rollback", "--env", "staging")

    assert code == 1 and len(runpod.requests()) == 2
    assert f"cannot roll back: template worker-staging runs {tag()} and records no earlier image" in err


def test_rollback_dry_run_changes_nothing(runpod, cli):
    deployed(runpod, tag(), readme=history(tag(), tag("0000000")))

    code, out, _ = cli("rollback", "--env", "staging", "--dry-run")

    assert code == 0 and len(runpod.requests()) == 2 and "dry run: nothing was changed" in out


# ---------------------------------------------------------------- API errors

@pytest.mark.parametrize("status, body, message", [
    (401, {"error": "invalid api key"},
     "error: RunPod API: 401 Unauthorized on GET /templates: RUNPOD_API_KEY is missing, wrong or revoked"),
    (500, {"error": "database unavailable"},
     "error: RunPod API: server error 500 on GET /templates: database unavailable; nothing after this call was "
     "changed, run again later"),
    (400, {"error": "gpuTypeIds: invalid value"},
     "error: RunPod API: 400 on GET /templates: gpuTypeIds: invalid value"),
])
def test_api_errors_end_with_one_clear_line_and_exit_1(env, cli, status, body, message):
    with responses.RequestsMock() as mock:
        mock.get(f"{REST}/templates", status=status, json=body)
        code, out, err = cli("deploy", "--env", "staging")

    assert code == 1 and err == message + "\n"


def test_a_server_error_mid_deploy_names_the_call_and_stops(runpod, cli):
    runpod.fail_next("POST", "endpoints", 500, "upstream timeout")

    code, _, err = cli("deploy", "--env", "staging")

    assert code == 1
    assert "server error 500 on POST /endpoints: upstream timeout" in err
    assert [(method, url) for method, url, _ in runpod.requests()][-2:] == [
        ("POST", f"{REST}/templates"), ("POST", f"{REST}/endpoints")]


def test_429_is_retried_after_retry_after(runpod, cli):
    runpod.fail_next("GET", "templates", 429, headers={"Retry-After": "30"})  # RUNPOD_RETRY_MAX_WAIT=0: no wait

    code, _, _ = cli("deploy", "--env", "staging")

    assert code == 0
    assert [(method, url) for method, url, _ in runpod.requests()][:3] == [
        ("GET", f"{REST}/templates"), ("GET", f"{REST}/templates"), ("GET", f"{REST}/endpoints")]


def test_retry_waits_follow_retry_after_within_the_bound_and_give_up_after_five_attempts():
    waits = []
    api = RunPodApi(REST, API_KEY, max_wait=10, sleep=waits.append)
    with responses.RequestsMock() as mock:
        mock.get(f"{REST}/endpoints", status=429, headers={"Retry-After": "3"})
        mock.get(f"{REST}/endpoints", status=429, headers={"Retry-After": "120"})
        mock.get(f"{REST}/endpoints", status=429)
        mock.get(f"{REST}/endpoints", status=429, headers={"Retry-After": "0"})
        mock.get(f"{REST}/endpoints", status=429)
        with pytest.raises(DeployError, match=r"still rate limited \(429\) on GET /endpoints after 5 attempts"):
            api.get("/endpoints")
        assert len(mock.calls) == 5
    assert waits == [3, 10, 4, 0]  # Retry-After, capped at max_wait; without one: 1, 2, 4, ...


def test_every_request_carries_the_bearer_key(runpod, cli):
    cli("deploy", "--env", "staging")

    assert {call.request.headers["Authorization"] for call in runpod.mock.calls} == {f"Bearer {API_KEY}"}


class _Unauthorized(BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(401)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(json.dumps({"error": f"bad key {self.headers['Authorization']}"}).encode())

    def log_message(self, *args):
        pass


def test_the_command_line_exits_1_with_one_line_and_never_echoes_the_key(config):
    """The real process against a loopback server (RUNPOD_REST_URL) that echoes the key in its error."""
    server = HTTPServer(("127.0.0.1", 0), _Unauthorized)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        result = subprocess.run(
            [sys.executable, "-m", "infra.deploy", "--config", str(config), "deploy", "--env", "staging"],
            cwd=REPO_ROOT, capture_output=True, text=True, timeout=60,
            env={"PATH": "/usr/bin:/bin", "RUNPOD_API_KEY": API_KEY, "GITHUB_SHA": "abc1234",
                 "RUNPOD_REST_URL": f"http://127.0.0.1:{server.server_port}/v1"})
    finally:
        server.shutdown()

    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        "error: RunPod API: 401 Unauthorized on GET /templates: RUNPOD_API_KEY is missing, wrong or revoked"]
    assert API_KEY not in result.stdout + result.stderr


def test_an_echoed_key_in_an_error_body_is_masked(env, cli):
    with responses.RequestsMock() as mock:
        mock.get(f"{REST}/templates", status=400, json={"error": f"malformed header Bearer {API_KEY}"})
        code, _, err = cli("deploy", "--env", "staging")

    assert code == 1 and err == "error: RunPod API: 400 on GET /templates: malformed header Bearer ***\n"


# ---------------------------------------------------------------- smoke test

def a1111_answer(**overrides) -> dict:
    output = {"images": [PNG_B64], "parameters": {"prompt": "a cat"},
              "info": json.dumps({"all_seeds": [42], "infotexts": ["a cat\nSteps: 20"]})}
    return {"id": "job-1", "status": "COMPLETED", "executionTime": 1234, "output": output, **overrides}


@pytest.fixture
def endpoint_up(runpod):
    deployed(runpod, tag())
    return runpod


def test_smoke_sends_test_input_to_runsync_and_checks_the_a1111_answer(endpoint_up, cli):
    endpoint_up.mock.post(f"{SERVERLESS}/ep-1/runsync", json=a1111_answer())

    code, out, _ = cli("smoke", "--env", "staging")

    job = json.loads((REPO_ROOT / "test_input.json").read_text())
    sent = endpoint_up.requests()[-1]
    assert sent == ("POST", f"{SERVERLESS}/ep-1/runsync", {"input": {"delivery": {"mode": "base64"}, **job["input"]}})
    assert endpoint_up.mock.calls[-1].request.headers["Authorization"] == f"Bearer {API_KEY}"
    assert code == 0
    assert "smoke test passed: 1 PNG image(s), seeds [42], in 1234 ms" in out


def test_smoke_base_url_can_point_at_another_server(endpoint_up, cli, env):
    env.setenv("RUNPOD_SERVERLESS_URL", "http://fake-runpod.test/v2")
    endpoint_up.mock.post("http://fake-runpod.test/v2/ep-1/runsync", json=a1111_answer())

    code, _, _ = cli("smoke", "--env", "staging")

    assert code == 0 and endpoint_up.requests()[-1][1] == "http://fake-runpod.test/v2/ep-1/runsync"


@pytest.mark.parametrize("answer, message", [
    (a1111_answer(status="FAILED", output=None, error="width: must be a multiple of 8"),
     "smoke test: the job ended FAILED: width: must be a multiple of 8"),
    (a1111_answer(output={"images": [], "info": "{}"}),
     "smoke test: the output has no `images` (expected A1111's response)"),
    (a1111_answer(output={"images": ["https://bucket.example/0.png"], "info": "{}"}),
     "smoke test: images[0] is not a base64 PNG"),
    (a1111_answer(output={"images": [base64.b64encode(b"GIF89a").decode()], "info": "{}"}),
     "smoke test: images[0] is not a base64 PNG"),
    (a1111_answer(output={"images": [PNG_B64], "info": "Steps: 20"}),
     "smoke test: the output's `info` is not a JSON object string"),
])
def test_smoke_fails_the_pipeline_on_a_wrong_answer(endpoint_up, cli, answer, message):
    endpoint_up.mock.post(f"{SERVERLESS}/ep-1/runsync", json=answer)

    code, _, err = cli("smoke", "--env", "staging")

    assert code == 1 and err == f"error: {message}\n"


def test_smoke_without_an_endpoint_says_to_deploy_first(runpod, cli):
    code, _, err = cli("smoke", "--env", "staging")

    assert code == 1 and err == "error: smoke test: no endpoint named worker-staging: deploy first\n"


def test_smoke_follows_a_job_that_outlives_runsync_through_status():
    api = RunPodApi(SERVERLESS, API_KEY)
    with responses.RequestsMock() as mock:
        mock.post(f"{SERVERLESS}/ep-1/runsync", json={"id": "job-1", "status": "IN_QUEUE"})
        mock.get(f"{SERVERLESS}/ep-1/status/job-1", json={"id": "job-1", "status": "IN_PROGRESS"})
        mock.get(f"{SERVERLESS}/ep-1/status/job-1", json=a1111_answer())
        waits = []
        summary = run_smoke_test(api, "ep-1", {"input": {}}, poll_s=5, sleep=waits.append)
        assert [call.request.method for call in mock.calls] == ["POST", "GET", "GET"]
    assert summary.startswith("1 PNG image(s)") and waits == [5, 5]


def test_smoke_gives_up_at_its_timeout():
    api = RunPodApi(SERVERLESS, API_KEY)
    clock = iter(range(0, 1000, 100)).__next__  # 100 s pass between readings
    with responses.RequestsMock() as mock:
        mock.post(f"{SERVERLESS}/ep-1/runsync", json={"id": "job-1", "status": "IN_QUEUE"})
        mock.get(f"{SERVERLESS}/ep-1/status/job-1", json={"id": "job-1", "status": "IN_PROGRESS"})
        with pytest.raises(DeployError, match="smoke test: job job-1 still IN_PROGRESS after 250 s"):
            run_smoke_test(api, "ep-1", {"input": {}}, timeout_s=250, sleep=lambda _: None, clock=clock)
