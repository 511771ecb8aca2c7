"""The wheel carries grammars/, templates/ and specs/ inside the package, and works away from the checkout."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    pytest.importorskip("hatchling", reason="building the wheel needs hatchling (pip install -e '.[test]')")
    out = tmp_path_factory.mktemp("wheel")
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                        "-w", str(out), str(ROOT)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    (path,) = out.glob("lstmdsl-*.whl")
    return path


def test_wheel_contents(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "lstmdsl/grammars/cell.lark" in names
    assert "lstmdsl/templates/pointwise.cu.j2" in names
    assert {f"lstmdsl/specs/{p.name}" for p in (ROOT / "specs").glob("*.cell")} <= names
    assert "lstmdsl/py.typed" in names
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "lstmdsl = lstmdsl.entry:entry" in zipfile.ZipFile(wheel).read(entry_points).decode()
    for template in (ROOT / "templates").rglob("*"):
        if template.is_file():
            assert f"lstmdsl/templates/{template.relative_to(ROOT / 'templates').as_posix()}" in names


def test_installed_wheel_runs_outside_the_checkout(wheel, tmp_path):
    target = tmp_path / "site"
    r = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target),
                        str(wheel)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    env = dict(os.environ, PYTHONPATH=str(target))
    r = subprocess.run([sys.executable, "-m", "lstmdsl", "check", "peephole"], capture_output=True, text=True,
                       env=env, cwd=tmp_path, timeout=120)
    assert r.returncode == 0, r.stderr
    assert str(target / "lstmdsl" / "specs" / "peephole.cell") in r.stdout
