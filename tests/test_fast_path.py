"""The GPU fast path (engine/store/fast_path.py): each WORKER_* option parses, is off by default and, turned on,
is applied to the loaded pipeline without changing its images (on the CPU, in float32, on the tiny checkpoint)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from engine.runtime import Engine
from engine.settings import FastPathOptions, Settings, SettingsError
from engine.store import compile_cache
from engine.store.fast_path import FastPath, FusedUnlessAdapted
from engine.tiny.lora import write_tiny_lora
from schemas import Txt2ImgRequest

from conftest import TINY_NAME

REQUEST = dict(prompt="a red cube", steps=2, width=64, height=64, seed=7)


def pixels(engine: Engine, prompt: str = REQUEST["prompt"]) -> np.ndarray:
    return np.asarray(engine.txt2img(Txt2ImgRequest(**{**REQUEST, "prompt": prompt})).images[0].image, dtype=int)


def start(models_dir: Path, options: FastPathOptions) -> Engine:
    return Engine.start(Settings(models_dir=models_dir, sd_model=TINY_NAME, device="cpu", dtype="float32",
                                 fast_path=options))


def compiling(engine: Engine, options: FastPathOptions) -> Engine:
    """`engine` with `options` and torch.compile's eager backend (no code generation: fast on the CPU), reloaded."""
    engine.fast_path = FastPath(options, engine.models_dir, engine.device, compile_backend="eager")
    engine.reload()
    return engine


@pytest.fixture(scope="module")
def lora_dir(tiny_models_dir_factory) -> Path:
    directory = tiny_models_dir_factory("fast-path")
    write_tiny_lora(directory, "unet_lora", "diffusers", seed=4, components=("unet",))  # q, k, v and out
    return directory


@pytest.fixture(scope="module")
def default_pixels(lora_dir) -> dict[str, np.ndarray]:
    """The images without the fast path, with and without the LoRA."""
    engine = start(lora_dir, FastPathOptions())
    return {"plain": pixels(engine), "lora": pixels(engine, REQUEST["prompt"] + " <lora:unet_lora:1>")}


def test_every_option_is_off_unless_set():
    assert Settings.from_env({}).fast_path == FastPathOptions()
    assert FastPathOptions() == FastPathOptions(channels_last=False, fuse_qkv=False, compile=False, compile_sizes=(),
                                                cudnn_benchmark=False, attention="default")


def test_every_variable_is_read():
    options = Settings.from_env({"WORKER_CHANNELS_LAST": "1", "WORKER_FUSE_QKV": "1", "WORKER_COMPILE": "1",
                                 "WORKER_COMPILE_SIZES": "512x512, 1024x768", "WORKER_CUDNN_BENCHMARK": "1",
                                 "WORKER_ATTENTION": "Flash"}).fast_path
    assert options == FastPathOptions(True, True, True, ((512, 512), (1024, 768)), True, "flash")
    assert Settings.from_env({"WORKER_COMPILE": "0", "WORKER_ATTENTION": ""}).fast_path == FastPathOptions()


@pytest.mark.parametrize("variable, value", [("WORKER_CHANNELS_LAST", "yes"), ("WORKER_FUSE_QKV", "2"),
                                             ("WORKER_COMPILE", "true"), ("WORKER_CUDNN_BENCHMARK", "on"),
                                             ("WORKER_ATTENTION", "xformers"), ("WORKER_COMPILE_SIZES", "512"),
                                             ("WORKER_COMPILE_SIZES", "512x500"), ("WORKER_COMPILE_SIZES", "32x32")])
def test_a_bad_value_is_an_error_naming_the_variable(variable, value):
    with pytest.raises(SettingsError, match=variable):
        Settings.from_env({variable: value})


def test_channels_last_changes_the_layout_not_the_image(lora_dir, default_pixels):
    engine = start(lora_dir, FastPathOptions(channels_last=True))
    for module in (engine.model.unet, engine.model.vae):
        convolutions = [m.weight for m in module.modules()
                        if isinstance(m, torch.nn.Conv2d) and m.kernel_size != (1, 1)]
        assert convolutions and all(w.is_contiguous(memory_format=torch.channels_last) for w in convolutions)
        assert not any(w.is_contiguous() for w in convolutions)
    assert np.abs(pixels(engine) - default_pixels["plain"]).max() <= 1


