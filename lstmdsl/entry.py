"""The console script `lstmdsl`: the CLI is imported inside the Ctrl-C handler, so an interrupt while the
package loads (numpy, the compiler: about 0.1 s) exits 130 quietly, as one during a command does, not with a
KeyboardInterrupt traceback."""

from __future__ import annotations

import sys


def entry() -> None:
    try:
        from .cli import main
    except KeyboardInterrupt:
        sys.exit(130)
    sys.exit(main())
