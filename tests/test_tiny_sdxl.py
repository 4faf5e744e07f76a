"""`python -m engine.tiny --family sdxl|sdxl-refiner [--inpainting]`: tiny SDXL checkpoints in the single-file
layout of sd_xl_base_1.0 / sd_xl_refiner_1.0, which diffusers' single-file loader reads back tensor for tensor."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionXLImg2ImgPipeline, StableDiffusionXLInpaintPipeline, StableDiffusionXLPipeline
from safetensors import safe_open
from transformers import CLIPTokenizer

from engine.configs import CLIP_TOKENIZER_DIR, architecture_dir
from engine.tiny.sd import SDXL, SDXL_INPAINTING, SDXL_REFINER, build_tiny_sdxl_modules, main, write_tiny_checkpoint

REPO_ROOT = Path(__file__).resolve().parents[1]
UNET = "model.diffusion_model."
OPEN_CLIP_LAYER_0 = "model.transformer.resblocks.0."


@pytest.fixture(scope="module")
def sdxl_dir(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("tiny-sdxl")
    for architecture in (SDXL, SDXL_INPAINTING, SDXL_REFINER):
        write_tiny_checkpoint(directory, architecture=architecture)
    return directory


def checkpoint(directory: Path, architecture: str) -> Path:
    return directory / "Stable-diffusion" / f"{architecture}.safetensors"


def shapes(path: Path) -> dict[str, list[int]]:
    with safe_open(path, framework="pt") as weights:
        return {key: weights.get_slice(key).get_shape() for key in weights.keys()}


def test_cli_writes_each_family_the_same_as_in_process(tmp_path, worker_env, sdxl_dir):
    for options, architecture in ((["--family", "sdxl"], SDXL), (["--family", "sdxl", "--inpainting"], SDXL_INPAINTING),
                                  (["--family", "sdxl-refiner"], SDXL_REFINER)):
        done = subprocess.run([sys.executable, "-m", "engine.tiny", "--models-dir", str(tmp_path), *options],
                              cwd=REPO_ROOT, env=worker_env(), capture_output=True, text=True, timeout=300,
                              stdin=subprocess.DEVNULL)
        assert done.returncode == 0, done.stderr[-3000:]
        path = checkpoint(tmp_path, architecture)
        assert str(path) in done.stdout
        assert path.read_bytes() == checkpoint(sdxl_dir, architecture).read_bytes()  # fixed seed


def test_inpainting_is_refused_for_the_refiner(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--models-dir", str(tmp_path), "--family", "sdxl-refiner", "--inpainting"])
    assert exit_.value.code == 2
    assert "--inpainting" in capsys.readouterr().err
    assert not (tmp_path / "Stable-diffusion").exists()


def test_base_has_sd_xl_base_key_families(sdxl_dir):
    keys = shapes(checkpoint(sdxl_dir, SDXL))
    width = build_tiny_sdxl_modules(SDXL)["text_encoder_2"].config  # OpenCLIP's hidden and projection widths
    assert UNET + "label_emb.0.0.weight" in keys and UNET + "output_blocks.2.2.conv.weight" in keys
    assert any(k.startswith("first_stage_model.encoder.") for k in keys)
    assert "conditioner.embedders.0.transformer.text_model.embeddings.position_embedding.weight" in keys
    open_clip = "conditioner.embedders.1."
    assert keys[open_clip + OPEN_CLIP_LAYER_0 + "attn.in_proj_weight"] == [3 * width.hidden_size, width.hidden_size]
    assert keys[open_clip + "model.text_projection"] == [width.hidden_size, width.projection_dim]  # OpenCLIP's x @ P
    for name in ("attn.out_proj.weight", "ln_1.weight", "ln_2.weight", "mlp.c_fc.weight", "mlp.c_proj.weight"):
        assert open_clip + OPEN_CLIP_LAYER_0 + name in keys
    for name in ("token_embedding.weight", "positional_embedding", "ln_final.weight"):
        assert open_clip + "model." + name in keys
    assert not any(("q_proj" in k or "layer_norm1" in k) for k in keys if k.startswith(open_clip))  # not HF names
    assert not any(k.startswith(("cond_stage_model.", "unet.", "text_encoder")) for k in keys)


def test_inpainting_differs_from_the_base_in_the_unet_input_only(sdxl_dir):
    base, inpainting = shapes(checkpoint(sdxl_dir, SDXL)), shapes(checkpoint(sdxl_dir, SDXL_INPAINTING))
    conv_in = UNET + "input_blocks.0.0.weight"
    assert base[conv_in][1] == 4 and inpainting[conv_in] == [base[conv_in][0], 9, *base[conv_in][2:]]
    assert {k: v for k, v in inpainting.items() if k != conv_in} == {k: v for k, v in base.items() if k != conv_in}


def test_refiner_has_only_the_open_clip_embedder(sdxl_dir):
    keys = shapes(checkpoint(sdxl_dir, SDXL_REFINER))
    embedders = {".".join(k.split(".")[:4]) for k in keys if k.startswith("conditioner.")}
    assert embedders == {"conditioner.embedders.0.model"}
    assert "conditioner.embedders.0." + OPEN_CLIP_LAYER_0 + "attn.in_proj_bias" in keys
    modules = build_tiny_sdxl_modules(SDXL_REFINER)
    unet, projection = modules["unet"].config, modules["text_encoder_2"].config.projection_dim
    # the pooled text embedding and 5 time ids (size, crop, aesthetic score), not the base's 6
    assert keys[UNET + "label_emb.0.0.weight"][1] == projection + 5 * unet.addition_time_embed_dim


@pytest.mark.parametrize("architecture, pipeline_class", [(SDXL, StableDiffusionXLPipeline),
                                                          (SDXL_INPAINTING, StableDiffusionXLPipeline),
                                                          (SDXL_REFINER, StableDiffusionXLImg2ImgPipeline)])
def test_loads_back_through_diffusers_single_file_loader(sdxl_dir, architecture, pipeline_class):
    tokenizer = CLIPTokenizer.from_pretrained(CLIP_TOKENIZER_DIR)
    tokenizers = {"tokenizer_2": tokenizer} | ({} if architecture == SDXL_REFINER else {"tokenizer": tokenizer})
    pipe = pipeline_class.from_single_file(str(checkpoint(sdxl_dir, architecture)),
                                           config=str(architecture_dir(architecture)), local_files_only=True,
                                           **tokenizers)
    written = build_tiny_sdxl_modules(architecture)
    assert (pipe.text_encoder is None) == (architecture == SDXL_REFINER)
    for name, module in written.items():
        expected, loaded = module.state_dict(), getattr(pipe, name).state_dict()
        assert expected.keys() == loaded.keys(), name
        assert all(torch.equal(expected[k], loaded[k]) for k in expected), f"{name} differs after the round trip"

    call = {"prompt": "a cat", "num_inference_steps": 1, "height": 64, "width": 64, "output_type": "np",
            "generator": torch.Generator().manual_seed(0)}
    if architecture == SDXL_REFINER:  # the aesthetic-score time ids must fit the UNet, else the call raises
        call |= {"image": torch.rand(1, 3, 64, 64), "strength": 1.0}
    if architecture == SDXL_INPAINTING:  # latents, mask and masked-image latents: the 9 channels must fit
        assert pipe.unet.config.in_channels == 9
        pipe = StableDiffusionXLInpaintPipeline(**pipe.components)
        call |= {"image": torch.rand(1, 3, 64, 64), "mask_image": torch.ones(1, 1, 64, 64), "strength": 1.0}
    image = pipe(**call).images
    assert image.shape == (1, 64, 64, 3) and np.isfinite(image).all()
