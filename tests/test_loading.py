"""Checkpoint loading: the single-file path (with the shipped configs) gives exactly the weights
written, diffusers folders load, the shipped SD 1.5 configs have SD 1.5's sizes, foreign files are
refused, and the shipped tokenizer is CLIP's."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from engine.configs import CLIP_TOKENIZER_DIR, architecture_dir
from engine.families import UnsupportedCheckpoint
from engine.store.loading import detect_architecture, load_pipeline
from engine.store.models_dir import Checkpoint, list_checkpoints
from schemas import Txt2ImgRequest

# SD 1.5 (runwayml/stable-diffusion-v1-5) parameter counts
SD15_UNET_PARAMETERS = 859_520_964
SD15_VAE_PARAMETERS = 83_653_863
SD15_TEXT_ENCODER_PARAMETERS = 123_060_480


def _assert_same_weights(loaded: torch.nn.Module, expected: torch.nn.Module, what: str):
    got, want = loaded.state_dict(), expected.state_dict()
    assert set(got) == set(want), f"{what}: keys differ: {sorted(set(got) ^ set(want))[:5]}"
    for key, tensor in want.items():
        # the LDM VAE stores its attention projections as 1x1 convolutions: compare values, not layout
        value = got[key].reshape(tensor.shape) if got[key].numel() == tensor.numel() else got[key]
        assert value.shape == tensor.shape, f"{what}.{key}: {tuple(got[key].shape)} vs {tuple(tensor.shape)}"
        assert torch.equal(value.to(tensor.dtype), tensor), f"{what}.{key} differs"


def test_single_file_loads_exactly_the_tiny_weights(engine):
    from engine.tiny.sd import build_tiny_modules

    pipe = engine.model.pipe
    unet, vae, text_encoder = build_tiny_modules()
    _assert_same_weights(pipe.unet, unet, "unet")
    _assert_same_weights(pipe.vae, vae, "vae")
    _assert_same_weights(pipe.text_encoder, text_encoder, "text_encoder")
    assert pipe.unet.config.block_out_channels == unet.config.block_out_channels
    assert pipe.unet.config.cross_attention_dim == text_encoder.config.hidden_size


def test_load_pipeline_directly(models_dir):
    (checkpoint,) = list_checkpoints(models_dir)
    pipe = load_pipeline(checkpoint, torch.device("cpu"), torch.float32)
    assert pipe.unet.dtype == torch.float32 and pipe.unet.device.type == "cpu"
    assert type(pipe.scheduler).__name__ == "PNDMScheduler"  # the shipped config's, not a download
    assert pipe.tokenizer("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]


def test_detect_architecture_of_the_tiny_checkpoints(engine_models_dir):
    found = {c.model_name: detect_architecture(c) for c in list_checkpoints(engine_models_dir)}
    assert {name: a.config_dir.name for name, a in found.items()} == {
        "tiny-sd15": "tiny-sd15", "tiny-sd15-inpainting": "tiny-sd15-inpainting"}
    assert {a.family.name for a in found.values()} == {"SD 1.x"}


def test_diffusers_folder_loads_and_generates_the_same_image(engine, diffusers_models_dir):
    from engine.runtime import Engine

    folder_engine = Engine.start(models_dir=diffusers_models_dir, device="cpu", dtype="float32")
    assert folder_engine.model.checkpoint.name == "tiny-diffusers"
    request = Txt2ImgRequest(prompt="a cat", seed=7, steps=3, width=64, height=64, sampler_name="DPM++ 2M")
    from_folder = folder_engine.txt2img(request)
    from_file = engine.txt2img(request)
    a = np.asarray(from_folder.images[0].image)
    b = np.asarray(from_file.images[0].image)
    assert a.shape == (64, 64, 3)
    assert a.std() > 0  # a picture, not a constant
    assert np.array_equal(a, b)  # same weights, same seed: same pixels
    assert "Model: tiny-diffusers" in from_folder.images[0].infotext


def test_shipped_sd15_configs_build_sd15_sized_models():
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    config = architecture_dir("sd15")
    with init_empty_weights():
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(config / "unet"))
        vae = AutoencoderKL.from_config(AutoencoderKL.load_config(config / "vae"))
        text_encoder = CLIPTextModel(CLIPTextConfig.from_pretrained(config / "text_encoder"))
    for module in (unet, vae, text_encoder):
        assert next(module.parameters()).device.type == "meta"
    assert sum(p.numel() for p in unet.parameters()) == SD15_UNET_PARAMETERS
    assert sum(p.numel() for p in vae.parameters()) == SD15_VAE_PARAMETERS
    assert sum(p.numel() for p in text_encoder.parameters()) == SD15_TEXT_ENCODER_PARAMETERS
    assert unet.config.in_channels == 4 and unet.config.cross_attention_dim == 768


def test_file_without_a_unet_is_refused(tmp_path):
    path = tmp_path / "Stable-diffusion" / "lora.safetensors"
    path.parent.mkdir(parents=True)
    save_file({"lora_unet_down_blocks_0.alpha": torch.ones(1), "some.weight": torch.zeros(4, 4)}, path)
    checkpoint = Checkpoint(path, "lora.safetensors")
    with pytest.raises(UnsupportedCheckpoint, match="lora.safetensors"):
        detect_architecture(checkpoint)
    with pytest.raises(UnsupportedCheckpoint):
        load_pipeline(checkpoint, torch.device("cpu"), torch.float32)


def test_engine_start_refuses_an_unsupported_checkpoint(tmp_path):
    from engine.runtime import Engine

    path = tmp_path / "Stable-diffusion" / "vae-only.safetensors"
    path.parent.mkdir(parents=True)
    save_file({"first_stage_model.encoder.conv_in.weight": torch.zeros(8, 3, 3, 3)}, path)
    with pytest.raises(UnsupportedCheckpoint, match="vae-only"):
        Engine.start(models_dir=tmp_path, device="cpu")


def test_shipped_clip_tokenizer():
    from transformers import CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(CLIP_TOKENIZER_DIR)
    assert tokenizer("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id) == (49406, 49407)
    assert tokenizer.model_max_length == 77
