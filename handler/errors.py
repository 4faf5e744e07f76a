"""One-line error messages for callers: which field, which rule. Never a traceback."""

from __future__ import annotations

import json

from pydantic import ValidationError

from schemas.errors import cut

MAX_ERROR_CHARS = 1000  # a backstop: messages quote only prefixes of what was sent (schemas.errors.cut)


class BadEnvelope(ValueError):
    """The job's input is not an A1111 body or an {"api", "payload"} envelope."""


class NotOffered(Exception):
    """An A1111 endpoint a serverless worker does not offer (training, stopping the server): the message says
    why. The HTTP adapter answers 400."""


def describe(error: Exception, inputs: bool = True) -> str:
    """One line, at most MAX_ERROR_CHARS long; `inputs=False` leaves out the values a ValidationError was given
    (they may be secrets)."""
    if isinstance(error, ValidationError):
        text = "; ".join(_describe_item(item, inputs) for item in error.errors(include_url=False))
    else:
        text = " ".join(str(error).split())
    return text if len(text) <= MAX_ERROR_CHARS else text[:MAX_ERROR_CHARS - 3] + "..."


def _describe_item(item: dict, inputs: bool) -> str:
    field = ".".join(cut(str(part)) for part in item["loc"])
    message = " ".join(item["msg"].removeprefix("Value error, ").split())
    given = item.get("input")
    if inputs and "(got " not in message and isinstance(given, (str, int, float, bool)) and item["type"] != "missing":
        message += f" (got {cut(json.dumps(given))})"
    return f"{field}: {message}" if field else message
