#!/usr/bin/env bash
# The GPU check, in one call on the GPU machine (about 7-9 minutes: with an empty kernel cache the GPU tests
# took 285 s at bdf5fab and 196 s at 859c652, the sanitizer passes 100-180 s): the GPU tests, compute-sanitizer (memcheck on a spec,
# a persistent kernel of one block, a compiled torch training step, a bidirectional stack on a batch of
# different lengths, two mixed-precision stacks, FGR's GEMMs fanned out on streams and the half-precision
# persistent kernel as `persistent auto` runs it; racecheck on persistent kernels and a row-fused spec), and
# the quick grid against cuDNN. Run it after every change to the runtime, kernels or passes:
#
#     bash benchmarks/gpu_check.sh                 # from the repository root, on a machine with a GPU
#     VERSIONS=path/to/old/tree bash benchmarks/gpu_check.sh   # also time the quick grid's cases against
#                                                              # an older tree (benchmarks/versions.py)
#     OVERHEAD=1 bash benchmarks/gpu_check.sh      # also the torch module's cost (benchmarks/torch_overhead.py)
#     NO_GRID=1 bash benchmarks/gpu_check.sh       # without the quick grid
#     NO_TESTS=1 bash benchmarks/gpu_check.sh      # without the GPU tests (they passed in an earlier call on this tree)
#     NO_SANITIZERS=1 bash benchmarks/gpu_check.sh # without the compute-sanitizer passes (with the fifteenth session's
#                                                  # tests and targets the whole check likely passes one 600 s device
#                                                  # call: the tests ran 287 s with JOBS=8; split it)
#     BIDIRECTIONAL=1 bash benchmarks/gpu_check.sh # also bidirectional, packed LSTMs against cuDNN
#     HALF=1 bash benchmarks/gpu_check.sh          # also vanilla in bf16 and fp16 against cuDNN at that precision
#     MAXFAIL=20 bash benchmarks/gpu_check.sh      # the GPU tests go on past the first failures
#     PERSISTENT=1 bash benchmarks/gpu_check.sh    # also the persistent schedule's floor and its small grid
#     JOBS=4 bash benchmarks/gpu_check.sh          # the GPU tests in 4 processes (pytest-xdist; with an empty
#                                                  # kernel cache most of their time is compiling)
#
# On the device tool's machine, carry .whl (../shared/tools/gpu-wheels.sh fills it): lark is installed
# from there. Logs and JSON go to $OUT (default /tmp/lstmdsl-gpu-check); a short table is printed last.
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/lstmdsl-gpu-check}
mkdir -p "$OUT"
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
fi
export LSTMDSL_CACHE=${LSTMDSL_CACHE:-/tmp/lstmdsl-gpu-check-cache} PYTHONUNBUFFERED=1
summary=()
note() {  # a line of the summary, also written to $OUT/summary.txt at once (a call cut off keeps it)
  summary+=("$1"); printf '%s\n' "$1" >> "$OUT/summary.txt"
}
: > "$OUT/summary.txt"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
python3 -c "import torch, cupy; print('torch', torch.__version__, 'cupy', cupy.__version__, 'cudnn', torch.backends.cudnn.version())" | tee -a "$OUT/gpu.txt"

if [ -z "${NO_TESTS:-}" ]; then
start=$SECONDS
jobs=()  # JOBS=n: n pytest workers (pytest-xdist, if importable: `../shared/tools/gpu-wheels.sh pytest-xdist execnet` puts it in .whl), compiling kernels in parallel
if [ -n "${JOBS:-}" ] && python3 -c "import xdist" 2>/dev/null; then jobs=(-n "$JOBS"); fi
timeout 480 python3 -m pytest -q -p no:cacheprovider -m gpu tests/ --maxfail="${MAXFAIL:-1}" "${jobs[@]}" 2>&1 | tee "$OUT/pytest.log" | tail -25
note "gpu tests: $(tail -1 "$OUT/pytest.log") ($((SECONDS - start)) s)"
fi

