"""lstmdsl: LSTM variants written as equations, compiled to fast kernels.

    import lstmdsl
    layer = lstmdsl.compile("peephole", input_size=32, hidden_size=64)
    y, state = layer.forward(x)          # x: [T, B, 32] float32
"""

import importlib as _importlib
from typing import TYPE_CHECKING

from .version import __version__

# The package's names load on first use (PEP 562), so that `import lstmdsl.entry` is cheap: the console script
# imports the CLI inside its Ctrl-C handler (lstmdsl/entry.py), and numpy and the compiler are most of the 0.1 s.
# Type checkers read the imports below (`X as X`: exported) and the literal __all__.
if TYPE_CHECKING:
    from . import (api as api, arrays as arrays, cache as cache, errors as errors, files as files, grad as grad,
                   ir as ir, layer as layer, lower as lower, masks as masks, nn as nn, numpy_layer as numpy_layer,
                   ops as ops, optim as optim, reference as reference, resources as resources, schedule as schedule,
                   sizes as sizes, spec as spec, syntax as syntax)
    from .api import Layer as Layer, Spec as Spec, compile as compile, load as load, parse as parse
    from .errors import (BackendUnavailable as BackendUnavailable, InputFileError as InputFileError,
                         LstmdslError as LstmdslError, SpecError as SpecError, SpecWarning as SpecWarning,
                         UsageError as UsageError)
    from .schedule import Schedule as Schedule, parse_schedule as parse_schedule

__all__ = ["BackendUnavailable", "InputFileError", "Layer", "LstmdslError", "Schedule", "Spec", "SpecError",
           "SpecWarning", "UsageError", "compile", "load", "nn", "optim", "parse", "parse_schedule", "__version__"]

_WHERE = {"nn": "", "optim": "", "Layer": "api", "Spec": "api", "compile": "api", "load": "api", "parse": "api",
          "BackendUnavailable": "errors", "InputFileError": "errors", "LstmdslError": "errors",
          "SpecError": "errors", "SpecWarning": "errors", "UsageError": "errors", "Schedule": "schedule", "parse_schedule": "schedule"}
# the modules an eager `import lstmdsl` loaded (as it did until 2026-12): still attributes of the package, loaded
# on first use, for scripts that reach them as lstmdsl.resources, lstmdsl.reference, ...
_MODULES = ("api", "arrays", "cache", "errors", "files", "grad", "ir", "layer", "lower", "masks", "numpy_layer", "ops",
            "reference", "resources", "schedule", "sizes", "spec", "syntax")


def __getattr__(name: str) -> object:
    if name in _MODULES:
        value = _importlib.import_module(f".{name}", __name__)
    elif name in _WHERE:
        value = _importlib.import_module(f".{_WHERE[name] or name}", __name__)
        value = getattr(value, name) if _WHERE[name] else value
    else:
        raise AttributeError(f"module 'lstmdsl' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(__all__) | set(_MODULES) | {n for n in globals() if n.startswith("__") and n.endswith("__")})
