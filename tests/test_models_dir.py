"""The models directory in A1111's layout: listing, names, titles, hashes, lookup, and the errors that
say where checkpoints go."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from engine.store.models_dir import (Checkpoint, ModelsDirError, default_checkpoint, find_checkpoint,
                               list_checkpoints)

HEX = set("0123456789abcdef")


def _write_safetensors(path: Path, seed: int) -> bytes:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({"weight": torch.arange(16, dtype=torch.float32) * seed}, path)
    return path.read_bytes()


def _write_diffusers_folder(path: Path) -> None:
    (path / "unet").mkdir(parents=True)
    (path / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    _write_safetensors(path / "unet" / "diffusion_pytorch_model.safetensors", 3)
    (path / "unet" / "config.json").write_text("{}")


@pytest.fixture
def layout(tmp_path):
    """models/Stable-diffusion with two single files (one in a subfolder), a diffusers folder and clutter."""
    root = tmp_path / "models" / "Stable-diffusion"
    files = {
        "Zeta.safetensors": _write_safetensors(root / "Zeta.safetensors", 1),
        "sub/nested-model.safetensors": _write_safetensors(root / "sub" / "nested-model.safetensors", 2),
    }
    _write_diffusers_folder(root / "my-diffusers")
    (root / "readme.txt").write_text("not a checkpoint")
    (root / "put-checkpoints-here.json").write_text("{}")
    return tmp_path / "models", files


def test_lists_single_files_and_diffusers_folders_with_a1111_names(layout):
    models, _ = layout
    checkpoints = list_checkpoints(models)
    assert [c.name for c in checkpoints] == ["my-diffusers", "sub/nested-model.safetensors", "Zeta.safetensors"]
    by_name = {c.name: c for c in checkpoints}
    assert by_name["Zeta.safetensors"].model_name == "Zeta"
    assert by_name["sub/nested-model.safetensors"].model_name == "sub_nested-model"  # A1111: / becomes _
    assert by_name["my-diffusers"].model_name == "my-diffusers"
    assert by_name["Zeta.safetensors"].is_single_file and not by_name["my-diffusers"].is_single_file
    assert by_name["my-diffusers"].path == models / "Stable-diffusion" / "my-diffusers"


def test_diffusers_folder_components_are_not_listed_as_checkpoints(layout):
    models, _ = layout
    names = [c.name for c in list_checkpoints(models)]
    assert not any("diffusion_pytorch_model" in name for name in names)


def test_short_hash_is_the_first_10_hex_of_the_files_sha256(layout):
    models, files = layout
    for checkpoint in list_checkpoints(models):
        if checkpoint.name in files:
            digest = hashlib.sha256(files[checkpoint.name]).hexdigest()
            assert checkpoint.sha256 == digest
            assert checkpoint.short_hash == digest[:10]
        assert len(checkpoint.short_hash) == 10 and set(checkpoint.short_hash) <= HEX
        assert checkpoint.title == f"{checkpoint.name} [{checkpoint.short_hash}]"


def test_tiny_checkpoint_hash_and_title(models_dir, tiny_checkpoint_path):
    (checkpoint,) = list_checkpoints(models_dir)
    digest = hashlib.sha256(tiny_checkpoint_path.read_bytes()).hexdigest()
    assert checkpoint.name == "tiny-sd15.safetensors"
    assert checkpoint.model_name == "tiny-sd15"
    assert checkpoint.short_hash == digest[:10]
    assert checkpoint.title == f"tiny-sd15.safetensors [{digest[:10]}]"


def test_hash_follows_a_changed_file(tmp_path):
    path = tmp_path / "Stable-diffusion" / "m.safetensors"
    first = hashlib.sha256(_write_safetensors(path, 1)).hexdigest()
    assert Checkpoint(path, "m.safetensors").sha256 == first
    second = hashlib.sha256(_write_safetensors(path, 5)).hexdigest()
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))
    assert second != first
    assert Checkpoint(path, "m.safetensors").sha256 == second


def test_saved_diffusers_pipeline_is_listed(diffusers_models_dir):
    (checkpoint,) = list_checkpoints(diffusers_models_dir)
    assert checkpoint.name == "tiny-diffusers"
    assert checkpoint.model_name == "tiny-diffusers"
    assert not checkpoint.is_single_file
    assert checkpoint.title == f"tiny-diffusers [{checkpoint.short_hash}]"
    assert len(checkpoint.short_hash) == 10 and set(checkpoint.short_hash) <= HEX


def test_find_by_title_name_model_name_and_short_hash(layout):
    models, _ = layout
    checkpoints = list_checkpoints(models)
    for checkpoint in checkpoints:
        keys = {checkpoint.title, checkpoint.name, checkpoint.model_name, checkpoint.short_hash}
        for key in keys:
            assert find_checkpoint(checkpoints, key) == checkpoint, key
    nested = next(c for c in checkpoints if c.name.startswith("sub/"))
    assert find_checkpoint(checkpoints, "sub/nested-model") == nested  # name without extension


def test_title_with_a_wrong_hash_is_not_a_match(layout):
    models, _ = layout
    checkpoints = list_checkpoints(models)
    with pytest.raises(LookupError):
        find_checkpoint(checkpoints, "Zeta.safetensors [0123456789]")


def test_missing_checkpoint_lists_the_available_ones(layout):
    models, _ = layout
    with pytest.raises(LookupError) as caught:
        find_checkpoint(list_checkpoints(models), "nope")
    message = str(caught.value)
    assert "'nope'" in message and "Zeta.safetensors" in message and "my-diffusers" in message


def test_default_checkpoint_is_sd_model_or_the_first(layout):
    models, _ = layout
    assert default_checkpoint(models).name == "my-diffusers"
    assert default_checkpoint(models, "Zeta").name == "Zeta.safetensors"


def _assert_says_where_checkpoints_go(error: ModelsDirError):
    message = str(error)
    assert "Stable-diffusion" in message, message
    assert ".safetensors" in message, message


def test_sd_model_naming_a_missing_checkpoint(layout):
    models, _ = layout
    with pytest.raises(ModelsDirError) as caught:
        default_checkpoint(models, "missing-model")
    assert "SD_MODEL" in str(caught.value) and "missing-model" in str(caught.value)
    assert "Zeta.safetensors" in str(caught.value)  # what is there instead
    _assert_says_where_checkpoints_go(caught.value)


@pytest.mark.parametrize("case", ["missing dir", "empty dir", "empty Stable-diffusion", "no safetensors"])
def test_no_checkpoint_says_where_to_put_one(tmp_path, case):
    models = tmp_path / "models"
    if case != "missing dir":
        models.mkdir()
    if case in ("empty Stable-diffusion", "no safetensors"):
        (models / "Stable-diffusion").mkdir()
    if case == "no safetensors":
        (models / "Stable-diffusion" / "model.txt").write_text("x")
    assert list_checkpoints(models) == []
    with pytest.raises(ModelsDirError) as caught:
        default_checkpoint(models)
    _assert_says_where_checkpoints_go(caught.value)
    assert str((models / "Stable-diffusion").resolve()) in str(caught.value)


def test_engine_start_reports_models_dir_errors(tmp_path, monkeypatch, models_dir):
    from engine.runtime import Engine

    with pytest.raises(ModelsDirError, match="Stable-diffusion"):
        Engine.start(models_dir=tmp_path / "nothing-here")
    monkeypatch.setenv("SD_MODEL", "not-there")
    with pytest.raises(ModelsDirError, match="SD_MODEL"):
        Engine.start(models_dir=models_dir)
