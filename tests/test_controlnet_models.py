"""ControlNet model files (engine/controlnet/models.py): found, titled and matched as sd-webui-controlnet does,
loaded in the original and diffusers layouts into ControlNets whose residuals fit the tiny UNets, refused with
a request error when of the other family or not loadable; the tiny writers, the shipped configs and baking."""

from __future__ import annotations

import hashlib
import shutil

import pytest
import torch
from accelerate import init_empty_weights
from diffusers import ControlNetModel, UNet2DConditionModel
from diffusers.loaders.single_file_utils import convert_controlnet_checkpoint
from safetensors.torch import load_file, save_file

from engine.configs import architecture_dir
from engine.controlnet.models import (ControlNetFile, ControlNets, _check_weights, _plan, family_key, list_controlnets,
                                      model_hash, to_original_layout)
from engine.families import FAMILIES
from engine.store.bake import BakeError, bake, read_manifest
from engine.tiny.controlnet import build_tiny_controlnet, write_tiny_controlnet
from engine.tiny.sd import main as tiny_main
from schemas import RequestError

SD1, SDXL = (next(f for f in FAMILIES if f.key == key) for key in ("sd1", "sdxl"))
FIELD = "alwayson_scripts.controlnet.args.0.model"
CPU = torch.device("cpu")


def a1111_hash(path) -> str:
    """A1111's old model hash, computed independently: the 64 KiB at 1 MiB."""
    return hashlib.sha256(path.read_bytes()[0x100000:0x110000]).hexdigest()[:8]


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory):
    """Both tiny ControlNets, the SD 1.5 one also as a pickle (under "state_dict", in a subfolder) and in diffusers'
    layout, and files that are no ControlNet."""
    directory = tmp_path_factory.mktemp("controlnet-models")
    sd15 = write_tiny_controlnet(directory)
    write_tiny_controlnet(directory, "sdxl")
    folder = sd15.parent
    (folder / "sub").mkdir()
    torch.save({"state_dict": load_file(sd15), "epoch": 3}, folder / "sub" / "pickled.pth")
    save_file(build_tiny_controlnet().state_dict(), folder / "diffusers-layout.safetensors")
    shutil.copyfile(sd15, folder / "None.safetensors")  # would read as no model: never listed
    (folder / "notes.txt").write_text("not a model")
    return directory


@pytest.fixture
def store(models_dir):
    return ControlNets(models_dir, CPU, torch.float32)


def title(models_dir, relative: str) -> str:
    path = models_dir / "ControlNet" / relative
    return f"{path.stem} [{a1111_hash(path)}]"


def test_files_are_listed_by_name_with_a1111s_old_hash(store, models_dir):
    assert store.listing() == [title(models_dir, name) for name in (
        "diffusers-layout.safetensors", "sub/pickled.pth", "tiny-controlnet-sd15.safetensors",
        "tiny-controlnet-sdxl.safetensors")]
    assert len({name.split(" [")[1] for name in store.listing()}) == 4  # the tiny files pass 1 MiB: hashes differ
    small = models_dir / "small.pth"
    small.write_bytes(b"x" * 1000)
    assert model_hash(small) == hashlib.sha256(b"").hexdigest()[:8] == "e3b0c442"  # nothing at 1 MiB


def test_a_model_is_found_by_title_by_stem_in_any_case_or_by_part_of_a_stem(store, models_dir):
    sd15 = models_dir / "ControlNet" / "tiny-controlnet-sd15.safetensors"
    for option in (title(models_dir, sd15.name), "Tiny-ControlNet-SD15", "controlnet-sd15"):
        assert store.resolve(option, FIELD).path == sd15
    assert store.resolve("layout", FIELD).path.name == "diffusers-layout.safetensors"
    assert store.resolve("sd", FIELD).path == min(  # the shortest stem holding it
        (file.path for file in list_controlnets(models_dir).values() if "sd" in file.stem), key=lambda p: len(p.stem))
    assert store.resolve("None", FIELD) is None and store.resolve("", FIELD) is None


def test_an_unknown_name_is_an_error_naming_the_field_and_the_models(store, models_dir):
    for option in ("canny", "tiny-controlnet-sd15 [00000000]"):
        with pytest.raises(RequestError, match="unknown ControlNet model") as raised:
            store.resolve(option, FIELD)
        assert raised.value.field == FIELD
        assert str(raised.value).endswith("available: None, " + ", ".join(store.listing()))


