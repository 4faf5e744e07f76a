"""The bake step from local sources: a loopback HTTP server (with ranges), local paths and a stand-in hub."""

from __future__ import annotations

import fnmatch
import hashlib
import json
import shutil
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from engine.store.bake import BakeError, bake, main, read_manifest
from engine.store.models_dir import list_checkpoints

LORA_HEADER = b'{"__metadata__":{"ss_output_name":"tiny"}}'  # a safetensors header (no tensors), then data
LORA = len(LORA_HEADER).to_bytes(8, "little") + LORA_HEADER + b"lora " * 300
FILES = {"/model.safetensors": b"weights " * 5000, "/lora.safetensors": LORA}


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def server():
    """Serves FILES with HTTP range support; records each request's path and Range header."""
    requests_seen = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            requests_seen.append((self.path, self.headers.get("Range"), self.headers.get("Authorization")))
            data = FILES.get(self.path)
            if data is None:
                self.send_error(404)
                return
            start = int(self.headers["Range"].removeprefix("bytes=").rstrip("-")) if self.headers.get("Range") else 0
            self.send_response(206 if start else 200)
            self.send_header("Content-Length", str(len(data) - start))
            self.end_headers()
            self.wfile.write(data[start:])

        def log_message(self, *args):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", requests_seen
    httpd.shutdown()


def write_manifest(tmp_path, text: str):
    path = tmp_path / "models.toml"
    path.write_text(text)
    return path


def test_files_land_in_a1111_folders_with_recorded_hashes(tmp_path, server):
    url, _ = server
    local = tmp_path / "emb.pt"
    local.write_bytes(b"embedding")
    manifest = write_manifest(tmp_path, f"""
[[checkpoints]]
source = "{url}/model.safetensors"
sha256 = "{sha(FILES['/model.safetensors'])}"
[[loras]]
source = "{url}/lora.safetensors"
[[embeddings]]
source = "{local}"
[[upscalers]]
source = "{local}"
name = "4x-tiny.pth"
folder = "RealESRGAN"
[[face_restoration]]
source = "{local}"
name = "GFPGANv1.4.pth"
[[face_restoration]]
source = "{local}"
name = "face_detection_yunet_2023mar.onnx"
folder = "FaceDetection"
""")
    models = tmp_path / "models"
    bake(read_manifest(manifest), models)
    assert (models / "Stable-diffusion/model.safetensors").read_bytes() == FILES["/model.safetensors"]
    assert (models / "Lora/lora.safetensors").read_bytes() == FILES["/lora.safetensors"]
    assert (models / "embeddings/emb.pt").read_bytes() == b"embedding"
    assert (models / "RealESRGAN/4x-tiny.pth").read_bytes() == b"embedding"
    assert (models / "GFPGAN/GFPGANv1.4.pth").read_bytes() == b"embedding"
    assert (models / "FaceDetection/face_detection_yunet_2023mar.onnx").read_bytes() == b"embedding"
    hashes = json.loads((models / "hashes.json").read_text())
    assert hashes["Stable-diffusion/model.safetensors"] == {"sha256": sha(FILES["/model.safetensors"]),
                                                            "size": len(FILES["/model.safetensors"])}
    assert hashes["Lora/lora.safetensors"] == {"sha256": sha(LORA), "size": len(LORA),  # addnet: A1111's LoRA hash
                                               "addnet": sha(b"lora " * 300)}
    assert not list(models.rglob(".*.part"))


def test_sha256_mismatch_is_an_error_that_keeps_nothing(tmp_path, server):
    url, _ = server
    manifest = write_manifest(tmp_path, f'[[checkpoints]]\nsource = "{url}/model.safetensors"\nsha256 = "{"0" * 64}"\n')
    models = tmp_path / "models"
    with pytest.raises(BakeError, match="model.safetensors: sha256 mismatch: expected 0000"):
        bake(read_manifest(manifest), models)
    assert list((models / "Stable-diffusion").iterdir()) == []


def test_rerun_skips_what_is_present(tmp_path, server):
    url, seen = server
    manifest = write_manifest(tmp_path, f"""[[checkpoints]]
source = "{url}/model.safetensors"
sha256 = "{sha(FILES['/model.safetensors'])}"
[[loras]]
source = "{url}/lora.safetensors"
""")
    models = tmp_path / "models"
    bake(read_manifest(manifest), models)
    assert len(seen) == 2
    bake(read_manifest(manifest), models)
    assert len(seen) == 2


def test_interrupted_download_resumes_with_a_range_request(tmp_path, server):
    url, seen = server
    data = FILES["/model.safetensors"]
    models = tmp_path / "models"
    (models / "Stable-diffusion").mkdir(parents=True)
    (models / "Stable-diffusion/.model.safetensors.part").write_bytes(data[:1000])
    manifest = write_manifest(tmp_path,
                              f'[[checkpoints]]\nsource = "{url}/model.safetensors"\nsha256 = "{sha(data)}"\n')
    bake(read_manifest(manifest), models)
    assert seen == [("/model.safetensors", "bytes=1000-", None)]
    assert (models / "Stable-diffusion/model.safetensors").read_bytes() == data


