"""A benchmark's result as JSON with its markdown table beside it (written atomically, lstmdsl.files), for
the scripts that print one table: bidirectional.py, regularisers.py and fanout.py."""

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


def output_options(ap) -> None:
    """The options every such script takes: where to write the result, or a result to render again."""
    ap.add_argument("--json", help="write the result here (and its table beside it, .md)")
    ap.add_argument("--render", metavar="JSON", help="only write the table of a result written before (no GPU)")


def finish(result: dict, args, markdown) -> None:
    """The table printed, and the result written where --json says."""
    print(markdown(result))
    if args.json:
        write(result, args.json, markdown)
