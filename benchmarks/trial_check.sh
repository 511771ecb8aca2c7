#!/usr/bin/env bash
# A trial's GPU check: a branch's work kept as a patch (benchmarks/trials/NAME.patch, staged with HEAD by
# benchmarks/stage_branch.sh into _br/NAME), its GPU tests, cuDNN's times at the A/B's shapes (`lstmdsl bench
# vanilla`, HEAD's tree, without torch.compile) and benchmarks/ab_small.py of the trial's tree under `persistent` against HEAD's
# (_br/HEAD) under the default `persistent auto` and under `persistent`, by trial:
#     bash benchmarks/trial_check.sh NAME [tests|ab]   # both (default), or one: each part fits one device call
#   fp32-3xtf32  fp32's persistent products as 3xTF32 and tf32's as tf32, on the tensor cores: the persistent and
#                tf32 GPU tests (352); FGR and vanilla in fp32 and tf32; where _br/fp32-3xtf32-fwd is staged too (the
#                trial with its backward on the FMA tiles: benchmarks/trials/README.md), each A/B times it as well
#                (four trees: give AB_S=240)
#   tile-4x8     fp32's 4 x 8 product tiles: the persistent tests; FGR and vanilla in fp32
#   balanced-chunks  batch rows staged in the chunks that take the fewest product tiles: the persistent tests;
#                FGR in fp32 and bf16, vanilla's backward (training) in fp32 and bf16 where it chunks
# Stage first, on this machine: bash benchmarks/stage_branch.sh benchmarks/trials/NAME.patch && mkdir -p _br/HEAD &&
# git archive HEAD lstmdsl specs grammars templates | tar -x -C _br/HEAD; on the device tool's machine carry .whl
# and _br. Time limits: TESTS_S (default 300 s), AB_S (150 s an A/B). Delete _br/ after.
# Both parts in one call with a smaller selection: TESTS_K=... TESTS_S=... RUNS=... bash benchmarks/trial_check.sh NAME
set -u
cd "$(dirname "$0")/.."
trial=${1:?usage: bash benchmarks/trial_check.sh NAME [tests|ab]}
part=${2:-all}
[ -d "_br/$trial" ] && [ -d _br/HEAD ] || { echo "stage _br/$trial and _br/HEAD first (see the header)" >&2; exit 64; }
case "$trial" in  # the GPU tests (-k), and the A/B runs: "spec|precision|shapes"
  fp32-3xtf32) tests="persistent or tf32"
               runs=("fgr|fp32|16x512 64x512" "vanilla|fp32|1x512 16x512 64x512" "fgr|tf32|16x512 64x512") ;;
  tile-4x8)    tests="persistent"
               runs=("fgr|fp32|16x512 64x256 64x512" "vanilla|fp32|16x512 32x512 64x512") ;;
  balanced-chunks) tests="persistent"
               runs=("fgr|fp32|16x512 64x512" "fgr|bf16|64x512 16x1024" "vanilla|fp32|64x512 16x1024"
                     "vanilla|bf16|64x512") ;;
  *) echo "no check for the trial '$trial'" >&2; exit 64 ;;
esac
tests=${TESTS_K:-$tests}  # (TESTS_K: another selection; RUNS: other A/B runs, "spec|precision|shapes;...")
[ -n "${RUNS:-}" ] && IFS=';' read -r -a runs <<< "$RUNS"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site LSTMDSL_CACHE=/tmp/lstmdsl-gpu-check-cache PYTHONUNBUFFERED=1
t0=$SECONDS
if [ "$part" != ab ]; then
  ( cd "_br/$trial" && PYTHONPATH=/tmp/site:$PWD LSTMDSL_TEST_CACHE=$LSTMDSL_CACHE timeout "${TESTS_S:-300}" \
      python3 -m pytest -q -p no:cacheprovider tests/test_gpu.py -k "$tests" -n 14 --maxfail 20 2>&1 | tail -12 )
  echo "tests: $((SECONDS - t0)) s"
fi
[ "$part" = tests ] && exit 0
for run in "${runs[@]}"; do  # cuDNN's vanilla LSTM at each precision and shape of the runs, once
  IFS='|' read -r _ precision shapes <<< "$run"
  for shape in $shapes; do echo "$precision ${shape%x*} ${shape#*x}"; done
done | sort -u | while read -r precision B H; do
  PYTHONPATH=/tmp/site:$PWD/_br/HEAD timeout 120 python3 -m lstmdsl bench vanilla -B "$B" -H "$H" \
    --precision "$precision" --no-compile 2>&1 | grep -E "^  (forward|train) +(cudnn|lstmdsl) |rror" |
    sed "s/^/$precision ${B}x$H:/"
done
for run in "${runs[@]}"; do
  IFS='|' read -r spec precision shapes <<< "$run"
  also=()  # (a variant of the trial staged beside it, timed as a fourth tree)
  [ -d "_br/$trial-fwd" ] && also=("$PWD/_br/$trial-fwd" "precision $precision; persistent")
  echo "== $spec, precision $precision: HEAD auto | HEAD persistent | the trial persistent${also:+ | $trial-fwd}" \
    "(ratios to HEAD auto)"
  timeout "${AB_S:-150}" python3 benchmarks/ab_small.py "$PWD/_br/HEAD" "$PWD/_br/HEAD" "$PWD/_br/$trial" \
    ${also:+"${also[0]}"} --spec "$spec" --schedules "precision $precision" "precision $precision; persistent" \
    "precision $precision; persistent" ${also:+"${also[1]}"} --shapes $shapes 2>&1 | tail -8
  echo "A/B: $((SECONDS - t0)) s"
done
