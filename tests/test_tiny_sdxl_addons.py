"""Tiny SDXL LoRAs (engine/tiny/lora.py) and SDXL embeddings (engine/tiny/addons.py), in the layouts real
ones ship in: a kohya SDXL LoRA (SGM UNet names, lora_te1_ / lora_te2_) loads through diffusers onto the
tiny SDXL checkpoint, every update on the module it was made for."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from diffusers import StableDiffusionXLPipeline
from peft.tuners.tuners_utils import BaseTunerLayer
from safetensors import safe_open
from safetensors.torch import load_file
from transformers import CLIPTokenizer

from engine.configs import CLIP_TOKENIZER_DIR, architecture_dir
from engine.tiny.addons import write_tiny_sdxl_embedding
from engine.tiny.lora import SDXL_COMPONENTS, main, tiny_lora_updates, write_tiny_sdxl_lora
from engine.tiny.sd import SDXL, build_tiny_sdxl_modules, write_tiny_checkpoint

ADAPTER = "x"
TEXT_MODEL = "text_model."  # where CLIPTextModel keeps its layers depends on the transformers version


@pytest.fixture(scope="module")
def sdxl_pipe(tmp_path_factory) -> StableDiffusionXLPipeline:
    path = write_tiny_checkpoint(tmp_path_factory.mktemp("tiny-sdxl"), architecture=SDXL)
    tokenizer = CLIPTokenizer.from_pretrained(CLIP_TOKENIZER_DIR)
    return StableDiffusionXLPipeline.from_single_file(str(path), config=str(architecture_dir(SDXL)),
                                                      tokenizer=tokenizer, tokenizer_2=tokenizer,
                                                      local_files_only=True)


def component_outputs(pipe: StableDiffusionXLPipeline) -> dict[str, torch.Tensor]:
    """What each component a LoRA changes computes, on fixed inputs of its own (the UNet's do not come from
    the text encoders, so that each output shows only its own component's adapter)."""
    ids = pipe.tokenizer("a cat", padding="max_length", max_length=77, return_tensors="pt").input_ids
    generator = torch.Generator().manual_seed(0)
    unet = pipe.unet.config
    conditioning = {"text_embeds": torch.randn(1, pipe.text_encoder_2.config.projection_dim, generator=generator),
                    "time_ids": torch.tensor([[64.0, 64.0, 0.0, 0.0, 64.0, 64.0]])}
    with torch.no_grad():
        open_clip = pipe.text_encoder_2(ids, output_hidden_states=True)
        sample = pipe.unet(torch.randn(1, unet.in_channels, 8, 8, generator=generator), 500,
                           torch.randn(1, 77, unet.cross_attention_dim, generator=generator),
                           added_cond_kwargs=conditioning).sample
        return {"unet": sample, "text_encoder": pipe.text_encoder(ids, output_hidden_states=True).hidden_states[-2],
                "text_encoder_2": torch.cat([open_clip.hidden_states[-2].flatten(), open_clip.text_embeds.flatten()])}


def module_names(path: Path) -> set[str]:
    with safe_open(path, framework="pt") as weights:
        return {re.sub(r"\.(lora_down\.weight|lora_up\.weight|alpha)$", "", key) for key in weights.keys()}


def test_kohya_file_has_kohya_sdxl_names_and_metadata(tmp_path):
    path = write_tiny_sdxl_lora(tmp_path, "styles/tiny-xl", seed=1)
    assert path == tmp_path / "Lora" / "styles" / "tiny-xl.safetensors"
    with safe_open(path, framework="pt") as weights:
        assert weights.metadata() == {"ss_base_model_version": "sdxl_base_v1-0", "ss_network_module": "networks.lora",
                                      "ss_output_name": "tiny-xl"}
        keys = set(weights.keys())
    names = module_names(path)
    assert keys == {f"{name}.{part}" for name in names for part in ("lora_down.weight", "lora_up.weight", "alpha")}
    assert {name.split("_")[1] for name in names} == {"unet", "te1", "te2"}
    assert "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q" in names  # the SGM layout, as kohya's
    assert "lora_unet_middle_block_1_transformer_blocks_1_attn2_to_out_0" in names
    assert "lora_unet_output_blocks_2_1_transformer_blocks_1_attn2_to_v" in names
    assert not any("down_blocks" in name or "up_blocks" in name or "mid_block_" in name for name in names)
    for te in ("te1", "te2"):
        assert f"lora_{te}_text_model_encoder_layers_1_self_attn_out_proj" in names


def test_cli_family_sdxl_writes_the_default_sdxl_lora(tmp_path, capsys):
    main(["--models-dir", str(tmp_path / "cli"), "--family", "sdxl"])
    written = Path(capsys.readouterr().out.strip())
    assert written == tmp_path / "cli" / "Lora" / "tiny-sdxl-lora.safetensors"
    expected = write_tiny_sdxl_lora(tmp_path / "api")
    assert load_file(written).keys() == load_file(expected).keys()
    assert all(torch.equal(t, load_file(expected)[k]) for k, t in load_file(written).items())
    with safe_open(written, framework="pt") as cli, safe_open(expected, framework="pt") as api:
        assert cli.metadata() == api.metadata()  # (their order in the header is not fixed)


@pytest.mark.parametrize("fmt, components", [("kohya", SDXL_COMPONENTS), ("diffusers", SDXL_COMPONENTS),
                                             ("kohya", ("text_encoder_2",))])
def test_lora_loads_onto_each_component_and_disables_bit_for_bit(sdxl_pipe, tmp_path, fmt, components):
    pipe = sdxl_pipe
    path = write_tiny_sdxl_lora(tmp_path, f"tiny-{fmt}", fmt, seed=3, components=components)
    base = component_outputs(pipe)
    pipe.load_lora_weights(str(path.parent), weight_name=path.name, adapter_name=ADAPTER)
    try:
        assert pipe.get_list_adapters() == {component: [ADAPTER] for component in components}
        # every update sits on the module it was made for, at the scale it was written with (alpha / rank)
        updates = tiny_lora_updates(3, components=components, architecture=SDXL)
        adapted = {(component, name.removeprefix(TEXT_MODEL)): module for component in SDXL_COMPONENTS
                   for name, module in getattr(pipe, component).named_modules()
                   if isinstance(module, BaseTunerLayer) and ADAPTER in module.lora_A}
        assert adapted.keys() == {(component, path.removeprefix(TEXT_MODEL)) for component, path in updates}
        for (component, path), (down, up) in updates.items():
            delta = adapted[component, path.removeprefix(TEXT_MODEL)].get_delta_weight(ADAPTER)
            torch.testing.assert_close(delta, up @ down)

        adapted_outputs = component_outputs(pipe)
        for component, output in base.items():
            changed = (output - adapted_outputs[component]).abs().max().item()
            assert (changed > 1e-3) == (component in components), (component, changed)
        pipe.disable_lora()
        assert all(torch.equal(output, base[component]) for component, output in component_outputs(pipe).items())
    finally:  # the shared pipeline as it was: a LoRA layer left disabled would stay so for the next adapter
        pipe.enable_lora()
        pipe.delete_adapters(ADAPTER)


def test_sdxl_embedding_holds_one_row_set_per_text_encoder(tmp_path):
    path = write_tiny_sdxl_embedding(tmp_path, "tinyXL", vectors=3, seed=5)
    assert path == tmp_path / "embeddings" / "tinyXL.safetensors"
    tensors = load_file(path)
    modules = build_tiny_sdxl_modules(SDXL)
    widths = {"clip_l": modules["text_encoder"], "clip_g": modules["text_encoder_2"]}
    assert {key: tuple(t.shape) for key, t in tensors.items()} == \
        {key: (3, module.get_input_embeddings().weight.shape[1]) for key, module in widths.items()}
    assert tensors["clip_l"].shape[1] != tensors["clip_g"].shape[1]  # the tiny widths tell the encoders apart
    assert all(t.dtype == torch.float32 and t.std() > 0.5 for t in tensors.values())  # big enough to matter
    again = load_file(write_tiny_sdxl_embedding(tmp_path / "again", "tinyXL", vectors=3, seed=5))
    assert all(torch.equal(again[key], tensors[key]) for key in tensors)
