"""Where the data files live: grammars/, templates/ and specs/.

In a source checkout they sit at the top of the repository, next to the package; the wheel carries them
inside the package (pyproject.toml maps them there). One function finds them in either layout.
"""

from __future__ import annotations

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent


def resource_dir(name: str) -> Path:
    """The folder `name` ("grammars", "templates" or "specs") of this installation."""
    for candidate in (_PACKAGE / name, _PACKAGE.parent / name):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(
        f"lstmdsl is installed without its '{name}' folder (looked in {_PACKAGE} and {_PACKAGE.parent}); "
        "reinstall the package")


def shipped_specs() -> dict[str, Path]:
    """Name -> path of every spec shipped with lstmdsl (specs/*.cell)."""
    return {p.stem: p for p in sorted(resource_dir("specs").glob("*.cell"))}
