"""A1111's prompt styles: the rows of a styles.csv, and how a style's text is merged into a prompt.

A style has a name, a prompt and a negative prompt. Applied to a request, each style's prompt is merged
into the prompt and its negative prompt into the negative prompt, in the order the request names them:
a style text holding `{prompt}` has the prompt put in its place, any other is appended after ", ".
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

PLACEHOLDER = "{prompt}"
COLUMNS = ("name", "prompt", "negative_prompt")


@dataclass(frozen=True)
class PromptStyle:
    name: str
    prompt: str
    negative_prompt: str


def parse_styles_csv(lines: Iterable[str]) -> dict[str, PromptStyle]:
    """The styles of a styles.csv (its lines, BOM removed), by name in file order, read as A1111 reads them:
    columns `name`, `prompt` (or the older `text`) and `negative_prompt`, a space after a comma skipped,
    rows whose name is empty or starts with `#` left out, and a name given twice taking its last row.

    Raises ValueError when there is no `name` column, csv.Error when the file is not CSV.
    """
    reader = csv.DictReader(lines, skipinitialspace=True)
    if "name" not in (reader.fieldnames or ()):
        raise ValueError(f"no 'name' column (the first row must name the columns {', '.join(COLUMNS)})")
    styles: dict[str, PromptStyle] = {}
    for row in reader:
        name = row["name"] or ""
        if name and not name.startswith("#"):
            prompt = row["prompt"] if "prompt" in row else row.get("text")
            styles[name] = PromptStyle(name, prompt or "", row.get("negative_prompt") or "")
    return styles


def merge_prompt(style_text: str, prompt: str) -> str:
    """One style's text merged into a prompt."""
    if PLACEHOLDER in style_text:
        return style_text.replace(PLACEHOLDER, prompt)
    return ", ".join(part for part in (prompt.strip(), style_text.strip()) if part)


def apply_styles(prompt: str, style_texts: Sequence[str]) -> str:
    """The prompt with each style text merged into it, in order."""
    for text in style_texts:
        prompt = merge_prompt(text, prompt)
    return prompt
