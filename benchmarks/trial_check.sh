#!/usr/bin/env bash
# A trial's GPU check in one device call: a branch's work kept as a patch (benchmarks/trials/NAME.patch, staged
# with HEAD by benchmarks/stage_branch.sh into _br/NAME), its GPU tests, cuDNN's times at the A/B's shapes
# (benchmarks/probe_cudnn_small.py) and benchmarks/ab_small.py against HEAD's tree (_br/HEAD), by trial:
#     bash benchmarks/trial_check.sh tf32-mma   # precision tf32's persistent products on the tensor cores: its
#                                               # tf32 tests; FGR and vanilla, HEAD under auto and persistent
#                                               # against the trial under persistent
#     bash benchmarks/trial_check.sh tile-4x8   # fp32's 4 x 8 product tiles: the persistent tests; FGR and vanilla
#                                               # under persistent, HEAD against the trial
# Stage first, on this machine: bash benchmarks/stage_branch.sh benchmarks/trials/NAME.patch && git archive HEAD
# lstmdsl specs grammars templates | (mkdir -p _br/HEAD && tar -x -C _br/HEAD); on the device tool's machine carry
# .whl and _br. Time limits: TESTS_S (default 150 s), AB_S (150 s a spec). Delete _br/ after.
set -u
cd "$(dirname "$0")/.."
trial=${1:?usage: bash benchmarks/trial_check.sh NAME}
[ -d "_br/$trial" ] && [ -d _br/HEAD ] || { echo "stage _br/$trial and _br/HEAD first (see the header)" >&2; exit 64; }
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site LSTMDSL_CACHE=/tmp/lstmdsl-gpu-check-cache PYTHONUNBUFFERED=1
t0=$SECONDS
case "$trial" in
  tf32-mma) tests="tf32 or persistent_schedule_in_every_precision or grid_hands_on" precision=tf32
            runs=("fgr|16x512 64x512" "vanilla|1x512 16x512 64x512") base=("precision tf32" "precision tf32; persistent") ;;
  tile-4x8) tests="persistent" precision=fp32
            runs=("fgr|16x512 64x256 64x512" "vanilla|16x512 32x512 64x512") base=("precision fp32; persistent") ;;
  *) echo "no check for the trial '$trial'" >&2; exit 64 ;;
esac
( cd "_br/$trial" && PYTHONPATH=/tmp/site:$PWD LSTMDSL_TEST_CACHE=$LSTMDSL_CACHE timeout "${TESTS_S:-150}" \
    python3 -m pytest -q -p no:cacheprovider tests/test_gpu.py -k "$tests" -n 14 2>&1 | tail -8 )
echo "tests: $((SECONDS - t0)) s"
timeout 90 python3 benchmarks/probe_cudnn_small.py | grep "$precision"
for run in "${runs[@]}"; do
  spec=${run%%|*} shapes=${run#*|}
  trees=() schedules=()
  for s in "${base[@]}"; do trees+=("$PWD/_br/HEAD") schedules+=("$s"); done
  trees+=("$PWD/_br/$trial") schedules+=("precision $precision; persistent")
  echo "== $spec: ${schedules[*]/#/| } (the last on the trial's tree)"
  timeout "${AB_S:-150}" python3 benchmarks/ab_small.py "${trees[@]}" --spec "$spec" --schedules "${schedules[@]}" \
    --shapes $shapes 2>&1 | tail -8
  echo "A/B: $((SECONDS - t0)) s"
done
