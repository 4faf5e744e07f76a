"""`python -m engine.tiny`: the tiny demo / test checkpoint is small and the same on every run."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from safetensors import safe_open

REPO_ROOT = Path(__file__).resolve().parents[1]
MAX_BYTES = 20 * 1024 * 1024


def test_cli_writes_a_small_identical_checkpoint_every_run(tmp_path, worker_env, tiny_checkpoint_path):
    runs = {name: tmp_path / name for name in ("first", "second")}
    processes = {  # two independent processes, run side by side
        name: subprocess.Popen([sys.executable, "-m", "engine.tiny", "--models-dir", str(directory)],
                               cwd=REPO_ROOT, env=worker_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, stdin=subprocess.DEVNULL)
        for name, directory in runs.items()
    }
    written = {}
    for name, process in processes.items():
        stdout, stderr = process.communicate(timeout=300)
        assert process.returncode == 0, stderr[-3000:]
        path = runs[name] / "Stable-diffusion" / "tiny-sd15.safetensors"
        assert path.is_file()
        assert str(path) in stdout  # the CLI prints what it wrote
        assert 0 < path.stat().st_size < MAX_BYTES
        written[name] = path.read_bytes()
    assert written["first"] == written["second"]
    assert written["first"] == tiny_checkpoint_path.read_bytes()  # and the same as written in-process


def test_tiny_checkpoint_is_in_the_a1111_single_file_layout(tiny_checkpoint_path):
    with safe_open(tiny_checkpoint_path, framework="pt") as weights:
        keys = set(weights.keys())
        assert weights.get_slice("model.diffusion_model.input_blocks.0.0.weight").get_shape()[1] == 4
    assert any(k.startswith("model.diffusion_model.") for k in keys)
    assert any(k.startswith("first_stage_model.") for k in keys)
    assert any(k.startswith("cond_stage_model.transformer.text_model.") for k in keys)
    assert not any(k.startswith(("unet.", "vae.", "text_encoder.")) for k in keys)  # not diffusers' names
