"""The Dockerfile: linted by hadolint, and built so weights never follow code changes."""

import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path


ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = (ROOT / "Dockerfile").read_text()


def stages() -> dict[str, list[str]]:
    """Each stage's instructions (continuation lines joined), by stage name."""
    text = re.sub(r"\\\n\s*", " ", DOCKERFILE)
    result, current = {}, None
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if match := re.match(r"FROM \S+ AS (\w+)", line):
            current = match[1]
            result[current] = []
        elif current:
            result[current].append(line)
    return result


def test_hadolint_passes():
    hadolint = shutil.which("hadolint") or str(Path(__import__("sys").executable).parent / "hadolint")
    result = subprocess.run([hadolint, str(ROOT / "Dockerfile")], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_bake_stages_run_the_tested_bake_command_on_bake_code_only():
    """fetch downloads with the fetching code alone (engine changes never download again); bake, built
    on it, converts with the loading code too."""
    command = "python -m engine.store.bake --manifest models.toml --models-dir /models"
    fetch, bake = stages()["fetch"], stages()["bake"]
    assert any(line.startswith("RUN ") and line.endswith(command + " --no-convert") for line in fetch)
    assert any(line.startswith("RUN ") and line.endswith(command) for line in bake)
    copied = {name for line in fetch + bake if line.startswith("COPY ") and "MANIFEST" not in line
              for name in line.split()[1:-1]}
    assert {name for line in fetch if line.startswith("COPY engine") for name in line.split()[1:-1]} == {
        "engine/__init__.py", "engine/store/__init__.py", "engine/store/bake.py", "engine/store/models_dir.py"}
    assert all(name.startswith("engine/") and name != "engine" for name in copied)


def test_runtime_copies_weights_before_code_and_runs_offline_as_non_root():
    runtime = stages()["runtime"]
    weights = next(i for i, line in enumerate(runtime) if "--from=bake" in line)
    code = [i for i, line in enumerate(runtime) if re.match(r"COPY (schemas|engine|handler) ", line)]
    assert code and weights < min(code)
    assert "USER 10001" in runtime and any("HF_HUB_OFFLINE=1" in line for line in runtime)
    assert runtime[-1] == 'CMD ["python", "-m", "handler"]'


def test_runtime_ships_the_code_it_runs_compiled():
    """The worker user can't write __pycache__ in /app: without bytecode built in the image, every start
    would compile the sources again."""
    runtime = stages()["runtime"]
    copied = {line.split()[1] for line in runtime if re.match(r"COPY (schemas|engine|handler) ", line)}
    compiled = next(line for line in runtime if "compileall" in line)
    assert copied == {"schemas", "engine", "handler"} and copied <= set(compiled.split())
    assert runtime.index(compiled) < runtime.index("USER 10001")


def test_dependencies_are_pinned_and_the_manifest_parses():
    constraints = (ROOT / "docker" / "constraints.txt").read_text().splitlines()
    pinned = {line.split("==")[0].lower() for line in constraints if "==" in line}
    for dependency in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]:
        name = re.split(r"[<>=\[ ]", dependency)[0].lower()
        assert name == "torch" or name in pinned, f"{name} is not pinned in docker/constraints.txt"
    from engine.store.bake import read_manifest

    assert [e.relative_path for e in read_manifest(ROOT / "models.toml")] == [
        "Stable-diffusion/v1-5-pruned-emaonly.safetensors", "GFPGAN/GFPGANv1.4.pth",
        "FaceDetection/face_detection_yunet_2023mar.onnx", "BLIP/blip-image-captioning-base"]



def _copy_stage(stage: str, root: Path) -> None:
    """The engine files a stage's COPY lines bring (files into folders ending in /, folders as folders)."""
    for line in stages()[stage]:
        if line.startswith("COPY engine"):
            *sources, destination = line.split()[1:]
            for source in sources:
                if (ROOT / source).is_dir():
                    shutil.copytree(ROOT / source, root / destination, dirs_exist_ok=True)
                    continue
                target = root / destination / Path(source).name
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(ROOT / source, target)


def test_the_fetch_stage_imports_with_only_the_files_it_copies(tmp_path):
    """The fetch stage runs engine.bake with nothing but its COPY'd files and the standard library (its
    third-party imports are lazy): an import of another package there would fail only in a docker build."""
    _copy_stage("fetch", tmp_path)
    result = subprocess.run([sys.executable, "-S", "-c", "import engine.store.bake"], cwd=tmp_path, capture_output=True,
                            text=True, timeout=60, env={"PYTHONPATH": str(tmp_path)})
    assert result.returncode == 0, result.stderr


def test_the_bake_stage_imports_its_conversion_with_only_the_files_it_copies(tmp_path):
    """The bake stage converts single files with the fetch stage's files and its own COPY'd ones: the loading code
    (families, configs) must import from those alone."""
    _copy_stage("fetch", tmp_path)
    _copy_stage("bake", tmp_path)
    code = "import engine.store.loading, engine.store.converted; from engine.families import FAMILIES"
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                            env={**os.environ, "PYTHONPATH": str(tmp_path)})
    assert result.returncode == 0, result.stderr[-2000:]