if [ -z "${NO_SANITIZERS:-}" ]; then  # (NO_SANITIZERS=1: the tests alone, in a call of their own)
for target in "peephole" "--persistent-block gru" "--torch-compile vanilla" "--bidirectional-lengths layernorm" \
              "--bf16 --bidirectional-lengths gru" "--fp16 layernorm" "--persistent-grid gru" "--wavefront vanilla" \
              "--wavefront --bf16 layernorm" "--bidirectional-lengths slstm" "--persistent-split --bidirectional-lengths gru" "--persistent-grid --bidirectional-lengths vanilla" \
              fgr "--bidirectional-lengths fgr" "--fp16 vanilla" "--torch-packed vanilla" "--persistent-grid --torch-packed gru" \
              "--persistent-grid --specialise gru" "--persistent-block --specialise --torch-packed peephole" \
              "--persistent-grid --fp16 vanilla" "--persistent-grid --bf16 peephole" "--persistent-grid --hidden=256 --fp16 vanilla" \
              "--persistent-grid --specialise --batch=1 --hidden=512 --fp16 vanilla" \
              "--persistent-grid --batch=16 --hidden=512 --fp16 vanilla"; do
  # fgr: a step's four GEMMs at once on streams of their own (runtime/fanout.py): in its 2-layer stack the
  # backward (the forward is a wavefront); bidirectional, each direction's layers one by one: both phases;
  # --fp16 vanilla: the half-precision kernel as `persistent auto` runs it at B = 3, H = 33 (a split grid);
  # --persistent-grid --fp16 vanilla / --bf16 peephole: half-precision grids handing h on in tagged words
  # (racecheck of the fp16 one flags only cuBLAS's nvjet GEMM kernels, so it is memchecked only); --hidden=256: rows
  # of a power of two words, as users' sizes mostly are (H = 300 elsewhere); --batch=1 --hidden=512: the products
  # read the exchange's words straight into tensor-core fragments (a grid compiled for one batch row);
  # --specialise: the persistent kernels compiled for their launch's shape (runtime/specialise.py); --batch=16
  # --hidden=512 --fp16: a half-precision grid forward and backward, as `persistent auto` runs them there
  start=$SECONDS
  timeout 180 compute-sanitizer --tool memcheck --print-limit 10 python3 tests/sanitizer_target.py $target \
    > "$OUT/memcheck.log" 2>&1
  note "memcheck $target: $(grep -E 'ERROR SUMMARY' "$OUT/memcheck.log" | tail -1) ($((SECONDS - start)) s)"
  grep -q "ERROR SUMMARY: 0 errors" "$OUT/memcheck.log" || tail -30 "$OUT/memcheck.log"
done
for target in "--persistent-block peephole" layernorm "--persistent-grid peephole" "--persistent-grid gru" \
              "--persistent-grid layernorm" "--wavefront gru" "--persistent-split vanilla" "--persistent-split layernorm" \
              "--persistent-split fgr" "--fp16 vanilla" "--persistent-split --specialise vanilla" \
              "--persistent-block --specialise layernorm" "--persistent-grid --specialise peephole" \
              "--persistent-grid --hidden=256 vanilla"; do
  # layernorm: row-fused launches, stages separated by barriers; --persistent-block / --persistent-grid: the
  # persistent kernels (forward and backward) in one block / as a grid of blocks; --persistent-split fgr: one
  # stage of four product operands, each handed to the next step in shared memory (ran clean on 2026-12-01)
  start=$SECONDS
  timeout 180 compute-sanitizer --tool racecheck python3 tests/sanitizer_target.py $target > "$OUT/racecheck.log" 2>&1
  note "racecheck $target: $(grep -E 'RACECHECK SUMMARY|ERROR SUMMARY' "$OUT/racecheck.log" | tail -1) ($((SECONDS - start)) s)"
