"""What the deploy scripts print, with the values of secret environment variables masked.

The scripts never put a secret into a message on purpose; this catches one echoed back by a server or a
tool (an error body quoting a header, a docker message), so a CI log never holds one.
"""

import os

SECRET_ENV = ("RUNPOD_API_KEY", "REGISTRY_PASSWORD", "HF_TOKEN", "CIVITAI_TOKEN")
MASK = "***"


def redact(text: str) -> str:
    """`text` with the value of every variable in SECRET_ENV that is set replaced by ***."""
    for name in SECRET_ENV:
        value = os.environ.get(name)
        if value:
            text = text.replace(value, MASK)
    return text


def say(text: str = "") -> None:
    print(redact(text), flush=True)
