"""`python -m handler`: the RunPod serverless worker. RunPod's flags work (--test_input, --rp_serve_api, ...).

The engine loads the checkpoint here, before serverless.start, so it happens once per worker
(handler/startup.py: runpod imports beside it). Logging is set up first (handler/logs.py). In the SDK's
production mode (it takes jobs from RunPod's job API) each job's progress is posted while it runs
(handler/progress_updates.py); its local modes have nowhere to post it. With WORKER_CONCURRENCY above 1 the
worker takes that many jobs at once, and compatible txt2img jobs run as one batch (handler/batching.py).
"""

import asyncio
import os
import sys

from .logs import configure_logging, redact_runpod_logs
from .batching import concurrency_from_env
from .progress_updates import ProgressUpdates, interval_from_env
from .startup import start_engine

_LOCAL_FLAGS = ("--test_input", "--rp_serve_api")  # the SDK runs one job, or serves its local API


def production_mode(argv: list[str]) -> bool:
    """Whether the SDK will take jobs from RunPod's job API: RUNPOD_WEBHOOK_GET_JOB is set and no local flag given."""
    local = any(arg.split("=", 1)[0] in _LOCAL_FLAGS for arg in argv)
    return bool(os.environ.get("RUNPOD_WEBHOOK_GET_JOB")) and not local


def main() -> None:
    configure_logging()  # before runpod is imported, on start_engine's second thread
    try:
        interval = interval_from_env()
        concurrency = concurrency_from_env()
    except ValueError as error:
        sys.exit(f"error: {error}")
    engine = start_engine(beside=("runpod.serverless",))
    from runpod import serverless  # imported by now

    from .batching import BatchingEngine, jobs_at_once
    from .worker import make_handler  # the engine's modules: imported by now too

    redact_runpod_logs()
    updates = ProgressUpdates(interval) if production_mode(sys.argv[1:]) else None
    jobs = jobs_at_once(concurrency, engine.device)
    if jobs == 1:
        serverless.start({"handler": make_handler(engine, updates)})
        return
    handle = make_handler(BatchingEngine(engine), updates)

    async def handle_concurrently(job: dict) -> dict:  # the SDK awaits it; the job runs on a thread of its own
        return await asyncio.to_thread(handle, job)

    serverless.start({"handler": handle_concurrently, "concurrency_modifier": lambda current: jobs})




if __name__ == "__main__":
    main()
