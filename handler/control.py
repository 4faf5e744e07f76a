"""A1111's control endpoints: options, progress, interrupt and skip, refreshing the lists of checkpoints, VAEs,
LoRAs and embeddings, unload and reload; and the refusal of those a serverless worker does not offer."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .errors import NotOffered

if TYPE_CHECKING:
    from engine.runtime import Engine


def get_options(engine: Engine, payload: dict, destination) -> dict[str, Any]:
    return engine.options.model_dump()


def set_options(engine: Engine, payload: dict, destination) -> None:
    engine.set_options(payload)


def progress(engine: Engine, payload: dict, destination) -> dict[str, Any]:
    state = engine.progress
    return {
        "progress": state.fraction(),
        "eta_relative": 0.0,
        "state": {"skipped": state.skipped, "interrupted": state.interrupted, "stopping_generation": False,
                  "job": state.job, "job_count": state.job_count, "job_timestamp": state.job_timestamp,
                  "job_no": state.job_no, "sampling_step": state.sampling_step,
                  "sampling_steps": state.sampling_steps},
        "current_image": None,
        "textinfo": None,
    }


def interrupt(engine: Engine, payload: dict, destination) -> dict:
    engine.progress.interrupted = bool(engine.progress.job)
    return {}


def skip(engine: Engine, payload: dict, destination) -> None:
    engine.progress.skipped = bool(engine.progress.job)


def refresh_checkpoints(engine: Engine, payload: dict, destination) -> None:
    engine.refresh_checkpoints()


def refresh_vae(engine: Engine, payload: dict, destination) -> None:
    engine.vaes.refresh()


def refresh_embeddings(engine: Engine, payload: dict, destination) -> None:
    engine.embeddings.refresh()


def refresh_loras(engine: Engine, payload: dict, destination) -> None:
    engine.loras.refresh()


def unload_checkpoint(engine: Engine, payload: dict, destination) -> dict:
    engine.unload()
    return {}


def reload_checkpoint(engine: Engine, payload: dict, destination) -> dict:
    engine.reload()
    return {}


NO_TRAINING = ("training is not offered by a serverless worker: train elsewhere (e.g. with kohya_ss or A1111 "
               "itself) and bake the result into the image ([[embeddings]] or [[loras]] in the bake manifest)")
NO_SERVER_CONTROL = ("stopping or restarting the server is not offered by a serverless worker: the platform "
                     "starts and stops workers (scale the endpoint's workers instead)")


def not_offered(reason: str) -> Callable[[Engine, dict, Any], None]:
    """An operation that refuses its endpoint with NotOffered(reason)."""
    def refuse(engine: Engine, payload: dict, destination) -> None:
        raise NotOffered(reason)

    return refuse
