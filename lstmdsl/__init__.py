"""lstmdsl: LSTM variants written as equations, compiled to fast kernels.

    import lstmdsl
    layer = lstmdsl.compile("peephole", input_size=32, hidden_size=64)
    y, state = layer.forward(x)          # x: [T, B, 32] float32
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from .version import __version__

# The package's names load on first use (PEP 562), so that `import lstmdsl.entry` is cheap: the console script
# imports the CLI inside its Ctrl-C handler (lstmdsl/entry.py), and numpy and the compiler are most of the 0.1 s
if TYPE_CHECKING:
    from . import nn, optim
    from .api import Layer, Spec, compile, load, parse
    from .errors import BackendUnavailable, InputFileError, LstmdslError, SpecError, UsageError
    from .schedule import Schedule, parse_schedule

_WHERE = {"nn": "", "optim": "", "Layer": "api", "Spec": "api", "compile": "api", "load": "api", "parse": "api",
          "BackendUnavailable": "errors", "InputFileError": "errors", "LstmdslError": "errors",
          "SpecError": "errors", "UsageError": "errors", "Schedule": "schedule", "parse_schedule": "schedule"}

# the modules an eager `import lstmdsl` loaded (as it did until 2026-12): still attributes of the package, loaded
# on first use, for scripts that reach them as lstmdsl.resources, lstmdsl.reference, ...
_MODULES = ("api", "arrays", "cache", "errors", "files", "grad", "ir", "layer", "lower", "masks", "numpy_layer", "ops",
            "reference", "resources", "schedule", "sizes", "spec", "syntax")

__all__ = sorted(_WHERE) + ["__version__"]


def __getattr__(name: str):
    if name in _MODULES:
        value = importlib.import_module(f".{name}", __name__)
    elif name in _WHERE:
        value = importlib.import_module(f".{_WHERE[name] or name}", __name__)
        value = getattr(value, name) if _WHERE[name] else value
    else:
        raise AttributeError(f"module 'lstmdsl' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_WHERE) | set(_MODULES))
