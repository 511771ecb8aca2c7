"""The trials kept as patches (benchmarks/trials/*.patch: runtime changes waiting for a GPU) still apply to HEAD's
tree, so a later session can stage and check them (benchmarks/stage_branch.sh, benchmarks/trial_check.sh)."""
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PATCHES = sorted((ROOT / "benchmarks" / "trials").glob("*.patch"))


@pytest.mark.skipif(shutil.which("git") is None or not (ROOT / ".git").exists(), reason="needs git and the repository")
@pytest.mark.parametrize("patch", PATCHES, ids=[p.stem for p in PATCHES])
def test_a_trial_patch_applies_to_the_tree(patch):
    r = subprocess.run(["git", "apply", "--check", str(patch)], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, f"{patch.name} no longer applies: refresh it from its branch or drop it\n{r.stderr}"
