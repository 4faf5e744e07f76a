"""The worker's log: one line per job (handler/worker.py), levels set at start and no image data or
credentials from the RunPod SDK (handler/logs.py), in the handler and in `python -m handler --test_input`."""

from __future__ import annotations

import json
import logging
import subprocess
import sys

import pytest

from conftest import REPO_ROOT
from handler.logs import configure_logging, redact
from handler.worker import make_handler

PNG_BASE64 = "iVBORw0KGgo"  # how every base64 PNG starts
SMALL = {"prompt": "a lighthouse at dusk", "steps": 1, "width": 64, "height": 64, "seed": 1}
CALLER_SECRET = "caller-secret-in-a-log-test"


def job_records(caplog, engine, job: dict) -> tuple[dict, list[logging.LogRecord]]:
    with caplog.at_level(logging.INFO, logger="handler"):
        output = make_handler(engine)({"id": "log-1", **job})
    return output, [r for r in caplog.records if r.name == "handler.worker"]


def test_a_job_logs_one_line_without_images_or_prompt(engine, caplog):
    output, records = job_records(caplog, engine, {"input": {**SMALL, "batch_size": 2}})
    assert output["images"][0].startswith(PNG_BASE64)
    assert len(records) == 1 and records[0].levelno == logging.INFO
    message = records[0].getMessage()
    assert message.startswith("job log-1: txt2img 64x64x2, ") and message.endswith(" s, ok") and "\n" not in message
    assert PNG_BASE64 not in caplog.text and "lighthouse" not in caplog.text


def test_a_refused_job_logs_the_error_and_no_credentials(engine, caplog):
    s3_config = {"accessId": "CALLERKEY", "accessSecret": CALLER_SECRET}  # no bucket named, none configured
    output, records = job_records(caplog, engine, {"input": {**SMALL, "n_iter": 3}, "s3Config": s3_config})
    assert output["error"].startswith("s3Config.bucketName: required")
    assert [r.getMessage().split(", ", 2)[2] for r in records] == [f"client error: {output['error']}"]
    assert records[0].getMessage().startswith("job log-1: txt2img 64x64x3, ")
    assert CALLER_SECRET not in caplog.text and "CALLERKEY" not in caplog.text


def test_a_client_error_is_cut_to_200_characters_and_one_line(engine, caplog):
    output, records = job_records(caplog, engine, {"input": {"api": {"endpoint": "txt2img\nINFO | forged"},
                                                             "payload": {"width": 65, "styles": ["x" * 300]}}})
    message = records[0].getMessage()
    assert len(records) == 1 and "\n" not in message and len(output["error"]) > 200
    assert message.startswith("job log-1: txt2img INFO | forged -, ")
    assert message.endswith(f"client error: {output['error'][:200]}")


def test_an_internal_error_logs_one_record_with_its_traceback(engine, caplog, monkeypatch):
    monkeypatch.setattr(engine, "txt2img", lambda request, *rest: 1 / 0)
    output, records = job_records(caplog, engine, {"input": SMALL})
    assert output["error"] == "internal error: ZeroDivisionError: division by zero"
    assert len(records) == 1 and records[0].levelno == logging.ERROR
    assert records[0].getMessage().endswith(" s, internal error") and records[0].exc_info[0] is ZeroDivisionError


def test_redact_cuts_base64_and_s3_config_keys():
    image = "iVBORw0KGgo" + "A" * 500 + "=="
    text = f"""Job result: {{'images': ['{image}'], 's3Config': {{'accessId': 'AKID', "accessSecret": "s'e"}}}}"""
    assert redact(text) == ("Job result: {'images': ['<513 base64 characters>'], "
                            """'s3Config': {'accessId': '***', "accessSecret": "***"}}""")
    assert redact("job log-1: txt2img 64x64x1, 0.10 s, ok") == "job log-1: txt2img 64x64x1, 0.10 s, ok"


@pytest.fixture
def restore_levels():
    loggers = [logging.getLogger(name) for name in ("handler", "engine")]
    levels = [logger.level for logger in loggers]
    yield
    for logger, level in zip(loggers, levels):
        logger.setLevel(level)


@pytest.mark.parametrize("env, sdk_level, level", [
    ({}, "INFO", logging.INFO),
    ({"WORKER_LOG_LEVEL": "debug"}, "DEBUG", logging.DEBUG),
    ({"WORKER_LOG_LEVEL": "WARNING"}, "WARN", logging.WARNING),
    ({"WORKER_LOG_LEVEL": "ERROR", "RUNPOD_LOG_LEVEL": "TRACE"}, "TRACE", logging.ERROR),
    ({"RUNPOD_DEBUG_LEVEL": "DEBUG"}, None, logging.INFO),
])
def test_levels_default_to_info_unless_the_operator_sets_them(restore_levels, env, sdk_level, level):
    configure_logging(env)
    assert env.get("RUNPOD_LOG_LEVEL") == sdk_level
    assert logging.getLogger("handler").level == logging.getLogger("engine").level == level


def test_an_unknown_level_stops_the_worker(restore_levels):
    with pytest.raises(SystemExit, match="WORKER_LOG_LEVEL: must be one of DEBUG, INFO, WARNING, WARN, ERROR"):
        configure_logging({"WORKER_LOG_LEVEL": "verbose"})


@pytest.mark.parametrize("level", ["default", "DEBUG"])
def test_worker_process_logs_no_images_nor_credentials(models_dir, worker_env, level):
    """`python -m handler --test_input`: the RunPod SDK prints the job and its result (at DEBUG, or
    with --test_input at INFO); here they come out redacted, beside the job's line."""
    env = {k: v for k, v in worker_env(models_dir).items()
           if k not in ("RUNPOD_LOG_LEVEL", "RUNPOD_DEBUG_LEVEL", "WORKER_LOG_LEVEL", "RUNPOD_ENDPOINT_ID")}
    if level != "default":
        env["WORKER_LOG_LEVEL"] = level
    job = {"input": {**SMALL, "delivery": {"mode": "base64"}},
           "s3Config": {"accessId": "CALLERKEY", "accessSecret": CALLER_SECRET, "bucketName": "caller-bucket"}}
    result = subprocess.run([sys.executable, "-m", "handler", "--test_input", json.dumps(job)], cwd=REPO_ROOT,
                            env=env, capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert "completed successfully" in output and "base64 characters>" in output  # the result, redacted
    assert "job local_test: txt2img 64x64x1, " in output
    assert PNG_BASE64 not in output and CALLER_SECRET not in output and "CALLERKEY" not in output
    assert ("Handler output:" in output) == (level == "DEBUG")
