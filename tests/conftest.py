"""Shared fixtures: the tiny checkpoint (written once per session), an engine on the CPU, and helpers
to read the PNGs the worker returns.

Everything runs offline on the CPU: the tiny checkpoint has SD 1.5's architecture at tiny widths, so
it loads through the same single-file path as a real checkpoint.
"""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"  # before diffusers / transformers / huggingface_hub are imported

import base64
import importlib
import io
import shlex
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parent.parent
TINY_NAME = "tiny-sd15"


# ---------------------------------------------------------------- helpers (also offered as fixtures)

def decode_png_b64(data: str) -> Image.Image:
    """A base64 image from a response, opened (and checked to be a PNG)."""
    raw = base64.b64decode(data, validate=True)
    assert raw.startswith(b"\x89PNG\r\n\x1a\n"), "not a PNG"
    image = Image.open(io.BytesIO(raw))
    image.load()
    return image


def png_parameters(data: str | bytes | Image.Image) -> str | None:
    """The `parameters` text chunk of a PNG (base64 string, raw bytes or an opened image)."""
    if isinstance(data, str):
        image = decode_png_b64(data)
    elif isinstance(data, bytes):
        image = Image.open(io.BytesIO(data))
        image.load()
    else:
        image = data
    text = getattr(image, "text", None) or {}
    return text.get("parameters", image.info.get("parameters"))


def free_port() -> int:
    """A loopback TCP port nothing listens on (the OS's choice)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def subprocess_env(models_dir: Path | None = None, **extra: str) -> dict[str, str]:
    """The environment for `python -m ...` subprocesses: offline, CPU, this source tree importable."""
    env = {k: v for k, v in os.environ.items() if k not in ("SD_MODEL", "RUNPOD_WEBHOOK_GET_JOB")}
    env["HF_HUB_OFFLINE"] = "1"
    env["WORKER_DEVICE"] = "cpu"
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    if models_dir is not None:
        env["MODELS_DIR"] = str(models_dir)
    env.update(extra)
    return env



def pytest_configure(config):
    # diffusers' schedulers call numpy in ways numpy 2 deprecates, thousands of times per test run
    config.addinivalue_line("filterwarnings", "ignore:__array:DeprecationWarning")


# ---------------------------------------------------------------- fixtures

@pytest.fixture(scope="session")
def models_dir(tmp_path_factory) -> Path:
    """A models directory holding only Stable-diffusion/tiny-sd15.safetensors."""
    from engine.tiny.sd import write_tiny_checkpoint

    directory = tmp_path_factory.mktemp("models")
    path = write_tiny_checkpoint(directory)
    assert path == directory / "Stable-diffusion" / f"{TINY_NAME}.safetensors"
    return directory


@pytest.fixture(scope="session")
def tiny_checkpoint_path(models_dir) -> Path:
    return models_dir / "Stable-diffusion" / f"{TINY_NAME}.safetensors"


@pytest.fixture(scope="session")
def engine_models_dir(tmp_path_factory, tiny_checkpoint_path) -> Path:
    """The engine's models directory: tiny-sd15 plus tiny-sd15-inpainting (a 9-channel UNet), so that
    tests can switch checkpoints with override_settings.sd_model_checkpoint."""
    from engine.tiny.sd import INPAINTING, write_tiny_checkpoint

    directory = tmp_path_factory.mktemp("engine-models")
    (directory / "Stable-diffusion").mkdir()
    shutil.copyfile(tiny_checkpoint_path, directory / "Stable-diffusion" / tiny_checkpoint_path.name)
    write_tiny_checkpoint(directory, architecture=INPAINTING)
    return directory


@pytest.fixture(scope="session")
def engine(engine_models_dir):
    """The engine on tiny-sd15, on the CPU in float32 (shared: tests must not change its options)."""
    from engine.runtime import Engine

    return Engine.start(models_dir=engine_models_dir, sd_model=TINY_NAME, device="cpu", dtype="float32")


@pytest.fixture
def unet_calls(engine, monkeypatch) -> list:
    """A list that gets one item per call of the `engine` fixture's current UNet (for this test)."""
    calls = []
    unet = engine.model.unet
    original = unet.forward
    monkeypatch.setattr(unet, "forward", lambda *a, **k: calls.append(1) or original(*a, **k))
    return calls


@pytest.fixture(scope="session")
def diffusers_models_dir(tmp_path_factory, engine) -> Path:
    """A models directory holding the tiny pipeline saved as a diffusers folder (model_index.json)."""
    directory = tmp_path_factory.mktemp("diffusers-models")
    engine.model.pipe.save_pretrained(directory / "Stable-diffusion" / "tiny-diffusers")
    return directory


@pytest.fixture(scope="session")
def decode_png():
    return decode_png_b64


@pytest.fixture(scope="session")
def read_parameters():
    return png_parameters


@pytest.fixture(scope="session")
def worker_env():
    """subprocess_env(models_dir, **extra): the environment for `python -m handler ...` subprocesses."""
    return subprocess_env