def test_token_is_sent_and_never_printed(tmp_path, server, monkeypatch, capsys):
    url, seen = server
    monkeypatch.setenv("CIVITAI_TOKEN", "tok-123")
    manifest = write_manifest(tmp_path, f"""[[checkpoints]]
source = "{url}/missing.safetensors"
token_env = "CIVITAI_TOKEN"
""")
    with pytest.raises(SystemExit) as exit_info:
        main(["--manifest", str(manifest), "--models-dir", str(tmp_path / "models")])
    assert "404" in str(exit_info.value) and "tok-123" not in str(exit_info.value)
    assert seen[0][2] == "Bearer tok-123"
    assert "tok-123" not in capsys.readouterr().err


def test_bad_manifest_is_a_clear_error(tmp_path):
    with pytest.raises(BakeError, match="unknown sections"):
        read_manifest(write_manifest(tmp_path, '[[models]]\nsource = "x"\n'))
    with pytest.raises(BakeError, match="has no source"):
        read_manifest(write_manifest(tmp_path, '[[checkpoints]]\nname = "x"\n'))


def test_start_up_uses_the_baked_hashes_without_reading_weights(tmp_path, models_dir, monkeypatch):
    """The tiny checkpoint baked from a local path: sd-models reports the recorded hash, unhashed."""
    source = models_dir / "Stable-diffusion" / "tiny-sd15.safetensors"
    manifest = write_manifest(tmp_path, f'[[checkpoints]]\nsource = "{source}"\n')
    baked = tmp_path / "baked"
    bake(read_manifest(manifest), baked)
    recorded = json.loads((baked / "hashes.json").read_text())["Stable-diffusion/tiny-sd15.safetensors"]["sha256"]
    assert recorded == sha(source.read_bytes())

    import engine.store.models_dir as models_dir_module

    monkeypatch.setattr(models_dir_module, "_sha256", lambda *a: pytest.fail("start-up hashed a weights file"))
    from engine.runtime import Engine
    from handler.router import route

    engine = Engine.start(models_dir=baked, device="cpu", dtype="float32")
    listed = route(engine, "GET", "sd-models", {})
    assert listed[0]["sha256"] == recorded and listed[0]["title"] == f"tiny-sd15.safetensors [{recorded[:10]}]"
    assert list_checkpoints(baked)[0].short_hash == recorded[:10]


def test_warm_up_runs_at_start_when_asked(models_dir, monkeypatch):
    from engine.runtime import Engine

    warmed = []
    monkeypatch.setattr(Engine, "warm_up", lambda self: warmed.append(self))
    monkeypatch.delenv("WORKER_WARMUP", raising=False)
    Engine.start(models_dir=models_dir, device="cpu", dtype="float32")
    assert warmed == []  # off by default on the CPU
    monkeypatch.setenv("WORKER_WARMUP", "1")
    engine = Engine.start(models_dir=models_dir, device="cpu", dtype="float32")
    assert warmed == [engine]


def test_warm_up_generates_one_tiny_image(engine, monkeypatch):
    calls = []
    hook = engine.model.unet.register_forward_hook(lambda *args: calls.append(args[1][0].shape))
    try:
        engine.warm_up()
    finally:
        hook.remove()
    assert len(calls) == 1 and tuple(calls[0][-2:]) == (8, 8)  # one step on a 64x64 image's latents


def test_a_styles_file_lands_as_styles_csv_where_the_worker_reads_it(tmp_path, monkeypatch):
    from engine.settings import Settings
    from engine.prompts.styles import StyleLibrary

    monkeypatch.delenv("WORKER_STYLES_FILE", raising=False)
    source = tmp_path / "my-styles.csv"
    source.write_text('name,prompt,negative_prompt\nnoir,"{prompt}, film noir",colour\n')
    manifest = write_manifest(tmp_path, f'[[styles]]\nsource = "{source}"\n')
    models = tmp_path / "models"
    bake(read_manifest(manifest), models)
    assert (models / "styles.csv").read_bytes() == source.read_bytes()
    assert json.loads((models / "hashes.json").read_text())["styles.csv"]["sha256"] == sha(source.read_bytes())
    assert StyleLibrary(Settings(models_dir=models).styles_path).listing() == [
        {"name": "noir", "prompt": "{prompt}, film noir", "negative_prompt": "colour"}]
    two = write_manifest(tmp_path, f'[[styles]]\nsource = "{source}"\n[[styles]]\nsource = "{source}"\n')
    with pytest.raises(BakeError, match="one entry"):
        read_manifest(two)


