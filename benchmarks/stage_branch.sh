#!/usr/bin/env bash
# Stage a branch's tree for a GPU run beside the checkout's own: `bash benchmarks/stage_branch.sh BRANCH` writes
# `git archive BRANCH` into _br/BRANCH (untracked, so the device tool carries it with the working tree), and the
# device command then runs the branch's check from there, e.g.
#     cd _br/BRANCH && NO_SANITIZERS=1 JOBS=14 NO_GRID=1 bash benchmarks/gpu_check.sh
# (gpu_check.sh installs lark from the checkout's .whl, two levels up, when the staged tree has none). Delete
# _br/ after the run: it is not the checkout's and `git status` lists it.
set -eu
cd "$(dirname "$0")/.."
branch=${1:?usage: bash benchmarks/stage_branch.sh BRANCH}
git rev-parse --verify -q "$branch^{commit}" > /dev/null || { echo "no branch or commit '$branch'" >&2; exit 64; }
dest="_br/${branch//\//_}"
rm -rf "$dest"
mkdir -p "$dest"
git archive "$branch" | tar -x -C "$dest"
echo "staged $branch ($(git rev-parse --short "$branch")) in $dest"