def test_a_file_added_later_is_found(store, models_dir):
    added = models_dir / "ControlNet" / "added-later.safetensors"
    shutil.copyfile(models_dir / "ControlNet" / "tiny-controlnet-sd15.safetensors", added)
    try:
        assert store.resolve("added-later", FIELD).path == added
    finally:
        added.unlink()


@pytest.mark.parametrize("family, name", [(SD1, "tiny-controlnet-sd15"), (SDXL, "tiny-controlnet-sdxl")])
def test_the_tiny_files_load_through_the_single_file_path_as_written(store, models_dir, family, name):
    """The original layout written by to_original_layout reads back through diffusers' conversion unchanged."""
    keys = set(load_file(models_dir / "ControlNet" / f"{name}.safetensors"))
    assert all(key.startswith("control_model.") for key in keys)
    assert {"control_model.input_hint_block.14.weight", "control_model.zero_convs.0.0.weight",
            "control_model.middle_block_out.0.weight", "control_model.input_blocks.1.0.in_layers.0.weight"} <= keys
    file, model = store.find(name, family, FIELD)
    assert file.stem == name and family_key(model) == family.key
    written = build_tiny_controlnet("sd15" if family is SD1 else "sdxl").state_dict()
    loaded = model.state_dict()
    assert loaded.keys() == written.keys()
    assert all(torch.equal(loaded[key], written[key]) for key in written)
    assert model.controlnet_mid_block.weight.abs().min() > 0  # not zero convolutions: the control shows


def test_the_pickle_and_diffusers_layouts_load_the_same_weights(store):
    _, tiny = store.find("tiny-controlnet-sd15", SD1, FIELD)
    for name in ("pickled", "diffusers-layout"):
        _, model = store.find(name, SD1, FIELD)
        assert all(torch.equal(value, tiny.state_dict()[key]) for key, value in model.state_dict().items())


def test_a_controlnet_of_the_other_family_is_refused_naming_the_field(store):
    with pytest.raises(RequestError, match="is an SDXL ControlNet; the checkpoint is SD 1.x") as raised:
        store.find("tiny-controlnet-sdxl", SD1, FIELD)
    assert raised.value.field == FIELD
    store.find("tiny-controlnet-sd15", SD1, FIELD)  # loaded now: refused from the cache too
    with pytest.raises(RequestError, match="is an SD 1.x ControlNet; the checkpoint is SDXL"):
        store.find("tiny-controlnet-sd15", SDXL, FIELD)


def test_loaded_models_are_kept_up_to_the_capacity(models_dir):
    store = ControlNets(models_dir, CPU, torch.float32, capacity=1)
    _, first = store.find("tiny-controlnet-sd15", SD1, FIELD)
    assert store.find("tiny-controlnet-sd15", SD1, FIELD)[1] is first
    store.find("pickled", SD1, FIELD)  # evicts the first
    assert store.find("tiny-controlnet-sd15", SD1, FIELD)[1] is not first
    two = ControlNets(models_dir, CPU, torch.float16, capacity=2)
    _, a = two.find("tiny-controlnet-sd15", SD1, FIELD)
    two.find("pickled", SD1, FIELD)
    assert two.find("tiny-controlnet-sd15", SD1, FIELD)[1] is a and a.dtype == torch.float16


