"""Interrogation (A1111's /sdapi/v1/interrogate): a caption of an image.

Model "clip" is A1111's BLIP caption: a BLIP captioner from the models directory's BLIP/ folder (a folder in
transformers' save_pretrained layout, such as the bake writes from hf://Salesforce/blip-image-captioning-base),
loaded on first use and kept, never fetched. It continues A1111's BLIP prompt "a picture of" with greedy search
and A1111's default lengths, and the prompt is cut from the caption, as in A1111. A1111 then appends terms
(artists, flavors, mediums, movements) ranked by a CLIP model; this worker does not (README, deliberate
differences). Model "deepdanbooru" (A1111's anime tagger, a network of A1111's own) is not offered.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from PIL import Image

from schemas import RequestError

from ..faults import reraise_server_fault
from ..store.models_dir import describe_error

if TYPE_CHECKING:
    from transformers import BlipForConditionalGeneration, BlipProcessor

BLIP_SUBDIR = "BLIP"
BLIP_SOURCE = "hf://Salesforce/blip-image-captioning-base"  # the captioner the image bakes (models.toml)
PROMPT = "a picture of"  # the prompt A1111's BLIP decoder continues
# A1111's defaults of the options interrogate_clip_num_beams, interrogate_clip_min_length, _max_length (in
# tokens, the prompt's included, as BLIP counts them)
NUM_BEAMS, MIN_LENGTH, MAX_LENGTH = 1, 24, 48
FIELD = "model"  # the request field errors name: the interrogation model asked for


@dataclass(frozen=True)
class Captioner:
    """A loaded BLIP captioner: image -> caption."""

    model: BlipForConditionalGeneration
    processor: BlipProcessor

    def __call__(self, image: Image.Image) -> str:
        inputs = self.processor(images=image.convert("RGB"), text=PROMPT, return_tensors="pt")
        pixels = inputs["pixel_values"].to(self.model.device, self.model.dtype)
        prompt = inputs["input_ids"].to(self.model.device)
        with torch.inference_mode():
            tokens = self.model.generate(pixel_values=pixels, input_ids=prompt, num_beams=NUM_BEAMS,
                                         do_sample=False, min_length=MIN_LENGTH, max_length=MAX_LENGTH)
        # the output starts with the prompt, less the [SEP] that ended it (generate drops it)
        return self.processor.decode(tokens[0, prompt.shape[1] - 1:], skip_special_tokens=True).strip()


class Interrogator:
    """The interrogation models a worker offers; the BLIP captioner is loaded on first use and kept."""

    def __init__(self, models_dir: Path, device: torch.device, dtype: torch.dtype):
        self.models_dir, self.device, self.dtype = models_dir, device, dtype
        self._captioner: tuple[Path, Captioner] | None = None

    def blip_folder(self) -> Path | None:
        """The first folder (by name) under BLIP/ that holds a transformers config."""
        root = self.models_dir / BLIP_SUBDIR
        folders = sorted(root.iterdir(), key=lambda p: p.name.lower()) if root.is_dir() else []
        return next((folder for folder in folders if (folder / "config.json").is_file()), None)

    def interrogate(self, model: str, image: Image.Image) -> str:
        """The caption `model` (A1111's name: "clip" or "deepdanbooru") gives the image."""
        if model == "deepdanbooru":
            raise RequestError(FIELD, "'deepdanbooru' is not offered by this worker (A1111's DeepDanbooru tagger "
                                      "is a network of its own, with no maintained package); use 'clip', a BLIP "
                                      "caption")
        return self.captioner()(image)

    def captioner(self) -> Captioner:
        folder = self.blip_folder()
        if folder is None:
            raise RequestError(FIELD, f"interrogation with 'clip' needs a BLIP captioner, a folder {BLIP_SUBDIR}/"
                                      f"<name>/ in transformers' layout (bake {BLIP_SOURCE} with an [[interrogate]]"
                                      f" entry), in the models directory ({self.models_dir}), which has none")
        if self._captioner is None or self._captioner[0] != folder:
            self._captioner = folder, _load_captioner(folder, self.device, self.dtype)
        return self._captioner[1]

    def unload(self) -> None:
        self._captioner = None


def _load_captioner(folder: Path, device: torch.device, dtype: torch.dtype) -> Captioner:
    """The folder's model and processor, from its files only."""
    from transformers import BlipForConditionalGeneration, BlipProcessor

    try:
        model: Any = BlipForConditionalGeneration.from_pretrained(folder, local_files_only=True)
        processor = BlipProcessor.from_pretrained(folder, local_files_only=True)
    except Exception as error:  # OSError for missing files, ValueError and others for files it can't read
        reraise_server_fault(error)
        raise RequestError(FIELD, f"the BLIP captioner {BLIP_SUBDIR}/{folder.name} can't be loaded: "
                                  f"{describe_error(error)}") from None
    return Captioner(model.to(device, dtype).eval(), processor)