@pytest.mark.parametrize("weights", ["model.safetensors", "pytorch_model.bin"])
def test_an_interrogate_repo_lands_in_blip_as_a_folder_the_worker_loads(tmp_path, monkeypatch, weights):
    """hf://owner/repo under [[interrogate]]: the repo's configs, tokenizer and one copy of the weights (safetensors
    where the repo has them), from a stand-in hub holding the tiny BLIP and the copies not to fetch."""
    import huggingface_hub
    import numpy as np
    import torch
    from PIL import Image
    from safetensors.torch import load_file

    from engine.postprocess.interrogate import Interrogator
    from engine.tiny.blip import write_tiny_blip

    repo = write_tiny_blip(tmp_path / "hub")
    state = load_file(repo / "model.safetensors")
    torch.save(state, repo / "pytorch_model.bin")
    for decoy in ("tf_model.h5", "flax_model.msgpack", "README.md"):
        (repo / decoy).write_bytes(b"not fetched")
    (repo / ({"model.safetensors", "pytorch_model.bin"} - {weights}).pop()).unlink()
    fetched = []

    class Hub:
        def list_repo_files(self, repo_id):
            return sorted(path.name for path in repo.iterdir())

    def snapshot_download(repo_id, local_dir, allow_patterns, ignore_patterns=None):
        fetched.append(repo_id)
        for path in repo.iterdir():
            if any(fnmatch.fnmatch(path.name, pattern) for pattern in allow_patterns):
                shutil.copy(path, Path(local_dir) / path.name)

    monkeypatch.setattr(huggingface_hub, "HfApi", Hub)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    models = tmp_path / "models"
    bake(read_manifest(write_manifest(tmp_path, '[[interrogate]]\nsource = "hf://Salesforce/tiny-blip"\n')), models)
    folder = models / "BLIP" / "tiny-blip"
    assert fetched == ["Salesforce/tiny-blip"]
    assert sorted(path.name for path in folder.iterdir()) == sorted(
        path.name for path in repo.iterdir() if path.suffix in (".json", ".txt") or path.name == weights)
    assert json.loads((models / "hashes.json").read_text())["BLIP/tiny-blip"]["sha256"]
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8))
    caption = Interrogator(models, torch.device("cpu"), torch.float32).interrogate("clip", image)
    assert caption == Interrogator(tmp_path / "hub", torch.device("cpu"), torch.float32).interrogate("clip", image)


def test_controlnet_annotators_land_in_their_modules_folders(tmp_path, monkeypatch):
    """[[controlnet_annotators]]: a file (local, or hf://owner/repo/file from a stand-in hub) keeps its name in the
    folder `name`; an hf://owner/repo is a transformers folder named `name`. The worker then runs them."""
    import huggingface_hub
    import numpy as np
    import torch
    from PIL import Image

    from engine.controlnet.annotators import Annotators
    from engine.controlnet.preprocessors import find_preprocessor
    from engine.tiny.annotators import write_tiny_annotators

    hub = tmp_path / "hub"
    write_tiny_annotators(hub)
    source = hub / "ControlNetAnnotators"
    downloads, snapshots = [], []

    def hf_hub_download(repo_id, filename):
        downloads.append((repo_id, filename))
        return str(source / "lineart" / filename)

    def snapshot_download(repo_id, local_dir, allow_patterns, ignore_patterns=None):
        snapshots.append(repo_id)
        for path in (source / "midas").iterdir():
            if any(fnmatch.fnmatch(path.name, pattern) for pattern in allow_patterns):
                shutil.copy(path, Path(local_dir) / path.name)

    class Hub:
        def list_repo_files(self, repo_id):
            return sorted(path.name for path in (source / "midas").iterdir())

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", hf_hub_download)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    monkeypatch.setattr(huggingface_hub, "HfApi", Hub)
    manifest = write_manifest(tmp_path, f"""
[[controlnet_annotators]]
source = "{source / 'hed' / 'ControlNetHED.pth'}"
name = "hed"
[[controlnet_annotators]]
source = "hf://lllyasviel/Annotators/sk_model.pth"
name = "lineart"
[[controlnet_annotators]]
source = "hf://Intel/dpt-hybrid-midas"
name = "midas"
""")
    models = tmp_path / "models"
    bake(read_manifest(manifest), models)
    assert downloads == [("lllyasviel/Annotators", "sk_model.pth")] and snapshots == ["Intel/dpt-hybrid-midas"]
    hashes = json.loads((models / "hashes.json").read_text())
    for file in ("hed/ControlNetHED.pth", "lineart/sk_model.pth"):
        baked = (models / "ControlNetAnnotators" / file).read_bytes()
        assert baked == (source / file).read_bytes()
        assert hashes[f"ControlNetAnnotators/{file}"] == {"sha256": sha(baked), "size": len(baked)}
    assert hashes["ControlNetAnnotators/midas"]["sha256"]
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8))
    for module in ("softedge_hed", "lineart_realistic", "depth_midas"):
        ours, theirs = (Annotators(root, torch.device("cpu")).detector(find_preprocessor(module))
                        for root in (models, hub))
        assert np.array_equal(np.asarray(ours(image, 64, 0.5, 0.5)), np.asarray(theirs(image, 64, 0.5, 0.5)))


def test_a_controlnet_annotator_names_its_folder(tmp_path):
    manifest = write_manifest(tmp_path, '[[controlnet_annotators]]\nsource = "hf://lllyasviel/Annotators/x.pth"\n')
    with pytest.raises(BakeError, match=r"\[\[controlnet_annotators\]\] entry names its folder"):
        read_manifest(manifest)
