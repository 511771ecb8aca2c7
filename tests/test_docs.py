"""The committed docs that are generated: docs/language.md is what docs/language.md.in makes when every
example runs through the checkout's lstmdsl (docs/build_language.py). An edit made to the .md alone is lost at
the next rebuild (the tenth session's paragraph on the fast sigmoid and tanh was); this catches it. (The
performance page's own check is in test_report.py.)"""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_language_reference_is_what_its_source_makes():
    r = subprocess.run([sys.executable, str(ROOT / "docs" / "build_language.py"), "--check"], capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
