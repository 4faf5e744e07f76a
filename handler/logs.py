"""Logging for the adapters (`python -m handler`, `python -m handler.http`): levels set once at start, and
neither image data nor credentials in the log.

The RunPod SDK logs at DEBUG unless told otherwise, and at DEBUG it writes every job's output (the
base64 images) into the log; with `--test_input` it writes the result at INFO too. So its level
defaults to INFO (RUNPOD_LOG_LEVEL or RUNPOD_DEBUG_LEVEL, else WORKER_LOG_LEVEL, set another), and its
messages lose base64 runs and s3Config's keys at every level. The worker's own modules log at
WORKER_LOG_LEVEL (default INFO); other libraries at WARNING (botocore's debug output carries request
bodies).
"""

from __future__ import annotations

import logging
import os
import re
import sys
from collections.abc import MutableMapping

SDK_LEVELS = {"DEBUG": "DEBUG", "INFO": "INFO", "WARNING": "WARN", "WARN": "WARN", "ERROR": "ERROR"}  # ours: SDK's
_BASE64 = re.compile(r"[A-Za-z0-9+/]{200,}={0,2}")
_KEYS = re.compile(r"""(['"]access(?:Id|Secret)['"]\s*:\s*)(['"])(?:(?!\2).)*\2""")


def configure_logging(env: MutableMapping[str, str] = os.environ) -> None:
    """Set the levels: call before runpod is imported (its logger reads its level on import)."""
    level = env.get("WORKER_LOG_LEVEL", "INFO").strip().upper()
    if level not in SDK_LEVELS:
        sys.exit(f"error: WORKER_LOG_LEVEL: must be one of {', '.join(SDK_LEVELS)} (got {level!r})")
    if not (env.get("RUNPOD_LOG_LEVEL") or env.get("RUNPOD_DEBUG_LEVEL")):
        env["RUNPOD_LOG_LEVEL"] = SDK_LEVELS[level]
    logging.basicConfig(format="%(levelname)-7s| %(name)s | %(message)s")
    for package in ("handler", "engine"):
        logging.getLogger(package).setLevel(level)


def redact(message: str) -> str:
    """`message` with base64 runs (images) and s3Config's accessId and accessSecret values cut out."""
    message = _KEYS.sub(r"\1\2***\2", message)
    return _BASE64.sub(lambda run: f"<{len(run.group())} base64 characters>", message)


def redact_runpod_logs() -> None:
    """Pass every message of the RunPod SDK's logger (imported by now) through `redact`."""
    from runpod.serverless.modules.rp_logger import RunPodLogger

    log = RunPodLogger.log

    def redacted(self, message, *args, **kwargs):
        return log(self, redact(str(message)), *args, **kwargs)

    RunPodLogger.log = redacted
