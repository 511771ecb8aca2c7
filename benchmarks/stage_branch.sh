#!/usr/bin/env bash
# Stage a branch's tree for a GPU run beside the checkout's own: `bash benchmarks/stage_branch.sh BRANCH` writes
# `git archive BRANCH` into _br/BRANCH (untracked, so the device tool carries it with the working tree), and the
# device command then runs the branch's check from there, e.g.
#     cd _br/BRANCH && NO_SANITIZERS=1 JOBS=14 NO_GRID=1 bash benchmarks/gpu_check.sh
# (gpu_check.sh installs lark from the checkout's .whl, two levels up, when the staged tree has none). Delete
# _br/ after the run: it is not the checkout's and `git status` lists it.
#
# A trial kept as a patch (benchmarks/trials/NAME.patch: a branch's work that has not run on a GPU yet, kept in the
# repository because a new checkout may not have the branch): `bash benchmarks/stage_branch.sh
# benchmarks/trials/NAME.patch` stages HEAD with the patch applied in _br/NAME.
set -eu
cd "$(dirname "$0")/.."
branch=${1:?usage: bash benchmarks/stage_branch.sh BRANCH | benchmarks/trials/NAME.patch}
patch=
if [ -f "$branch" ] && [ "${branch%.patch}" != "$branch" ]; then  # a trial: HEAD with the patch applied
  patch=$branch
  rev=HEAD
  dest="_br/$(basename "${branch%.patch}")"
else
  git rev-parse --verify -q "$branch^{commit}" > /dev/null || { echo "no branch or commit '$branch'" >&2; exit 64; }
  rev=$branch
  dest="_br/${branch//\//_}"
fi
rm -rf "$dest"
mkdir -p "$dest"
git archive "$rev" | tar -x -C "$dest"
if [ -n "$patch" ]; then
  # (from the repository's root, into the staged tree: run inside it, git apply skips every path outside)
  git apply --directory="$dest" "$patch" || { echo "the patch $branch does not apply to HEAD" >&2; exit 65; }
  echo "staged HEAD ($(git rev-parse --short HEAD)) with $branch in $dest"
else
  echo "staged $branch ($(git rev-parse --short "$branch")) in $dest"
fi
