"""Size inference for lower.py: union-find over size variables (one per value, parameter vector, matrix
row and column), where a class may be fixed to one of the symbolic sizes. A conflict is reported as a
diagnostic through the problems object it is given."""

from __future__ import annotations

from .errors import Span


class Sizes:
    """Union-find over size variables; a class may be fixed to one of SIZES. Conflicts are reported."""

    def __init__(self, problems):
        self.parent: dict[str, str] = {}
        self.fixed: dict[str, str] = {}
        self.problems = problems

    def var(self, key: str, fixed: str | None = None) -> str:
        if key not in self.parent:
            self.parent[key] = key
        if fixed is not None:
            self.fixed.setdefault(self.find(key), fixed)
        return key

    def find(self, key: str) -> str:
        while self.parent[key] != key:
            self.parent[key] = self.parent[self.parent[key]]
            key = self.parent[key]
        return key

    def value(self, key: str) -> str | None:
        return self.fixed.get(self.find(key))

    def unify(self, a: str, b: str, span: Span, what: str, sides: tuple[str, str]) -> bool:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return True
        fa, fb = self.fixed.get(ra), self.fixed.get(rb)
        if fa and fb and fa != fb:
            self.problems.error(f"size mismatch in {what}: {sides[0]} of size {fa}, {sides[1]} of size {fb}",
                                span, "sizes are symbolic: input, hidden and proj never match each other")
            return False
        self.parent[rb] = ra
        if fb and not fa:
            self.fixed[ra] = fb
        return True
