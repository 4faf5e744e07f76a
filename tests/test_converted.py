"""The bake-time conversion of single-file checkpoints (engine/store/converted.py): the bake writes it, the
worker loads it (weights memory-mapped, not copied) and generates the same images as from the single
file, and a missing, partial or stale conversion falls back to the single file."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import engine.store.loading as loading
from engine.store.bake import Entry, bake
from engine.settings import Settings
from engine.store.converted import RECORD_FILE, converted_dir, usable_conversion
from engine.device import pick_dtype
from engine.store.models_dir import list_checkpoints, read_baked_hashes
from engine.tiny.sd import SDXL, write_tiny_checkpoint
from schemas import Txt2ImgRequest

NAME = "tiny-sd15.safetensors"
REQUEST = Txt2ImgRequest(prompt="a cat", seed=7, steps=3, width=64, height=64, sampler_name="DPM++ 2M")


@pytest.fixture(scope="module")
def baked(tmp_path_factory, tiny_checkpoint_path) -> Path:
    """A models directory baked from the tiny checkpoint (hash recorded, converted)."""
    models = tmp_path_factory.mktemp("baked")
    bake([Entry("checkpoints", str(tiny_checkpoint_path), NAME)], models)
    return models


@pytest.fixture
def baked_copy(baked, tmp_path) -> Path:
    """A copy of `baked` a test may change."""
    return Path(shutil.copytree(baked, tmp_path / "models"))


@pytest.fixture
def single_file_loads(monkeypatch) -> list:
    """Records each load that goes through the single-file loader."""
    calls = []
    original = loading.load_single_file
    monkeypatch.setattr(loading, "load_single_file", lambda *args: calls.append(args[0].name) or original(*args))
    return calls


def image(models_dir: Path) -> np.ndarray:
    from engine.runtime import Engine

    engine = Engine.start(models_dir=models_dir, sd_model=NAME, device="cpu", dtype="float32")
    return np.asarray(engine.txt2img(REQUEST).images[0].image)


def mapped_file(tensor: torch.Tensor) -> str | None:
    """The file whose memory map holds the tensor's bytes, if any."""
    address = tensor.data_ptr()
    for line in Path("/proc/self/maps").read_text().splitlines():
        fields = line.split(maxsplit=5)  # start-end, permissions, offset, device, inode[, path]
        start, end = (int(x, 16) for x in fields[0].split("-"))
        if start <= address < end:
            return fields[5] if len(fields) == 6 else None
    return None


def test_bake_converts_single_files_beside_the_checkpoints(baked, tiny_checkpoint_path, capsys):
    (checkpoint,) = list_checkpoints(baked)  # the conversion is no checkpoint of its own
    assert checkpoint.name == NAME
    folder = converted_dir(checkpoint)
    assert folder == baked / ".converted" / "tiny-sd15"
    for weights in ("unet/diffusion_pytorch_model.safetensors", "vae/diffusion_pytorch_model.safetensors",
                    "text_encoder/model.safetensors"):
        assert (folder / weights).is_file()
    assert "conv_in.weight" in load_file(folder / "unet/diffusion_pytorch_model.safetensors")  # diffusers' keys
    record = json.loads((folder / RECORD_FILE).read_text())
    assert record["sha256"] == read_baked_hashes(baked)[f"Stable-diffusion/{NAME}"]["sha256"]
    assert record["size"] == tiny_checkpoint_path.stat().st_size
    assert usable_conversion(checkpoint) == folder

    written = (folder / RECORD_FILE).stat().st_mtime_ns
    bake([Entry("checkpoints", str(tiny_checkpoint_path), NAME)], baked)  # a re-run keeps it
    assert "converted already: tiny-sd15.safetensors" in capsys.readouterr().out
    assert (folder / RECORD_FILE).stat().st_mtime_ns == written


