"""A benchmark's result as JSON with its markdown table beside it (written atomically, lstmdsl.files), for
the scripts that print one table: bidirectional.py and regularisers.py."""

from __future__ import annotations

import json

from lstmdsl.files import write_json, write_text


def write(result: dict, path: str, markdown) -> None:
    """result as JSON at path, and markdown(result) beside it (.md)."""
    write_json(path, result)
    write_text(path.removesuffix(".json") + ".md", markdown(result) + "\n")


def render(path: str, markdown) -> None:
    """The table of a result written before, again (no GPU needed)."""
    with open(path) as f:
        write(json.load(f), path, markdown)