@pytest.fixture(scope="module")
def server_process(tmp_path_factory):
    """start(args, models_dir): runs `python -m <args>` (a server; "{port}" in args becomes a free
    loopback port) with the worker's environment, waits until it listens and returns its base URL.
    Every one is stopped at the end of the module."""
    processes = []

    def start(args: list[str], models_dir: Path, timeout: float = 240) -> str:
        port = free_port()
        log = tmp_path_factory.mktemp("server") / "server.log"
        with log.open("wb") as out:
            process = subprocess.Popen([sys.executable, "-m", *(a.format(port=port) for a in args)], cwd=REPO_ROOT,
                                       env=subprocess_env(models_dir), stdout=out, stderr=subprocess.STDOUT,
                                       stdin=subprocess.DEVNULL)
        processes.append(process)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if process.poll() is not None:
                pytest.fail(f"{args[0]} exited with {process.returncode}:\n{log.read_text(errors='replace')[-3000:]}")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    return f"http://127.0.0.1:{port}"
            except OSError:
                time.sleep(0.5)
        pytest.fail(f"{args[0]} did not listen within {timeout} s:\n{log.read_text(errors='replace')[-3000:]}")

    yield start
    for process in processes:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=20)


@pytest.fixture(scope="module")
def serve_app():
    """start(app): serves an ASGI app with uvicorn on a thread, on a free loopback port, and returns its base
    URL. Every server is stopped at the end of the module."""
    import uvicorn

    servers = []

    def start(app) -> str:
        port = free_port()
        server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        deadline = time.monotonic() + 20
        while not server.started:
            assert time.monotonic() < deadline, "server did not start"
            time.sleep(0.05)
        servers.append((server, thread))
        return f"http://127.0.0.1:{port}"

    yield start
    for server, thread in servers:
        server.should_exit = True
        thread.join(timeout=10)


# ---------------------------------------------------------------- upscalers (extras, hires fix)

# Tiny random-weight upscalers built from spandrel's own architecture classes, in A1111's folders:
# file -> (architecture, its parameters)
TINY_UPSCALERS = {
    "RealESRGAN/RealESRGAN_x4plus.pth": ("ESRGAN", {"num_filters": 8, "num_blocks": 1, "scale": 4}),
    "RealESRGAN/realesr-general-x4v3.pth": ("Compact", {"num_feat": 8, "num_conv": 2, "upscale": 4}),
    "ESRGAN/2x-tiny.safetensors": ("Compact", {"num_feat": 8, "num_conv": 2, "upscale": 2}),
}


def write_tiny_upscalers(models_dir: Path) -> None:
    """TINY_UPSCALERS under models_dir, the same weights every time; plus ESRGAN/broken.pth, not a model."""
    import importlib

    import torch
    from safetensors.torch import save_file

    from engine.postprocess.upscalers import _import_spandrel

    _import_spandrel()
    for index, (relative, (architecture, parameters)) in enumerate(TINY_UPSCALERS.items()):
        torch.manual_seed(index)
        module = importlib.import_module(f"spandrel.architectures.{architecture}")
        network = getattr(module, architecture)(**parameters)
        path = models_dir / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.suffix == ".safetensors":
            save_file(network.state_dict(), path)
        else:
            torch.save(network.state_dict(), path)
    (models_dir / "ESRGAN" / "broken.pth").write_bytes(b"not a model")


@pytest.fixture(scope="session")
def upscaler_models_dir(tmp_path_factory, tiny_checkpoint_path) -> Path:
    """tiny-sd15 plus the tiny upscalers."""
    directory = tmp_path_factory.mktemp("upscaler-models")
    (directory / "Stable-diffusion").mkdir()
    shutil.copyfile(tiny_checkpoint_path, directory / "Stable-diffusion" / tiny_checkpoint_path.name)
    write_tiny_upscalers(directory)
    return directory


@pytest.fixture(scope="session")
def upscaler_engine(upscaler_models_dir):
    """An engine on tiny-sd15 whose models directory holds the tiny upscalers (CPU, float32, tiles of 64)."""
    from engine.runtime import Engine

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("WORKER_UPSCALE_TILE", "64")
        return Engine.start(models_dir=upscaler_models_dir, sd_model=TINY_NAME, device="cpu", dtype="float32")


# ---------------------------------------------------------------- engines on models directories of their own

@pytest.fixture(scope="session")
def tiny_models_dir_factory(tmp_path_factory, tiny_checkpoint_path):
    """make(name): a fresh models directory holding only tiny-sd15, for tests that add files to it."""
    def make(name: str) -> Path:
        directory = tmp_path_factory.mktemp(name)
        (directory / "Stable-diffusion").mkdir()
        shutil.copyfile(tiny_checkpoint_path, directory / "Stable-diffusion" / tiny_checkpoint_path.name)
        return directory

    return make


@pytest.fixture(scope="session")
def start_tiny_engine():
    """start(models_dir): an engine on tiny-sd15 in `models_dir`, on the CPU in float32."""
    from engine.runtime import Engine

    return lambda models_dir: Engine.start(models_dir=models_dir, sd_model=TINY_NAME, device="cpu", dtype="float32")


