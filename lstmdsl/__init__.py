"""lstmdsl: LSTM variants written as equations, compiled to fast kernels.

    import lstmdsl
    layer = lstmdsl.compile("peephole", input_size=32, hidden_size=64)
    y, state = layer.forward(x)          # x: [T, B, 32] float32
"""

from . import nn, optim
from .api import Layer, Spec, compile, load, parse
from .errors import (BackendUnavailable, InputFileError, LstmdslError, SpecError, UsageError)
from .schedule import Schedule, parse_schedule
from .version import __version__

__all__ = ["BackendUnavailable", "InputFileError", "Layer", "LstmdslError", "Schedule", "Spec", "SpecError",
           "UsageError", "compile", "load", "nn", "optim", "parse", "parse_schedule", "__version__"]
