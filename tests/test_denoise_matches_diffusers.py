"""The engine's sampling (conditioning, guidance, the denoising loop) gives the latents diffusers' own pipelines give
on the same weights, from the same starting noise: StableDiffusionXLPipeline for tiny-sdxl (both text encoders'
penultimate layers, OpenCLIP's zero padding, the pooled embedding, the size time ids, an empty negative prompt as
zeros) and StableDiffusionPipeline for tiny-sd15.

diffusers loads the checkpoint file itself (from_single_file with the shipped configs and the CLIP tokenizer;
the second, OpenCLIP tokenizer pads with "!", token 0, as SDXL's does).
"""

from __future__ import annotations

import diffusers
import pytest
import torch
from transformers import CLIPTokenizer

import engine.tasks.job
from conftest import SDXL_NAME, TINY_NAME
from engine.configs import CLIP_TOKENIZER_DIR, architecture_dir
from handler.router import route

STEPS, CFG, SEED = 3, 7.0, 17
# A1111's samplers as diffusers schedulers on the checkpoint's noise schedule
SAMPLERS = {
    "Euler": (diffusers.EulerDiscreteScheduler, {"timestep_spacing": "linspace"}),
    "DPM++ 2M": (diffusers.DPMSolverMultistepScheduler, {"timestep_spacing": "linspace", "use_karras_sigmas": True,
                                                         "algorithm_type": "dpmsolver++", "solver_order": 2}),
}
PIPELINES = {SDXL_NAME: diffusers.StableDiffusionXLPipeline, TINY_NAME: diffusers.StableDiffusionPipeline}


@pytest.fixture(scope="module")
def diffusers_pipe(sdxl_models_dir):
    """load(name): diffusers' pipeline for a tiny checkpoint of sdxl_models_dir, loaded by diffusers (cached)."""
    tokenizer = CLIPTokenizer.from_pretrained(CLIP_TOKENIZER_DIR)
    open_clip_tokenizer = CLIPTokenizer.from_pretrained(CLIP_TOKENIZER_DIR, pad_token="!")
    pipes = {}

    def load(name: str):
        if name not in pipes:
            tokenizers = {"tokenizer": tokenizer}
            if name == SDXL_NAME:
                tokenizers["tokenizer_2"] = open_clip_tokenizer
            else:
                tokenizers |= {"safety_checker": None, "requires_safety_checker": False}
            pipes[name] = PIPELINES[name].from_single_file(
                str(sdxl_models_dir / "Stable-diffusion" / f"{name}.safetensors"), config=str(architecture_dir(name)),
                local_files_only=True, torch_dtype=torch.float32, **tokenizers)
            pipes[name].set_progress_bar_config(disable=True)
        return pipes[name]

    return load


def engine_latents(sdxl_engine, monkeypatch, checkpoint: str, sampler: str, prompt: str,
                   negative_prompt: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(starting noise, final latents before the VAE) of a txt2img request on the engine."""
    captured = {}
    make_noise = engine.tasks.job.batch_noise

    def noise(*args, **kwargs):
        captured["noise"], generators = make_noise(*args, **kwargs)
        return captured["noise"].clone(), generators

    model = sdxl_engine.model_for(sdxl_engine.find_checkpoint(checkpoint, "sd_model_checkpoint"))
    decode = model.decode_latents
    monkeypatch.setattr(engine.tasks.job, "batch_noise", noise)
    monkeypatch.setattr(model, "decode_latents", lambda latents: captured.setdefault("latents", latents.clone())
                        is not None and decode(latents))
    route(sdxl_engine, "POST", "txt2img", {
        "prompt": prompt, "negative_prompt": negative_prompt, "steps": STEPS, "cfg_scale": CFG, "seed": SEED,
        "width": 64, "height": 64, "sampler_name": sampler, "override_settings": {"sd_model_checkpoint": checkpoint}})
    return captured["noise"], captured["latents"]


@pytest.mark.parametrize("checkpoint, sampler, negative_prompt", [
    (SDXL_NAME, "Euler", ""), (SDXL_NAME, "Euler", "ugly, blurry"), (SDXL_NAME, "DPM++ 2M", "ugly, blurry"),
    (TINY_NAME, "Euler", ""), (TINY_NAME, "DPM++ 2M", "ugly, blurry"),
])
def test_latents_match_diffusers_pipeline(sdxl_engine, diffusers_pipe, monkeypatch, checkpoint, sampler,
                                          negative_prompt):
    prompt = "a photo of a red fox in the snow"
    noise, ours = engine_latents(sdxl_engine, monkeypatch, checkpoint, sampler, prompt, negative_prompt)
    pipe = diffusers_pipe(checkpoint)
    scheduler_class, settings = SAMPLERS[sampler]
    pipe.scheduler = scheduler_class.from_config(pipe.scheduler.config, **settings)
    # A1111's SDXL conditioner zeros an empty negative prompt; diffusers' SDXL pipeline does for None (with
    # force_zeros_for_empty_prompt) and encodes "" as text; SD 1.x encodes the empty text in both
    negative = None if checkpoint == SDXL_NAME and not negative_prompt else negative_prompt
    theirs = pipe(prompt, negative_prompt=negative, num_inference_steps=STEPS, guidance_scale=CFG,
                  height=64, width=64, latents=noise, output_type="latent").images
    assert theirs.shape == ours.shape == (1, 4, 8, 8)
    assert not torch.equal(noise, ours)
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-4)
