"""The package's module structure: no import cycle inside lstmdsl/, CuPy and torch imported only when
asked for, and no module far over the size the style guide keeps to."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "lstmdsl"


def import_graph() -> dict[str, set[str]]:
    """Module -> the lstmdsl modules it imports (at any depth of the file: lazy imports count too)."""
    mods = {}
    for p in PACKAGE.rglob("*.py"):
        name = ".".join(p.relative_to(PACKAGE.parent).with_suffix("").parts)
        mods[name.removesuffix(".__init__")] = p
    edges = {m: set() for m in mods}
    for m, p in mods.items():
        pkg = m if p.name == "__init__.py" else m.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    parts = pkg.split(".")
                    base = ".".join(parts[:len(parts) - (node.level - 1)])
                    target = f"{base}.{node.module}" if node.module else base
                else:
                    target = node.module or ""
                candidates = [target] + [f"{target}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                candidates = [a.name for a in node.names]
            else:
                continue
            edges[m] |= {c for c in candidates if c in mods and c not in (m, "lstmdsl")}
    return edges


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    state, path = {}, []

    def visit(u):
        state[u] = 1
        path.append(u)
        for v in sorted(edges[u]):
            if state.get(v) == 1:
                return path[path.index(v):] + [v]
            if v not in state:
                found = visit(v)
                if found:
                    return found
        state[u] = 2
        path.pop()
        return None

    for m in sorted(edges):
        if m not in state:
            found = visit(m)
            if found:
                return found
    return None


def test_no_import_cycle_inside_the_package():
    cycle = find_cycle(import_graph())
    assert cycle is None, " -> ".join(cycle)


def test_the_cycle_finder_finds_cycles():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_importing_lstmdsl_imports_neither_cupy_nor_torch():
    code = "import sys, lstmdsl, lstmdsl.cli; print(sorted(m for m in ('cupy', 'torch', 'jinja2') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_modules_stay_small():
    sizes = {str(p.relative_to(PACKAGE)): len(p.read_text().splitlines()) for p in PACKAGE.rglob("*.py")}  # (by path: two layer.py)
    big = {name: n for name, n in sizes.items() if n > 450}
    assert not big, f"modules over 450 lines: {big}"


def test_the_lazy_package_declares_its_names_for_type_checkers():
    """lstmdsl/__init__.py loads its names on first use (PEP 562); type checkers read the TYPE_CHECKING imports
    (`X as X`, so exported) and a literal __all__: each lazy name is declared there, and nothing else is."""
    import lstmdsl

    tree = ast.parse((PACKAGE / "__init__.py").read_text())
    all_node = next(n for n in tree.body if isinstance(n, ast.Assign) and n.targets[0].id == "__all__")
    names = ast.literal_eval(all_node.value)  # (a literal list: what mypy reads)
    guarded = next(n for n in tree.body if isinstance(n, ast.If) and "TYPE_CHECKING" in ast.unparse(n.test))
    declared = {a.asname for n in guarded.body for a in n.names}
    assert all(a.asname == a.name for n in guarded.body for a in n.names)
    assert declared == set(lstmdsl._WHERE) | set(lstmdsl._MODULES)
    assert set(names) == set(lstmdsl._WHERE) | {"__version__"}
    assert all(getattr(lstmdsl, name) is not None for name in names)