# ---------------------------------------------------------------- the demo's models directory

def demo_writer_commands(models_dir: Path) -> list[list[str]]:
    """The commands `make demo` writes its models directory with (`python -m engine.tiny...` lines of `make -n`),
    for `models_dir`, without the interpreter: [module, *arguments]."""
    printed = subprocess.run(["make", "-n", "demo", f"DEMO_MODELS_DIR={models_dir}"], cwd=REPO_ROOT, check=True,
                             capture_output=True, text=True).stdout
    commands = [shlex.split(line, comments=True) for line in printed.splitlines() if " -m engine.tiny" in line]
    return [command[command.index("-m") + 1:] for command in commands]


@pytest.fixture(scope="session")
def demo_models_dir(tmp_path_factory) -> Path:
    """A models directory written by the commands `make demo` runs (run in-process): tiny-sd15, tiny-sdxl, its refiner,
    their LoRAs, the tiny ControlNets and depth networks, the stand-in face detector and CodeFormer, the tiny BLIP
    captioner. Every writer `make demo` gains runs here too: each must stay fast."""
    directory = tmp_path_factory.mktemp("demo-models")
    commands = demo_writer_commands(directory)
    assert commands, "make -n demo printed no python -m engine.tiny... command"
    for module, *arguments in commands:
        importlib.import_module(module).main(arguments)
    return directory


@pytest.fixture(scope="session")
def demo_engine(demo_models_dir):
    """An engine on the demo's models directory, with default options (CPU, float32)."""
    from engine.runtime import Engine

    return Engine.start(models_dir=demo_models_dir, sd_model=TINY_NAME, device="cpu", dtype="float32")


# ---------------------------------------------------------------- SDXL beside SD 1.5

SDXL_NAME = "tiny-sdxl"
SDXL_REFINER_NAME = "tiny-sdxl-refiner"
SDXL_INPAINTING_NAME = "tiny-sdxl-inpainting"
SDXL_LORA, SD15_LORA = "tiny-sdxl-lora", "tiny-lora"
SDXL_EMBEDDING, SD15_EMBEDDING = "xlstyle", "sdstyle"
# not named after a checkpoint, so that sd_vae "Automatic" leaves them out; the SDXL one is named as SDXL VAEs are
SDXL_VAE, SD15_VAE = "sdxl-tiny-vae.safetensors", "sd15-tiny-vae.safetensors"


@pytest.fixture(scope="session")
def sdxl_models_dir(tmp_path_factory, tiny_checkpoint_path) -> Path:
    """A mixed fleet: tiny-sdxl, tiny-sdxl-refiner and tiny-sdxl-inpainting beside tiny-sd15; a LoRA, a 2-vector
    embedding and a VAE file of each family (names above); the tiny upscalers."""
    from engine.tiny.addons import write_tiny_embedding, write_tiny_sdxl_embedding, write_tiny_vae
    from engine.tiny.lora import write_tiny_lora, write_tiny_sdxl_lora
    from engine.tiny.sd import SDXL, SDXL_INPAINTING, SDXL_REFINER, write_tiny_checkpoint

    directory = tmp_path_factory.mktemp("sdxl-models")
    (directory / "Stable-diffusion").mkdir()
    shutil.copyfile(tiny_checkpoint_path, directory / "Stable-diffusion" / tiny_checkpoint_path.name)
    for architecture in (SDXL, SDXL_REFINER, SDXL_INPAINTING):
        write_tiny_checkpoint(directory, architecture=architecture)
    write_tiny_sdxl_lora(directory, SDXL_LORA, seed=1)
    write_tiny_lora(directory, SD15_LORA, seed=1)
    write_tiny_sdxl_embedding(directory, SDXL_EMBEDDING, vectors=2, seed=1)
    write_tiny_embedding(directory, SD15_EMBEDDING, vectors=2, seed=1)
    write_tiny_vae(directory, SDXL_VAE, seed=2, architecture=SDXL)
    write_tiny_vae(directory, SD15_VAE, seed=2)
    write_tiny_upscalers(directory)
    return directory


@pytest.fixture(scope="session")
def sdxl_engine(sdxl_models_dir):
    """An engine on tiny-sdxl in sdxl_models_dir (CPU, float32, default options; shared: tests must not change
    its options)."""
    from engine.runtime import Engine

    return Engine.start(models_dir=sdxl_models_dir, sd_model=SDXL_NAME, device="cpu", dtype="float32")


# ---------------------------------------------------------------- img2img inputs

@pytest.fixture(scope="session")
def source():
    """A 64x64 RGB gradient: an init image whose every pixel differs from its neighbours."""
    import numpy as np
    from PIL import Image

    x, y = np.meshgrid(np.arange(64), np.arange(64))
    return Image.fromarray(np.stack([x * 4, y * 4, (x + y) * 2], -1).astype(np.uint8))


@pytest.fixture(scope="session")
def square_mask():
    """A 64x64 mask repainting the central 32x32 square."""
    from PIL import Image

    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (16, 16, 48, 48))
    return mask
