"""`python -m handler.http --host 127.0.0.1 --port 7860 [--api-auth user:pass[,user2:pass2]]`

Bearer tokens (as hosted A1111 endpoints use them) come from API_TOKENS (comma-separated).
"""

import argparse
import os
import sys

import uvicorn

from engine.loading import UnsupportedCheckpoint
from engine.models_dir import ModelsDirError
from engine.runtime import Engine

from . import create_app, parse_credentials


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m handler.http", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--api-auth", help="HTTP Basic credentials, user:pass[,user2:pass2]")
    args = parser.parse_args(argv)
    try:
        credentials = parse_credentials(args.api_auth)
        engine = Engine.start()
    except (ValueError, ModelsDirError, UnsupportedCheckpoint) as error:
        sys.exit(f"error: {error}")
    tokens = [t.strip() for t in os.environ.get("API_TOKENS", "").split(",") if t.strip()]
    uvicorn.run(create_app(engine, credentials, tokens), host=args.host, port=args.port)


if __name__ == "__main__":
    main()