def test_fused_qkv_gives_the_same_images_with_and_without_a_lora(lora_dir, default_pixels):
    engine = start(lora_dir, FastPathOptions(fuse_qkv=True))
    unet = engine.model.unet
    fused = [m for m in unet.modules() if hasattr(m, "to_qkv") or hasattr(m, "to_kv")]
    assert fused and all(getattr(m, "fused_projections", False) for m in fused)
    assert {type(p) for p in unet.attn_processors.values()} == {FusedUnlessAdapted}
    assert np.abs(pixels(engine) - default_pixels["plain"]).max() <= 1
    with_lora = pixels(engine, REQUEST["prompt"] + " <lora:unet_lora:1>")
    assert np.abs(with_lora - default_pixels["plain"]).max() > 10  # the LoRA changes the image...
    assert np.abs(with_lora - default_pixels["lora"]).max() <= 1  # ...as much as without fusion
    assert np.abs(pixels(engine) - default_pixels["plain"]).max() <= 1  # and is gone from the next request


def test_compile_wraps_the_unet_and_keeps_its_images(lora_dir, default_pixels):
    engine = compiling(start(lora_dir, FastPathOptions()), FastPathOptions(compile=True))
    assert engine.model.unet._compiled_call_impl is not None
    assert engine.model.vae._compiled_call_impl is None
    assert np.abs(pixels(engine) - default_pixels["plain"]).max() <= 1


SDP_KERNELS = ("flash", "mem_efficient", "cudnn", "math")


def sdp_enabled() -> dict[str, bool]:
    return {name: getattr(torch.backends.cuda, f"{name}_sdp_enabled")() for name in SDP_KERNELS}


@pytest.fixture
def process_flags(monkeypatch):
    """torch's SDPA kernel switches all on and cuDNN benchmark off, as they were afterwards."""
    before = sdp_enabled()
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    for name in SDP_KERNELS:
        getattr(torch.backends.cuda, f"enable_{name}_sdp")(True)
    yield
    for name, enabled in before.items():
        getattr(torch.backends.cuda, f"enable_{name}_sdp")(enabled)


def test_the_process_wide_options_apply_on_cuda_only(tmp_path, process_flags):
    options = FastPathOptions(cudnn_benchmark=True, attention="flash")
    FastPath(options, tmp_path, torch.device("cpu"))
    assert (torch.backends.cudnn.benchmark, sdp_enabled()) == (False, dict.fromkeys(SDP_KERNELS, True))
    FastPath(options, tmp_path, torch.device("cuda"))  # nothing is moved to the device: flags only
    assert torch.backends.cudnn.benchmark is True
    assert sdp_enabled() == {"flash": True, "mem_efficient": False, "cudnn": False, "math": True}


def test_sdpa_is_the_attention_by_default(engine):
    from diffusers.models.attention_processor import AttnProcessor2_0

    for module in (engine.model.unet, engine.model.vae):
        assert {type(p) for p in module.attn_processors.values()} == {AttnProcessor2_0}


def test_the_warm_up_runs_at_the_compiled_sizes(lora_dir, monkeypatch):
    engine = start(lora_dir, FastPathOptions())
    sizes = []
    monkeypatch.setattr(engine, "txt2img", lambda request: sizes.append((request.width, request.height)))
    engine.warm_up()
    assert sizes == [(64, 64)]  # nothing compiled: one tiny image
    engine.fast_path = FastPath(FastPathOptions(compile=True, compile_sizes=((512, 512), (768, 512))), lora_dir,
                                engine.device, compile_backend="eager")
    engine.warm_up()
    assert sizes[1:] == [(512, 512), (768, 512)]
    engine.fast_path = FastPath(FastPathOptions(compile=True), lora_dir, engine.device, compile_backend="eager")
    engine.warm_up()
    assert sizes[3:] == [(engine.model.unet.config.sample_size * 8,) * 2]  # the checkpoint's own size


def test_the_compile_cache_is_saved_and_loaded_from_the_models_directory(tmp_path, monkeypatch):
    loaded = []
    monkeypatch.setattr(torch.compiler, "save_cache_artifacts", lambda: (b"artifacts", None))
    monkeypatch.setattr(torch.compiler, "load_cache_artifacts", loaded.append)
    cpu = torch.device("cpu")
    message = compile_cache.load(tmp_path, cpu)
    assert "compiles on first use" in message and loaded == []
    path = compile_cache.save(tmp_path, cpu)
    assert path == tmp_path / ".compile-cache" / f"torch-{torch.__version__}-cpu.bin"
    assert path.read_bytes() == b"artifacts"
    FastPath(FastPathOptions(), tmp_path, cpu)
    assert loaded == []  # only when compiling
    FastPath(FastPathOptions(compile=True), tmp_path, cpu)
    assert loaded == [b"artifacts"]
    monkeypatch.setattr(torch.compiler, "save_cache_artifacts", lambda: None)
    assert compile_cache.save(tmp_path / "other", cpu) is None and not (tmp_path / "other").exists()
