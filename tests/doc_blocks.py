"""Generated blocks in the docs: ``<!-- name: command -->`` ... ``<!-- /name -->``, read by the docs tests and
rewritten by their ``--write`` entry points."""

from __future__ import annotations

import re
import sys
from pathlib import Path


def pattern(name: str) -> re.Pattern[str]:
    """The block ``name``; group 1 is its content."""
    return re.compile(rf"<!-- {re.escape(name)}:[^\n]*-->\n(.*?)<!-- /{re.escape(name)} -->", re.DOTALL)


def read_block(path: Path, name: str) -> str:
    found = pattern(name).search(path.read_text())
    assert found, f"{path.name} has no <!-- {name} --> block"
    return found.group(1)


def write_block(path: Path, name: str, content: str) -> None:
    """Replace the block's content with ``content`` (exits if the block is missing)."""
    text = path.read_text()
    found = pattern(name).search(text)
    if not found:
        sys.exit(f"{path.name} has no <!-- {name} --> block")
    path.write_text(text[: found.start(1)] + content + text[found.end(1):])
