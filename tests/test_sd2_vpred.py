"""SD 2.x checkpoints and v-prediction as a checkpoint's property (engine/families/sd2.py, prediction.py): tiny
SD 2.x files load and generate, A1111's UNet test tells 768-v from 512-base, SDXL files with the `v_pred` and
`ztsnr` markers load as v-prediction on A1111's zero-terminal-SNR schedule."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from accelerate import init_empty_weights
from diffusers import UNet2DConditionModel
from safetensors import safe_open
from transformers import CLIPTextConfig, CLIPTextModel

from conftest import decode_png_b64
from engine.configs import architecture_dir
from engine.families import UnsupportedCheckpoint, family_of_pipeline
from engine.families.prediction import (TERMINAL_ALPHA_BAR, Prediction, single_file_prediction,
                                        zero_terminal_snr_betas)
from engine.families.sd2 import OPEN_CLIP_H, OPEN_CLIP_PREFIX, uses_open_clip
from engine.families.sd2 import SD2 as SD2Family
from engine.prompts.conditioning import ConditioningParams
from engine.runtime import Engine
from engine.sampling.samplers import make_scheduler
from engine.store import loading
from engine.store.converted import write_conversion
from engine.store.models_dir import list_checkpoints
from engine.tiny.sd import SD2, SD2_V, SDXL, SDXL_V_PRED_NAME, build_tiny_sd2_modules, main, write_tiny_checkpoint
from handler.router import route
from schemas.samplers import resolve

SMALL = {"prompt": "a lighthouse", "seed": 7, "width": 64, "height": 64, "steps": 2, "sampler_name": "Euler a"}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    directory = tmp_path_factory.mktemp("sd2-vpred")
    for architecture in (SD2, SD2_V, SDXL):
        write_tiny_checkpoint(directory, architecture=architecture)
    write_tiny_checkpoint(directory, SDXL_V_PRED_NAME, SDXL, v_pred_markers=True)
    return directory


@pytest.fixture(scope="module")
def engine(models):
    return Engine.start(models_dir=models, sd_model=SD2, device="cpu", dtype="float32")


def checkpoint(models, name):
    return next(c for c in list_checkpoints(models) if c.name == f"{name}.safetensors")


def txt2img(engine, model: str, **payload) -> np.ndarray:
    response = route(engine, "POST", "/sdapi/v1/txt2img",
                     {**SMALL, **payload, "override_settings": {"sd_model_checkpoint": model}})
    return np.asarray(decode_png_b64(response["images"][0]).convert("RGB"), dtype=np.int16)


# ---------------------------------------------------------------- SD 2.x

def test_sd2_single_file_is_sd2_512_base_with_the_open_clip_encoder(engine, models):
    model = engine.model_for(checkpoint(models, SD2))
    assert model.family.key == "sd2" and model.config_dir.name == SD2
    assert model.scheduler_config["prediction_type"] == "epsilon"
    assert model.architecture.prediction == Prediction()
    assert [spec for spec, _ in model.encoder.encoders] == [OPEN_CLIP_H]
    assert OPEN_CLIP_H.pad_with_zero and OPEN_CLIP_H.clip_skip_option is None
    text_encoder = model.pipe.text_encoder  # diffusers' loader dropped the tower's last layer
    assert text_encoder.config.num_hidden_layers == 23 and text_encoder.config.hidden_act == "gelu"


def test_the_context_is_the_penultimate_layer_through_the_final_norm_padded_with_zeros(engine, models):
    """As A1111's OpenCLIP embedder computes it from the file's whole tower: tokens, end token, then 0s; all but the
    last layer, then the final norm. CLIP skip changes nothing."""
    model = engine.model_for(checkpoint(models, SD2))
    _, _, tower = build_tiny_sd2_modules(SD2)
    tokenizer = model.encoder.tokenizer
    ids = [tokenizer.bos_token_id, *tokenizer("a lighthouse", add_special_tokens=False).input_ids,
           tokenizer.eos_token_id]
    ids += [0] * (77 - len(ids))
    with torch.no_grad():
        hidden = tower(torch.tensor([ids]), output_hidden_states=True).hidden_states[-2]
        expected = tower.text_model.final_layer_norm(hidden)
    for clip_skip in (1, 2):
        context = model.encoder.encode("a lighthouse", ConditioningParams(64, 64, clip_skip=clip_skip))
        torch.testing.assert_close(context, expected, rtol=1e-4, atol=1e-5)


def test_sd2_txt2img_generates(engine):
    image = txt2img(engine, SD2)
    assert image.shape == (64, 64, 3) and image.std() > 0


def test_a1111s_unet_test_finds_the_768_v_checkpoint(engine, models):
    model = engine.model_for(checkpoint(models, SD2_V))
    assert model.family.key == "sd2" and model.config_dir.name == SD2_V
    assert model.scheduler_config["prediction_type"] == "v_prediction"
    assert model.architecture.prediction == Prediction(v_prediction=True)
    assert txt2img(engine, SD2_V).shape == (64, 64, 3)


def test_a_conversion_answers_the_unet_test(models, monkeypatch):
    """Baked checkpoints don't run the test at start-up: their conversion's scheduler config records it."""
    v_checkpoint = checkpoint(models, SD2_V)
    architecture = loading.detect_architecture(v_checkpoint)
    write_conversion(v_checkpoint, loading.load_single_file(v_checkpoint, architecture, torch.device("cpu"),
                                                            torch.float32))

    def no_test(*_):
        raise AssertionError("the UNet test ran")

    monkeypatch.setattr(loading, "file_v_parameterized", no_test)
    assert loading.detect_architecture(v_checkpoint) == architecture
    with pytest.raises(AssertionError, match="the UNet test ran"):  # the base has no conversion
        loading.detect_architecture(checkpoint(models, SD2))


def test_sd2_variants_by_shapes_as_a1111_tells_them():
    sd2, conv_in = SD2Family(), "model.diffusion_model.input_blocks.0.0.weight"
    in_proj = OPEN_CLIP_PREFIX + "transformer.resblocks.0.attn.in_proj_weight"
    assert sd2.architecture({conv_in: [320, 4, 3, 3], in_proj: [3072, 1024]}, "x") == "sd2"
    assert sd2.architecture({conv_in: [320, 9, 3, 3], in_proj: [3072, 1024]}, "x") == "sd2-inpainting"
    with pytest.raises(UnsupportedCheckpoint, match="unknown SD 2.x variant"):
        sd2.architecture({conv_in: [320, 4, 3, 3], in_proj: [2304, 768]}, "x")


def test_sd2_configs_differ_where_the_variants_do():
    def configs(architecture):
        return {p.parent.name: json.loads(p.read_text()) for p in architecture_dir(architecture).glob("*/*.json")}

    for prefix in ("", "tiny-"):
        base, v, inpainting = (configs(prefix + a) for a in ("sd2", "sd2-768", "sd2-inpainting"))
        assert inpainting == {**base, "unet": {**base["unet"], "in_channels": 9}}
        assert v["scheduler"]["prediction_type"] == "v_prediction"
        assert v["unet"] == {**base["unet"], "sample_size": 96, "upcast_attention": True}  # as SD 2.1-768's
        assert v["text_encoder"] == base["text_encoder"]


def test_sd2_diffusers_folders_are_told_from_sd1_by_their_text_encoder():
    assert uses_open_clip(architecture_dir("sd2")) and not uses_open_clip(architecture_dir("sd15"))
    for folder, key in (("sd2", "sd2"), ("tiny-sd2", "sd2"), ("sd15", "sd1")):
        assert family_of_pipeline("StableDiffusionPipeline", folder, architecture_dir(folder)).key == key
    assert family_of_pipeline("StableDiffusionInpaintPipeline", "x", architecture_dir("sd2-inpainting")).key == "sd2"


def test_the_real_sd2_configs_build_the_published_models():
    with init_empty_weights():
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(architecture_dir("sd2") / "unet"))
        text = CLIPTextModel(CLIPTextConfig.from_pretrained(architecture_dir("sd2") / "text_encoder"))
    assert sum(p.numel() for p in unet.parameters()) == 865_910_724
    assert sum(p.numel() for p in text.parameters()) == 340_387_840  # OpenCLIP ViT-H/14's text tower less a layer
    base, v = (json.loads((architecture_dir(a) / "scheduler" / "scheduler_config.json").read_text())
               for a in ("sd2", "sd2-768"))
    assert (base["prediction_type"], v["prediction_type"]) == ("epsilon", "v_prediction")


def test_the_tiny_writer_keeps_openclip_layout_and_its_last_layer(models):
    with safe_open(checkpoint(models, SD2).path, framework="pt") as weights:
        keys = set(weights.keys())
    assert OPEN_CLIP_PREFIX + "transformer.resblocks.23.attn.in_proj_weight" in keys  # 24 layers, as OpenCLIP-H
    assert {OPEN_CLIP_PREFIX + k for k in ("text_projection", "logit_scale", "ln_final.weight")} <= keys
    assert not any(k.startswith("cond_stage_model.transformer.") for k in keys)


# ---------------------------------------------------------------- SDXL v_pred / ztsnr markers

def test_sdxl_markers_make_v_prediction_on_the_zero_terminal_snr_schedule(engine, models):
    model = engine.model_for(checkpoint(models, SDXL_V_PRED_NAME))
    assert model.family.key == "sdxl" and model.config_dir.name == SDXL
    assert model.architecture.prediction == Prediction(v_prediction=True, zero_terminal_snr=True)
    assert model.scheduler_config["prediction_type"] == "v_prediction"
    assert model.scheduler_config["trained_betas"] == zero_terminal_snr_betas(model.scheduler_config)
    plain = engine.model_for(checkpoint(models, SDXL)).scheduler_config
    assert plain["prediction_type"] == "epsilon" and plain["trained_betas"] is None


@pytest.mark.parametrize("sampler, schedule", [("Euler a", "automatic"), ("DPM++ 2M", "karras"), ("DDIM", "automatic")])
def test_samplers_start_from_a1111s_largest_sigma(engine, models, sampler, schedule):
    config = engine.model_for(checkpoint(models, SDXL_V_PRED_NAME)).scheduler_config
    scheduler = make_scheduler(config, *resolve(sampler, schedule), [0])
    assert scheduler.config.prediction_type == "v_prediction"
    assert scheduler.alphas_cumprod[-1].item() == pytest.approx(TERMINAL_ALPHA_BAR, rel=1e-4)
    scheduler.set_timesteps(4)
    if hasattr(scheduler, "sigmas"):
        assert torch.isfinite(scheduler.sigmas).all()
        assert scheduler.sigmas.max().item() == pytest.approx(((1 - TERMINAL_ALPHA_BAR) / TERMINAL_ALPHA_BAR) ** 0.5,
                                                               rel=1e-3)


def test_the_markers_change_the_image_of_the_same_weights(engine):
    marked = txt2img(engine, SDXL_V_PRED_NAME)
    assert np.abs(marked - txt2img(engine, SDXL)).mean() > 1


# ---------------------------------------------------------------- A1111's rules

def test_markers_apply_where_a1111_reads_them():
    never = pytest.fail
    assert single_file_prediction("sdxl", {"v_pred"}, never) == ("sdxl", Prediction(v_prediction=True))
    assert single_file_prediction("sdxl-inpainting", {"v_pred"}, never) == ("sdxl-inpainting", Prediction())
    assert single_file_prediction("sdxl-refiner", {"v_pred"}, never) == ("sdxl-refiner", Prediction())
    assert single_file_prediction("sd15", {"v_pred", "ztsnr"}, never) == ("sd15", Prediction(zero_terminal_snr=True))
    assert single_file_prediction("sd2-inpainting", set(), never) == ("sd2-inpainting", Prediction())
    assert single_file_prediction("sd2", set(), lambda base: base == "sd2") == ("sd2-768", Prediction(True))
    assert single_file_prediction("sd2", set(), lambda base: False) == ("sd2", Prediction())


def test_zero_terminal_snr_rescale_is_a1111s():
    config = json.loads((architecture_dir("sdxl") / "scheduler" / "scheduler_config.json").read_text())
    original = torch.cumprod(1 - torch.linspace(config["beta_start"] ** 0.5, config["beta_end"] ** 0.5, 1000,
                                                dtype=torch.float64) ** 2, dim=0)
    rescaled = torch.cumprod(1 - torch.tensor(zero_terminal_snr_betas(config), dtype=torch.float64), dim=0)
    assert rescaled[0].item() == pytest.approx(original[0].item())
    assert rescaled[-1].item() == pytest.approx(TERMINAL_ALPHA_BAR)
    # sqrt(alpha bar) is shifted and scaled: an affine function of the original's, 0 at the last step
    slope = (rescaled[0].sqrt() / (original[0].sqrt() - original[-1].sqrt())).item()
    torch.testing.assert_close(rescaled[:-1].sqrt(), slope * (original[:-1].sqrt() - original[-1].sqrt()))
    twice = Prediction(zero_terminal_snr=True).scheduler_config(Prediction(zero_terminal_snr=True)
                                                                .scheduler_config(config))
    assert twice["trained_betas"] == zero_terminal_snr_betas(config)


def test_cli_offers_v_pred_for_sd2_and_sdxl(tmp_path, capsys):
    main(["--models-dir", str(tmp_path), "--family", "sdxl", "--v-pred"])
    with safe_open(tmp_path / "Stable-diffusion" / f"{SDXL_V_PRED_NAME}.safetensors", framework="pt") as weights:
        assert {"v_pred", "ztsnr"} <= set(weights.keys()) and weights.get_tensor("v_pred").numel() == 0
    main(["--models-dir", str(tmp_path), "--family", "sd2", "--v-pred"])
    assert (tmp_path / "Stable-diffusion" / f"{SD2_V}.safetensors").is_file()
    with pytest.raises(SystemExit):
        main(["--models-dir", str(tmp_path), "--family", "sd15", "--v-pred"])
    assert "--v-pred" in capsys.readouterr().err
