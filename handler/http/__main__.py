"""`python -m handler.http --host 127.0.0.1 --port 7860 [--api-auth user:pass[,user2:pass2]]`

Bearer tokens (as hosted A1111 endpoints use them) come from API_TOKENS (comma-separated).
The same image as the RunPod worker serves this, with this as its command.
"""

import argparse
import os

from ..batching import concurrency_from_env, jobs_at_once
from ..logs import configure_logging
from ..startup import start_engine


def parse_credentials(api_auth: str) -> list[tuple[str, str]]:
    """`--api-auth user:pass[,user2:pass2]` as (user, password) pairs."""
    pairs = []
    for item in filter(None, (part.strip() for part in api_auth.split(","))):
        user, sep, password = item.partition(":")
        if not sep:
            raise argparse.ArgumentTypeError(f"expected user:password, got {item!r}")
        pairs.append((user, password))
    return pairs


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m handler.http", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--api-auth", type=parse_credentials, default=[],
                        help="HTTP Basic credentials, user:pass[,user2:pass2]")
    args = parser.parse_args(argv)
    configure_logging()
    try:
        concurrency = concurrency_from_env()
    except ValueError as error:
        parser.exit(2, f"error: {error}\n")
    engine = start_engine(beside=("fastapi", "uvicorn"))
    import uvicorn  # imported by now

    from .app import create_app

    tokens = [t.strip() for t in os.environ.get("API_TOKENS", "").split(",") if t.strip()]
    uvicorn.run(create_app(engine, args.api_auth, tokens, concurrency=jobs_at_once(concurrency, engine.device)),
                host=args.host, port=args.port)


if __name__ == "__main__":
    main()
