"""Errors a request can cause after its schema validated (bad values only known against the engine), and
how messages quote what was sent: never more than a short prefix, so an error never grows with the input."""

from __future__ import annotations

from pydantic import ValidationError

QUOTE_CHARS = 60


class RequestError(ValueError):
    """The request asks for something this worker can't do; `field` names the request field."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field


def cut(text: str) -> str:
    """`text`, or its first QUOTE_CHARS characters and "..."."""
    return text if len(text) <= QUOTE_CHARS else text[:QUOTE_CHARS] + "..."


def quoted(name: str) -> str:
    """A name the request sent, quoted for an error message (repr-style, cut)."""
    return repr(cut(name))


def summary(error: ValidationError) -> str:
    """A validation error's problems on one line: `field: message; ...` (field names cut)."""
    problems = []
    for item in error.errors(include_url=False):
        field = ".".join(cut(str(part)) for part in item["loc"])
        message = " ".join(item["msg"].removeprefix("Value error, ").split())
        problems.append(f"{field}: {message}" if field else message)
    return "; ".join(problems)
