"""One-line error messages for callers: which field, which rule. Never a traceback."""

from __future__ import annotations

import json

from pydantic import ValidationError


class BadEnvelope(ValueError):
    """The job's input is not an A1111 body or an {"api", "payload"} envelope."""


def describe(error: Exception, inputs: bool = True) -> str:
    """One line; `inputs=False` leaves out the values a ValidationError was given (they may be secrets)."""
    if isinstance(error, ValidationError):
        return "; ".join(_describe_item(item, inputs) for item in error.errors(include_url=False))
    return " ".join(str(error).split())  # one line


def _describe_item(item: dict, inputs: bool) -> str:
    field = ".".join(str(part) for part in item["loc"])
    message = item["msg"].removeprefix("Value error, ")
    given = item.get("input")
    if inputs and "(got " not in message and isinstance(given, (str, int, float, bool)) and item["type"] != "missing":
        message += f" (got {json.dumps(given)})"
    return f"{field}: {message}" if field else message