def test_converted_load_maps_the_weights_and_gives_the_single_files_images(baked, engine_models_dir,
                                                                          single_file_loads):
    (checkpoint,) = list_checkpoints(baked)
    pipe = loading.load_pipeline(checkpoint, torch.device("cpu"), torch.float32)
    assert single_file_loads == []
    folder = converted_dir(checkpoint)
    assert mapped_file(pipe.unet.conv_in.weight) == str(folder / "unet/diffusion_pytorch_model.safetensors")
    embeddings = pipe.text_encoder.get_input_embeddings().weight
    assert mapped_file(embeddings) == str(folder / "text_encoder/model.safetensors")
    assert type(pipe.scheduler).__name__ == "PNDMScheduler"
    assert pipe.tokenizer("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]

    from_conversion = image(baked)
    assert single_file_loads == []
    from_single_file = image(engine_models_dir)  # the same file, never converted
    assert single_file_loads == [NAME]
    assert from_conversion.std() > 0 and np.array_equal(from_conversion, from_single_file)


def test_bake_converts_sdxl_which_loads_mapped_in_its_stored_dtype_with_the_single_files_images(
        tmp_path, single_file_loads):
    """SDXL single files (two text encoders, fp16 as published) convert and load like SD 1.5's."""
    from engine.runtime import Engine

    unbaked = tmp_path / "unbaked"  # a models directory with the single file only
    single = write_tiny_checkpoint(unbaked, architecture=SDXL)
    save_file({k: v.half() for k, v in load_file(single).items()}, single, metadata={"format": "pt"})
    baked = tmp_path / "baked"
    bake([Entry("checkpoints", str(single), single.name)], baked)
    assert single_file_loads == [single.name]  # the conversion reads the single file once, at bake time
    single_file_loads.clear()
    (checkpoint,) = list_checkpoints(baked)
    folder = converted_dir(checkpoint)
    assert usable_conversion(checkpoint) == folder
    weights = {path.parent.name: path for path in folder.glob("*/*.safetensors")}
    assert sorted(weights) == ["text_encoder", "text_encoder_2", "unet", "vae"]
    for path in weights.values():
        with safe_open(path, framework="pt") as stored:
            assert {stored.get_slice(key).get_dtype() for key in stored.keys()} == {"F16"}, path

    engine = Engine.start(models_dir=baked, device="cpu")
    assert single_file_loads == []
    pipe = engine.model.pipe
    assert type(pipe).__name__ == "StableDiffusionXLPipeline" and engine.dtype == torch.float16
    for component, tensor in (("unet", pipe.unet.conv_in.weight), ("vae", pipe.vae.decoder.conv_out.weight),
                              ("text_encoder", pipe.text_encoder.get_input_embeddings().weight),
                              ("text_encoder_2", pipe.text_encoder_2.text_projection.weight)):
        assert tensor.dtype == torch.float16 and mapped_file(tensor) == str(weights[component]), component
    from_conversion = np.asarray(engine.txt2img(REQUEST).images[0].image)

    unconverted = Engine.start(models_dir=unbaked, device="cpu")
    assert single_file_loads == [single.name] and unconverted.dtype == torch.float16
    from_single_file = np.asarray(unconverted.txt2img(REQUEST).images[0].image)
    assert from_conversion.std() > 0 and np.array_equal(from_conversion, from_single_file)


@pytest.mark.parametrize("damage", ["missing", "partial", "other libraries", "file replaced"])
def test_a_missing_or_stale_conversion_falls_back_to_the_single_file(baked_copy, single_file_loads, damage):
    (checkpoint,) = list_checkpoints(baked_copy)
    folder = converted_dir(checkpoint)
    record = json.loads((folder / RECORD_FILE).read_text())
    if damage == "missing":
        shutil.rmtree(folder)
    elif damage == "partial":  # the record is written last
        (folder / RECORD_FILE).unlink()
    elif damage == "other libraries":
        (folder / RECORD_FILE).write_text(json.dumps({**record, "diffusers": "0.0.1"}))
    else:  # the same weights, one tensor changed: another sha256 and size than baked
        weights = load_file(checkpoint.path)
        weights["model.diffusion_model.out.2.bias"] = torch.ones_like(weights["model.diffusion_model.out.2.bias"])
        save_file(weights, checkpoint.path, metadata={"format": "pt", "changed": "yes"})
    assert usable_conversion(checkpoint) is None
    generated = image(baked_copy)
    assert single_file_loads == [NAME] and generated.std() > 0


def test_bake_without_conversion_then_with(tmp_path, tiny_checkpoint_path):
    """The Dockerfile's two bake stages: fetch (--no-convert), then the same bake converting."""
    from engine.store.bake import main

    models = tmp_path / "models"
    manifest = tmp_path / "models.toml"
    manifest.write_text(f'[[checkpoints]]\nsource = "{tiny_checkpoint_path}"\n')
    main(["--manifest", str(manifest), "--models-dir", str(models), "--no-convert"])
    (checkpoint,) = list_checkpoints(models)
    assert not converted_dir(checkpoint).exists()
    main(["--manifest", str(manifest), "--models-dir", str(models)])
    assert usable_conversion(checkpoint) == converted_dir(checkpoint)


def test_bake_leaves_files_it_cannot_convert_as_they_are(tmp_path, capsys):
    source = tmp_path / "not-sd.safetensors"
    save_file({"lora_unet_down_blocks_0.alpha": torch.ones(1)}, source)
    models = tmp_path / "models"
    bake([Entry("checkpoints", str(source), source.name)], models)
    assert "not converted: not-sd.safetensors: no Stable Diffusion UNet found" in capsys.readouterr().out
    assert (models / "Stable-diffusion" / source.name).is_file() and not (models / ".converted").exists()


def test_cpu_runs_half_precision_weights_as_stored(tmp_path, tiny_checkpoint_path):
    """An fp16 checkpoint runs in fp16 on the CPU by default (no fp32 copy), straight from its conversion."""
    from engine.runtime import Engine

    half = tmp_path / "tiny-half.safetensors"
    save_file({k: v.half() for k, v in load_file(tiny_checkpoint_path).items()}, half, metadata={"format": "pt"})
    models = tmp_path / "models"
    bake([Entry("checkpoints", str(half), half.name)], models)
    (checkpoint,) = list_checkpoints(models)
    assert loading.stored_dtype(checkpoint) == torch.float16

    engine = Engine.start(models_dir=models, device="cpu")
    assert engine.dtype == torch.float16 and engine.model.unet.dtype == torch.float16
    assert mapped_file(engine.model.unet.conv_in.weight).endswith("unet/diffusion_pytorch_model.safetensors")
    pixels = np.asarray(engine.txt2img(REQUEST).images[0].image)
    assert pixels.std() > 0


def test_default_dtype():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert pick_dtype(cpu, stored=torch.float16) == torch.float16
    assert pick_dtype(cpu, stored=torch.bfloat16) == torch.bfloat16
    assert pick_dtype(cpu, stored=torch.float32) == torch.float32
    assert pick_dtype(cpu) == torch.float32
    assert pick_dtype(cuda, stored=torch.float32) == torch.float16
    assert pick_dtype(cpu, Settings.from_env({"WORKER_DTYPE": "fp32"}).dtype, stored=torch.float16) == torch.float32


def test_prefetch_reads_the_files_the_load_will_read(baked_copy, monkeypatch, tmp_path):
    import engine.store.prefetch as prefetch

    (checkpoint,) = list_checkpoints(baked_copy)
    folder = converted_dir(checkpoint)
    files = sorted(folder.rglob("*.safetensors"))
    assert prefetch.weight_files(checkpoint) == files
    reader = prefetch.prefetch_default_checkpoint(Settings(models_dir=baked_copy, sd_model=NAME))
    assert reader.args[-len(files):] == [str(f) for f in files]
    assert reader.wait(timeout=60) == 0  # read them all, without an error

    (folder / RECORD_FILE).unlink()  # no current conversion: the single file is what loads
    assert prefetch.weight_files(checkpoint) == [checkpoint.path]
    nothing = Settings(models_dir=tmp_path / "empty")
    assert prefetch.prefetch_default_checkpoint(nothing) is None  # nothing to load: Engine.start reports it