@pytest.mark.parametrize("family, architecture", [("sd15", "tiny-sd15"), ("sdxl", "tiny-sdxl")])
def test_residuals_fit_the_tiny_unet_and_follow_the_control_image(store, family, architecture):
    torch.manual_seed(0)
    unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(architecture_dir(architecture) / "unet"))
    _, controlnet = store.find(f"tiny-controlnet-{family}", SD1 if family == "sd15" else SDXL, FIELD)
    config = unet.config
    inputs = {"sample": torch.randn(1, 4, 8, 8), "timestep": torch.tensor(500),  # a 64x64 image's latents
              "encoder_hidden_states": torch.randn(1, 77, config.cross_attention_dim)}
    if config.addition_embed_type == "text_time":  # SDXL: pooled text embedding and six time ids
        pooled = config.projection_class_embeddings_input_dim - 6 * config.addition_time_embed_dim
        inputs["added_cond_kwargs"] = {"text_embeds": torch.randn(1, pooled),
                                       "time_ids": torch.tensor([[64.0, 64, 0, 0, 64, 64]])}
    hint = torch.rand(2, 1, 3, 64, 64)
    with torch.no_grad():
        down, mid = controlnet(**inputs, controlnet_cond=hint[0], return_dict=False)
        other_down, _ = controlnet(**inputs, controlnet_cond=hint[1], return_dict=False)
        plain = unet(**inputs).sample
        controlled = unet(**inputs, down_block_additional_residuals=down, mid_block_additional_residual=mid).sample
    assert len(down) == len(controlnet.controlnet_down_blocks)
    assert down[0].shape == (1, config.block_out_channels[0], 8, 8)
    assert mid.shape[1] == config.block_out_channels[-1]
    assert controlled.shape == plain.shape and not torch.allclose(controlled, plain)
    assert not torch.allclose(down[0], other_down[0])  # the control image matters


def write_variant(models_dir, name: str, change) -> None:
    state = load_file(models_dir / "ControlNet" / "tiny-controlnet-sd15.safetensors")
    change(state)
    save_file(state, models_dir / "ControlNet" / name)


@pytest.mark.parametrize("name, change, message", [
    ("lacks-a-weight.safetensors", lambda s: s.pop("control_model.zero_convs.7.0.weight"),
     "lacks 1 of its config's weights, e.g. zero_convs.7.0.weight"),
    ("misshapen.safetensors", lambda s: s.update({"control_model.middle_block_out.0.weight": torch.zeros(8, 64, 1, 1)}),
     r"its middle_block_out.0.weight has the shape \[8, 64, 1, 1\], where its config has \[64, 64, 1, 1\]"),
    ("control-lora.safetensors", lambda s: s.update({"lora_controlnet": torch.zeros(1)}), "is a Control-LoRA"),
    ("union.safetensors", lambda s: s.update({"control_model.control_add_embedding.linear_1.bias": torch.zeros(1)}),
     "is a ControlNet Union model"),
    ("no-hint.safetensors", lambda s: s.pop("control_model.input_hint_block.0.weight"), "is not a ControlNet model"),
    ("sd2.safetensors", lambda s: s.update({k: torch.zeros(v.shape[0], 1024) for k, v in s.items()
                                            if k.endswith("attn2.to_k.weight")}),
     "has a cross-attention width of 1024: it is of no family this worker runs"),
])
def test_a_file_that_is_no_loadable_controlnet_is_a_request_error(tmp_path, models_dir, name, change, message):
    shutil.copytree(models_dir, tmp_path / "models")
    write_variant(tmp_path / "models", name, change)
    store = ControlNets(tmp_path / "models", CPU, torch.float32)
    with pytest.raises(RequestError, match=message) as raised:
        store.find(name.removesuffix(".safetensors"), SD1, FIELD)
    assert raised.value.field == FIELD


