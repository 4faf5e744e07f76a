"""Server faults told apart from the request's mistakes: out of memory and device failures are never the
client's fault, whatever operation they interrupt. Light: imports torch only when asked about an error."""

from __future__ import annotations

import gc
import logging
import traceback
from collections.abc import Iterator
from contextlib import contextmanager

log = logging.getLogger(__name__)

# errors that mean our code or the machine failed, never that a file or a value was bad
_PROGRAMMING_ERRORS = (AttributeError, AssertionError, NameError, NotImplementedError, RecursionError, TypeError)
_OUT_OF_MEMORY_TEXTS = ("out of memory", "can't allocate memory", "not enough memory")


class OutOfMemory(RuntimeError):
    """An operation ran out of device memory; the message says what it was doing. The worker goes on."""


def is_out_of_memory(error: BaseException) -> bool:
    import torch

    if isinstance(error, (torch.OutOfMemoryError, MemoryError)):
        return True
    return isinstance(error, RuntimeError) and any(text in str(error) for text in _OUT_OF_MEMORY_TEXTS)


def is_server_fault(error: BaseException) -> bool:
    """Out of memory, a device (CUDA) failure or a bug: a loader's error that says nothing of the file."""
    import torch

    accelerator_error = getattr(torch, "AcceleratorError", ())
    return (is_out_of_memory(error) or isinstance(error, _PROGRAMMING_ERRORS)
            or (accelerator_error and isinstance(error, accelerator_error))
            or (isinstance(error, RuntimeError) and "CUDA error" in str(error)))


def reraise_server_fault(error: BaseException) -> None:
    """Call first in a loader's catch-all: a server fault goes on up as itself, not as the request's error."""
    if is_server_fault(error):
        raise error


@contextmanager
def out_of_memory_as_error(device, what: str) -> Iterator[None]:
    """Out of memory inside becomes OutOfMemory("out of <device> memory at <what>"), after the failed
    operation's tensors are released and the device's cached memory freed, so the next request starts clean."""
    try:
        yield
    except Exception as error:
        if not is_out_of_memory(error):
            raise
        log.warning("out of memory at %s: %s", what, str(error).splitlines()[0] if str(error) else "")
        traceback.clear_frames(error.__traceback__)  # the frames' locals hold the tensors
        gc.collect()
        if device.type == "cuda":
            import torch

            torch.cuda.empty_cache()
        kind = "GPU" if device.type == "cuda" else device.type.upper()
        raise OutOfMemory(f"out of {kind} memory at {what}; ask for fewer or smaller images") from None