done
# half-precision grids: racecheck flags cuBLAS's nvjet GEMM kernels (its input projection) there; its "Race reported"
# lines are sorted by the kernel they name, and any outside nvjet is a failure of ours (printed below) (`--kernel-name-exclude kns=nvjet`
# made compute-sanitizer fail with "Internal Sanitizer Error" on 2026-12-03, on trees that pass without it)
start=$SECONDS
timeout 180 compute-sanitizer --tool racecheck python3 tests/sanitizer_target.py \
  --persistent-grid --specialise --batch=1 --hidden=512 --fp16 vanilla > "$OUT/racecheck.log" 2>&1
ours=$(grep -E "Race reported" "$OUT/racecheck.log" | grep -vc nvjet)
note "racecheck --persistent-grid --specialise --batch=1 --hidden=512 --fp16 vanilla: $(grep -E \
  'RACECHECK SUMMARY|ERROR SUMMARY' "$OUT/racecheck.log" | tail -1), $ours reported outside cuBLAS's nvjet kernels$(\
  grep -q 'forward and backward ran' "$OUT/racecheck.log" || echo ', THE TARGET DID NOT FINISH') ($((SECONDS - start)) s)"
[ "$ours" = 0 ] || grep -E "Race reported" "$OUT/racecheck.log" | grep -v nvjet | head -10
fi

if [ -n "${BIDIRECTIONAL:-}" ]; then
  timeout 240 python3 benchmarks/bidirectional.py --json "$OUT/bidirectional.json" 2>&1 | tail -8
fi
if [ -n "${HALF:-}" ]; then
  for p in bf16 fp16; do
    start=$SECONDS
    timeout 240 python3 benchmarks/run.py --only grid --precision $p --specs vanilla --variants --batches 1 16 64 256 \
      --hiddens 256 1024 --steps 100 --layers 1 --competitors lstmdsl cudnn --name grid_check_$p > "$OUT/grid_$p.log" 2>&1
    cp benchmarks/out/grid_check_$p.json benchmarks/out/grid_check_$p.md "$OUT/" 2>/dev/null
    note "$p grid: $(tail -1 "$OUT/grid_$p.log") ($((SECONDS - start)) s)"
    [ -f "$OUT/grid_check_$p.md" ] && cat "$OUT/grid_check_$p.md" || tail -20 "$OUT/grid_$p.log"
  done
fi
if [ -n "${PERSISTENT:-}" ]; then
  timeout 60 python3 benchmarks/persistent_floor.py --json "$OUT/persistent_floor.json" 2>&1 | tail -12
  timeout 400 python3 benchmarks/persistent.py --name persistent_check_fp32 2>&1 | tee "$OUT/persistent.log" | tail -45
fi
if [ -n "${OVERHEAD:-}" ]; then
  timeout 240 python3 benchmarks/torch_overhead.py --json "$OUT/torch_overhead.json" 2>&1 | tail -8
fi
if [ -n "${VERSIONS:-}" ]; then
  timeout 300 python3 benchmarks/versions.py "$VERSIONS" . --json "$OUT/versions.json" 2>&1 | tee "$OUT/versions.txt"
fi
if [ -z "${NO_GRID:-}" ]; then
  start=$SECONDS
  timeout 300 python3 benchmarks/run.py --quick --only grid --competitors lstmdsl cudnn --name grid_check_quick_fp32 \
    > "$OUT/grid.log" 2>&1
  cp benchmarks/out/grid_check_quick_fp32.json benchmarks/out/grid_check_quick_fp32.md "$OUT/" 2>/dev/null
  note "quick grid: $(tail -1 "$OUT/grid.log") ($((SECONDS - start)) s)"
  [ -f "$OUT/grid_check_quick_fp32.md" ] && cat "$OUT/grid_check_quick_fp32.md"
fi
echo
echo "== summary"
printf '%s\n' "${summary[@]}"
