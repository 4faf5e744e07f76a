"""A1111's listing endpoints (GET /sdapi/v1/<name>), in its response shapes."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from schemas.samplers import SAMPLERS, SCHEDULES
from schemas.scripts import script_info_listing, scripts_listing

if TYPE_CHECKING:
    from engine.runtime import Engine


def sd_models(engine: Engine, payload: dict, destination) -> list[dict[str, Any]]:
    return [{"title": c.title, "model_name": c.model_name, "hash": c.short_hash, "sha256": c.sha256,
             "filename": str(c.path), "config": None} for c in engine.checkpoints]


def samplers(engine: Engine, payload: dict, destination) -> list[dict[str, Any]]:
    return [{"name": s.name, "aliases": list(s.aliases), "options": {}} for s in SAMPLERS if s.scheduler_class]


def schedulers(engine: Engine, payload: dict, destination) -> list[dict[str, Any]]:
    return [{"name": s.name, "label": s.label, "aliases": None, "default_rho": -1, "need_inner_model": False}
            for s in SCHEDULES if s.diffusers is not None]


def upscalers(engine: Engine, payload: dict, destination) -> list[dict[str, Any]]:
    """The pixel-space upscalers, built-in and neural (the latent modes are listed by latent-upscale-modes)."""
    return engine.upscalers.listing()


def realesrgan_models(engine: Engine, payload: dict, destination) -> list[dict[str, Any]]:
    """The RealESRGAN/ upscalers present: [{name, path, scale}]."""
    return engine.upscalers.realesrgan_listing()


def face_restorers(engine: Engine, payload: dict, destination) -> list[dict[str, Any]]:
    """The face restorers whose weights are in the models directory."""
    return engine.faces.listing()


def latent_upscale_modes(engine: Engine, payload: dict, destination) -> list[dict[str, str]]:
    from engine.postprocess.upscalers import LATENT_MODES

    return [{"name": name} for name in LATENT_MODES]


def loras(engine: Engine, payload: dict, destination) -> list[dict[str, Any]]:
    """The LoRA files in the models directory's Lora/ folder: [{name, alias, path, metadata}]."""
    return engine.loras.listing()


def prompt_styles(engine: Engine, payload: dict, destination) -> list[dict[str, str]]:
    """The styles file's styles: [{name, prompt, negative_prompt}]."""
    return engine.styles.listing()


def nothing_listed(engine: Engine, payload: dict, destination) -> list:
    """Listings of what this worker does not offer (hypernetworks; extensions, which A1111 lists only when
    installed from a git repository, so its built-in ones never): empty, as A1111's with none installed."""
    return []


def sd_vae(engine: Engine, payload: dict, destination) -> list[dict[str, str]]:
    return engine.vaes.listing()


def sd_modules(engine: Engine, payload: dict, destination) -> list[dict[str, str]]:
    """Forge's listing of the VAE and text-encoder files it can add to a checkpoint, [{model_name, filename}]
    (A1111 1.10 has no such endpoint): here the VAE files, which are all this worker can add."""
    return engine.vaes.listing()


def embeddings(engine: Engine, payload: dict, destination) -> dict[str, dict]:
    """Loaded: the embeddings that fit the current checkpoint's text encoder; skipped: the others."""
    encoder = engine.model.encoder
    return engine.embeddings.listing(encoder.embedding_width, encoder.embedding_keys)


def scripts(engine: Engine, payload: dict, destination) -> dict[str, list[str]]:
    """The built-in scripts script_name may name, per endpoint, in lower case (as A1111 lists them)."""
    return scripts_listing()


def script_info(engine: Engine, payload: dict, destination) -> list[dict[str, Any]]:
    """Each script's arguments (script_args, in order) as A1111's UI shows them; upscaler choices are /upscalers'."""
    return script_info_listing(engine.upscalers.names)


def cmd_flags(engine: Engine, payload: dict, destination) -> dict[str, Any]:
    """The worker's effective settings, in place of A1111's command-line flags."""
    return {"api": True, "nowebui": True, "ckpt_dir": str(engine.models_dir / "Stable-diffusion"),
            "models_dir": str(engine.models_dir), "device": str(engine.device), "precision": str(engine.dtype)}


def memory(engine: Engine, payload: dict, destination) -> dict[str, Any]:
    import torch

    page, pages, free_pages = os.sysconf("SC_PAGE_SIZE"), os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_AVPHYS_PAGES")
    ram = {"free": free_pages * page, "used": (pages - free_pages) * page, "total": pages * page}
    if not torch.cuda.is_available():
        return {"ram": ram, "cuda": {"error": "no CUDA device"}}
    free, total = torch.cuda.mem_get_info()
    return {"ram": ram, "cuda": {"system": {"free": free, "used": total - free, "total": total},
                                 "active": {"current": torch.cuda.memory_allocated(),
                                            "peak": torch.cuda.max_memory_allocated()}}}
