"""Write a tiny random BLIP captioner for /sdapi/v1/interrogate, for tests and the demo.

    python -m engine.tiny.blip --models-dir DIR

writes DIR/BLIP/tiny-blip/ in transformers' save_pretrained layout, as the bake writes
Salesforce/blip-image-captioning-base: a BlipForConditionalGeneration at tiny widths (32 x 32 images), and a
BlipProcessor whose BERT tokenizer knows a few dozen caption words. Weights come from a fixed seed: the
folder is the same on every run. Its captions are random words, as many as the shortest caption allowed, that
change with the image.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from transformers import BertTokenizer, BlipConfig, BlipForConditionalGeneration, BlipImageProcessor, BlipProcessor

from ..postprocess.interrogate import BLIP_SUBDIR

NAME = "tiny-blip"
SEED = 1234
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
WORDS = ("a picture of photo painting drawing cat dog man woman child bird horse red blue green yellow white "
         "black sitting standing walking on in the with and at table street tree sky house car field water "
         "beach mountain city room window flowers").split()
DECODER_START = "[DEC]"  # BLIP's bos token: the text decoder starts every caption with it
WIDTH = 32
IMAGE_SIZE = 32
# std of the random weights: large in the vision tower, so that the image, not the decoder's biases, picks the words
VISION_INIT, TEXT_INIT = 1.0, 0.2


def tiny_blip_config(vocabulary: list[str]) -> BlipConfig:
    ids = {token: index for index, token in enumerate(vocabulary)}
    layers = {"hidden_size": WIDTH, "intermediate_size": 2 * WIDTH, "num_hidden_layers": 2, "num_attention_heads": 2}
    return BlipConfig(
        text_config={**layers, "vocab_size": len(vocabulary), "max_position_embeddings": 64,
                     "bos_token_id": ids[DECODER_START], "eos_token_id": ids["[SEP]"], "sep_token_id": ids["[SEP]"],
                     "pad_token_id": ids["[PAD]"], "initializer_range": TEXT_INIT},
        vision_config={**layers, "image_size": IMAGE_SIZE, "patch_size": 8, "initializer_range": VISION_INIT},
        projection_dim=WIDTH, image_text_hidden_size=WIDTH)


def write_tiny_blip(models_dir: Path, name: str = NAME) -> Path:
    """models_dir/BLIP/<name>/: the model, its processor and the vocabulary."""
    folder = Path(models_dir) / BLIP_SUBDIR / name
    folder.mkdir(parents=True, exist_ok=True)
    vocabulary = [*SPECIAL, *WORDS, DECODER_START]
    vocab_file = folder / "vocab.txt"
    vocab_file.write_text("\n".join(vocabulary) + "\n")
    torch.manual_seed(SEED)
    model = BlipForConditionalGeneration(tiny_blip_config(vocabulary)).eval()
    with torch.no_grad():  # captions of words only, ending ([SEP]) as soon as they may: MIN_LENGTH tokens
        bias = model.text_decoder.cls.predictions.bias
        bias[[vocabulary.index(token) for token in [*SPECIAL, DECODER_START] if token != "[SEP]"]] = -1e4
        bias[vocabulary.index("[SEP]")] = 1e4
    model.save_pretrained(folder)
    tokenizer = BertTokenizer(str(vocab_file), bos_token=DECODER_START)
    image_processor = BlipImageProcessor(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})
    BlipProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(folder)
    return folder


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models-dir", type=Path, required=True)
    parser.add_argument("--name", default=NAME, help=f"folder name under BLIP/ (default: {NAME})")
    args = parser.parse_args(argv)
    print(write_tiny_blip(args.models_dir, args.name))


if __name__ == "__main__":
    main()
