"""Reader for masked-LM plain text (``text_lines``): one sentence or paragraph per line, as the Wikipedia
extracts come, into the mlm schema {"id", "text"}.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from .common import _lines, _nonempty


def read_text_lines(path: Path, lang: str | None = None) -> list[dict]:
    """Plain text for masked LM, one sentence or paragraph per line (Wikipedia extracts); blank lines are
    skipped and the line number is the id."""
    out = [{"id": str(n), "text": line.strip()} for n, line in _lines(path) if line.strip()]
    return _nonempty(out, path, what="non-blank lines")


READERS: dict[str, Callable[..., list[dict]]] = {"text_lines": read_text_lines}
FAMILY = "mlm"
