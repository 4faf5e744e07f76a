"""Errors a request can cause after its schema validated: bad values only known against the engine."""


class RequestError(ValueError):
    """The request asks for something this worker can't do; `field` names the request field."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field
