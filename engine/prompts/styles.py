"""The prompt styles file: A1111's styles.csv, `$MODELS_DIR/styles.csv` unless WORKER_STYLES_FILE names
another (read once, at start). The file is read at start and again whenever it changed (its modification
time or size), checked each time styles are listed or looked up, so an edited file applies to the next
request. A missing file means no styles, as in A1111; one that can't be read is logged and offers none.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from schemas import RequestError
from schemas.errors import quoted
from schemas.styles import PromptStyle, parse_styles_csv


log = logging.getLogger(__name__)


class StyleLibrary:
    def __init__(self, path: Path):
        self.path = path
        # (the file's (mtime, size) when read, or None when absent; its styles; why it could not be read)
        self._state: tuple[tuple[int, int] | None, dict[str, PromptStyle], str | None] = (None, {}, None)
        self._read_if_changed()

    def listing(self) -> list[dict[str, Any]]:
        """Items of A1111's /sdapi/v1/prompt-styles: [{name, prompt, negative_prompt}], in file order."""
        return [{"name": s.name, "prompt": s.prompt, "negative_prompt": s.negative_prompt}
                for s in self._read_if_changed().values()]

    def find(self, names: Sequence[str], field: str = "styles") -> list[PromptStyle]:
        """The styles called `names`, in that order; an unknown name is a RequestError naming `field`."""
        if not names:
            return []
        styles = self._read_if_changed()
        found = []
        for name in names:
            if name not in styles:
                raise RequestError(field, f"unknown style {quoted(name)}; {self._what_there_is()}")
            found.append(styles[name])
        return found

    def _what_there_is(self) -> str:
        stamp, styles, problem = self._state
        if problem:
            return f"the styles file {self.path} could not be read: {problem}"
        if stamp is None:
            return f"there is no styles file ({self.path}; WORKER_STYLES_FILE names another)"
        return f"{self.path} has {len(styles)} styles; GET /sdapi/v1/prompt-styles lists them"

    def _read_if_changed(self) -> dict[str, PromptStyle]:
        try:
            stat = self.path.stat()
            stamp = (stat.st_mtime_ns, stat.st_size)
        except FileNotFoundError:
            stamp = None
        if stamp != self._state[0]:
            self._state = (stamp, *self._read()) if stamp else (None, {}, None)
        return self._state[1]

    def _read(self) -> tuple[dict[str, PromptStyle], str | None]:
        """The file's styles and no problem, or none and why."""
        try:
            with self.path.open(encoding="utf-8-sig", newline="") as lines:
                return parse_styles_csv(lines), None
        except (OSError, UnicodeDecodeError, csv.Error, ValueError) as error:
            log.warning("styles file %s could not be read: %s", self.path, error)
            return {}, str(error)
