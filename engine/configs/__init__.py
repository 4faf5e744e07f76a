"""Model configs shipped with the package, so that no checkpoint load ever fetches one."""

from pathlib import Path

CONFIGS_DIR = Path(__file__).parent
CLIP_TOKENIZER_DIR = CONFIGS_DIR / "clip-tokenizer"  # openai/clip-vit-large-patch14's vocabulary


def architecture_dir(architecture: str) -> Path:
    return CONFIGS_DIR / architecture
