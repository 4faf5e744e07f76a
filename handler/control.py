"""A1111's control endpoints: options, progress, interrupt and skip, refreshing the lists of checkpoints, VAEs,
LoRAs and embeddings, unload and reload; and the refusal of those a serverless worker does not offer."""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from engine.imaging.images import encode_image

from .errors import NotOffered

if TYPE_CHECKING:
    from engine.runtime import Engine
    from engine.tasks.progress import Progress
    from schemas import Options


def get_options(engine: Engine, payload: dict, destination) -> dict[str, Any]:
    return engine.options.model_dump()


def set_options(engine: Engine, payload: dict, destination) -> None:
    engine.set_options(payload)


class ProgressRequest(BaseModel):
    """GET /progress's query (A1111's)."""

    skip_current_image: bool = False


def preview_period(options: Options) -> int:
    """Steps between live previews by A1111's options (live_previews_enable, show_progress_every_n_steps); 0: none.
    Both are stored as given, so a value of another type turns previews off."""
    every = options.show_progress_every_n_steps
    enabled = options.live_previews_enable is True and isinstance(every, int) and not isinstance(every, bool)
    return max(every, 0) if enabled else 0


def progress_body(state: Progress, current_image: str | None = None) -> dict[str, Any]:
    """A1111's /progress body for `state`, with `current_image` (base64) as given."""
    return {
        "progress": state.fraction(),
        "eta_relative": state.eta_relative(),
        "state": {"skipped": state.skipped, "interrupted": state.interrupted, "stopping_generation": False,
                  "job": state.job, "job_count": state.job_count, "job_timestamp": state.job_timestamp,
                  "job_no": state.job_no, "sampling_step": state.sampling_step,
                  "sampling_steps": state.sampling_steps},
        "current_image": current_image,
        "textinfo": None,
    }


def encoded_preview(state: Progress, image_format: str) -> tuple[int, str] | None:
    """The latest live preview (engine/tasks/progress.py) as (its number, base64 `image_format`), if any."""
    preview = state.preview()
    if preview is None:
        return None
    return preview.number, base64.b64encode(encode_image(preview.image, None, image_format).data).decode("ascii")


def progress(engine: Engine, payload: dict, destination) -> dict[str, Any]:
    """With the latest live preview as a PNG unless the query says skip_current_image."""
    request = ProgressRequest.model_validate(payload)
    preview = None if request.skip_current_image else encoded_preview(engine.progress, "png")
    return progress_body(engine.progress, preview[1] if preview else None)


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
