"""`python -m handler`: the RunPod serverless worker. RunPod's flags work (--test_input, --rp_serve_api, ...).

The engine loads the checkpoint here, before serverless.start, so it happens once per worker
(handler/startup.py: runpod imports beside it). Logging is set up first (handler/logs.py).
"""

from .logs import configure_logging, redact_runpod_logs
from .startup import start_engine


def main() -> None:
    configure_logging()  # before runpod is imported, on start_engine's second thread
    engine = start_engine(beside=("runpod.serverless",))
    from runpod import serverless  # imported by now

    from .worker import make_handler  # the engine's modules: imported by now too

    redact_runpod_logs()
    serverless.start({"handler": make_handler(engine)})


if __name__ == "__main__":
    main()