class Planted:
    """A pickle that would write a file when unpickled without weights_only."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (str(self.path), "w"))


def test_unreadable_files_and_unsafe_pickles_are_request_errors(tmp_path):
    folder = tmp_path / "ControlNet"
    folder.mkdir()
    (folder / "garbage.safetensors").write_bytes(b"\x00" * 64)
    torch.save({"weights": Planted(tmp_path / "planted")}, folder / "unsafe.pth")
    store = ControlNets(tmp_path, CPU, torch.float32)
    for name in ("garbage", "unsafe"):
        with pytest.raises(RequestError, match=f"ControlNet model '{name} \\[[0-9a-f]{{8}}\\]' can't be read"):
            store.find(name, SD1, FIELD)
    assert not (tmp_path / "planted").exists()


def test_a_shuffle_controlnet_pools_its_conditions_as_the_extension_decides(tmp_path, models_dir):
    (tmp_path / "ControlNet").mkdir()
    for name in ("control_tiny_shuffle", "control_tiny_canny"):
        shutil.copyfile(models_dir / "ControlNet" / "tiny-controlnet-sd15.safetensors",
                        tmp_path / "ControlNet" / f"{name}.safetensors")
    store = ControlNets(tmp_path, CPU, torch.float32)
    assert store.find("shuffle", SD1, FIELD)[1].config.global_pool_conditions is True
    assert store.find("canny", SD1, FIELD)[1].config.global_pool_conditions is False


@pytest.mark.parametrize("unet, controlnet, hint", [("sd15", "controlnet-sd15", [16, 32, 96, 256]),
                                                     ("sdxl", "controlnet-sdxl", [16, 32, 96, 256]),
                                                     ("tiny-sd15", "tiny-controlnet-sd15", [8, 8, 16, 16]),
                                                     ("tiny-sdxl", "tiny-controlnet-sdxl", [8, 8, 16, 16])])
def test_each_shipped_config_is_its_unets_controlnet(unet, controlnet, hint):
    with init_empty_weights():
        model = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(architecture_dir(unet) / "unet"))
        derived = ControlNetModel.from_unet(model, conditioning_embedding_out_channels=hint,
                                            load_weights_from_unet=False)
    shipped = ControlNetModel.load_config(architecture_dir(controlnet))
    assert {k: v for k, v in shipped.items() if not k.startswith("_")} == {
        k: list(v) if isinstance(v, tuple) else v for k, v in derived.config.items() if not k.startswith("_")}


def test_the_cli_writes_the_familys_controlnet_the_same_every_time(tmp_path, models_dir, capsys):
    tiny_main(["--models-dir", str(tmp_path), "--controlnet", "--family", "sdxl"])
    written = tmp_path / "ControlNet" / "tiny-controlnet-sdxl.safetensors"
    assert capsys.readouterr().out.strip() == str(written)
    assert written.read_bytes() == (models_dir / "ControlNet" / written.name).read_bytes()
    with pytest.raises(SystemExit):
        tiny_main(["--models-dir", str(tmp_path), "--controlnet", "--family", "sdxl-refiner"])


def test_a_controlnet_section_bakes_into_the_folder_the_worker_lists(tmp_path, models_dir):
    source = models_dir / "ControlNet" / "tiny-controlnet-sd15.safetensors"
    manifest = tmp_path / "models.toml"
    manifest.write_text(f'[[controlnet]]\nsource = "{source}"\nname = "control_tiny_canny.safetensors"\n')
    baked = tmp_path / "models"
    bake(read_manifest(manifest), baked)
    assert (baked / "ControlNet" / "control_tiny_canny.safetensors").read_bytes() == source.read_bytes()
    store = ControlNets(baked, CPU, torch.float32)
    assert store.listing() == [f"control_tiny_canny [{a1111_hash(source)}]"]
    assert store.find("canny", SD1, FIELD)[0].stem == "control_tiny_canny"
    manifest.write_text('[[controlnet]]\nsource = "hf://xinsir/controlnet-canny-sdxl-1.0"\n')
    with pytest.raises(BakeError, match=r"a \[\[controlnet\]\] entry is one file"):
        read_manifest(manifest)


@pytest.mark.parametrize("config_name, depths", [("controlnet-sd15", None), ("controlnet-sdxl", None),
                                                 ("controlnet-sdxl", [1, 0, 1])])  # SDXL's "mid" ControlNets
@pytest.mark.parametrize("original", [True, False])
def test_real_size_files_are_planned_from_their_shapes(tmp_path, config_name, depths, original):
    """On the meta device (nothing allocated): the config fitted to a real-size file's shapes builds exactly its
    weights, and the original layout's names are the ones diffusers' own conversion reads."""
    config = ControlNetModel.load_config(architecture_dir(config_name))
    if depths:
        config["transformer_layers_per_block"] = depths
    with init_empty_weights():
        model = ControlNetModel.from_config(config)
    state = to_original_layout(model) if original else model.state_dict()
    file = ControlNetFile(tmp_path / "real.safetensors")
    plan = _plan(state, file, FIELD)
    _check_weights(plan, file, FIELD)
    assert plan.original is original and plan.family == ("sdxl" if "sdxl" in config_name else "sd1")
    with init_empty_weights():
        planned = ControlNetModel.from_config(plan.config)
    assert {k: v.shape for k, v in planned.state_dict().items()} == {k: v.shape for k, v in model.state_dict().items()}
    if original:
        converted = convert_controlnet_checkpoint(plan.weights, plan.config)
        assert {k: v.shape for k, v in model.state_dict().items() if not k.startswith("add_embedding.")} == {
            k: v.shape for k, v in converted.items()}
