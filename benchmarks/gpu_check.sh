#!/usr/bin/env bash
# The GPU check, in one call on the GPU machine: the GPU tests (8 pytest workers: 299-444 s with an empty kernel
# cache on 2026-12-04), the compute-sanitizer passes (one after the other 350-360 s; 4 at a time 89-99 s, and past
# 135 s when cut off on 2026-12-04) and the quick grid against cuDNN (11-17 s). One after the other they no longer fit
# one 590 s device call (2026-12-04, thirty-sixth session: cut off in the sanitizers), so the sanitizers run beside
# the tests (12 test workers: tests 386 s, sanitizers 274 s, 423 s in all with MEMORY=1 that day; the next day's
# 697 tests were cut off at 480 s, so the tests and sanitizer targets now share one kernel cache: 720 tests 423 s,
# sanitizers 265 s, 427 s in all with NO_GRID=1, thirty-seventh session). With 735 tests (2026-12-05) that no longer
# fits: beside the sanitizers the tests reached 97% in 550 s on an H200, while alone (NO_SANITIZERS=1 JOBS=14) they
# took 429 s on an H100. For a landing check run two calls: `NO_SANITIZERS=1 JOBS=14 NO_GRID=1` and `NO_TESTS=1`.
# The sanitizers: memcheck on a spec, a persistent kernel of one block, a compiled torch training step, a
# bidirectional stack on a batch of different lengths, two mixed-precision stacks, FGR's GEMMs fanned out on
# streams and the half-precision persistent kernel as `persistent auto` runs it; racecheck on persistent kernels
# and a row-fused spec.
# Run it after every change to the runtime, kernels or passes:
#
#     bash benchmarks/gpu_check.sh                 # from the repository root, on a machine with a GPU
#     VERSIONS=path/to/old/tree bash benchmarks/gpu_check.sh   # also time the quick grid's cases against
#                                                              # an older tree (benchmarks/versions.py)
#     OVERHEAD=1 bash benchmarks/gpu_check.sh      # also the torch module's cost (benchmarks/torch_overhead.py)
#     NO_GRID=1 bash benchmarks/gpu_check.sh       # without the quick grid
#     NO_TESTS=1 bash benchmarks/gpu_check.sh      # without the GPU tests (they passed in an earlier call on this tree)
#     NO_SANITIZERS=1 bash benchmarks/gpu_check.sh # without the compute-sanitizer passes (SAN_JOBS=n: n targets at a
#                                                  # time, default 4; their logs in $OUT/sanitizers/ and
#                                                  # sanitizers.tar.gz; SAN_LOGS=/tmp/san: the folder there, and
#                                                  # only the archive in $OUT: on the device tool's machine,
#                                                  # where $OUT's 100-odd logs crowd out a call's other files)
#     BIDIRECTIONAL=1 bash benchmarks/gpu_check.sh # also bidirectional, packed LSTMs against cuDNN
#     HALF=1 bash benchmarks/gpu_check.sh          # also vanilla in bf16 and fp16 against cuDNN at that precision
#     MEMORY=1 bash benchmarks/gpu_check.sh        # also bf16 training memory four ways (benchmarks/memory_regimes.py)
#     PROJECTION=1 bash benchmarks/gpu_check.sh    # also LSTMP folded against unfolded, 4-layer stacks at B 1-64,
#                                                  # H 256 and 512, fp32 and tf32 (benchmarks/projection.py)
#     MAXFAIL=20 bash benchmarks/gpu_check.sh      # the GPU tests go on past the first failures
#     TESTS_S=560 bash benchmarks/gpu_check.sh     # the GPU tests' time limit (default 520 s; on an H100 on 2026-12-05
#                                                  # with the sanitizers beside them they reached 97% in 520 s)
#     PERSISTENT=1 bash benchmarks/gpu_check.sh    # also the persistent schedule's floor and its small grid
#     JOBS=4 bash benchmarks/gpu_check.sh          # the GPU tests in 4 processes, not 12 (pytest-xdist; with an
#                                                  # empty kernel cache most of their time is compiling; JOBS=0: one)
#
# On the device tool's machine, carry .whl (../shared/tools/gpu-wheels.sh fills it): lark is installed
# from there. Logs and JSON go to $OUT (default /tmp/lstmdsl-gpu-check); a short table is printed last.
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/lstmdsl-gpu-check}
SAN_LOGS=${SAN_LOGS:-$OUT/sanitizers}  # (the sanitizers' logs, one file a target; all in $OUT/sanitizers.tar.gz too)
mkdir -p "$OUT"
whl=.whl; [ -d "$whl" ] || whl=../../.whl  # (a branch's tree staged as _br/NAME: benchmarks/stage_branch.sh)
if [ -d "$whl" ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site "$whl"/*.whl && export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
fi
export LSTMDSL_CACHE=${LSTMDSL_CACHE:-/tmp/lstmdsl-gpu-check-cache} PYTHONUNBUFFERED=1
export LSTMDSL_TEST_CACHE=$LSTMDSL_CACHE  # the tests' one cache (tests/conftest.py): their workers and the
                                          # sanitizer targets load what any of them compiled
summary=()
note() {  # a line of the summary, also written to $OUT/summary.txt at once (a call cut off keeps it)
  summary+=("$1"); printf '%s\n' "$1" >> "$OUT/summary.txt"
}
: > "$OUT/summary.txt"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
python3 -c "import torch, cupy; print('torch', torch.__version__, 'cupy', cupy.__version__, 'cudnn', torch.backends.cudnn.version())" | tee -a "$OUT/gpu.txt"

# The sanitizers run beside the GPU tests (both mostly compile on the host's CPUs: 12 test workers and 4 sanitizer
# targets at a time keep 16 cores busy; one after the other the tests took 303-444 s and the sanitizers were cut
# off after 135 s by the 590 s call limit on 2026-12-04): a function run in the background, its lines collected
# after the tests.
sanitizers() {
  sanitize() {  # TOOL NUMBER TARGET...: one target under compute-sanitizer, its log $SAN_LOGS/TOOL-NUMBER.log,
    # its summary line appended to $OUT/summary.txt at once and kept in $SAN_LOGS/TOOL-NUMBER.line
    local tool=$1 n=$2 t0=$SECONDS line log rc; shift 2
    log="$SAN_LOGS/$tool-$n.log"
    stuck() {  # what a target that did not finish left: killed at the timeout, or its Python stacks dumped
      # (tests/sanitizer_target.py: faulthandler before the timeout, "Timeout (h:mm:ss)!" and the stacks)
      if grep -q "^Timeout (" "$log"; then  # (where: the innermost frame of the thread that runs the target)
        local top; top=$(awk '/^Thread /{if (b ~ /sanitizer_target/) print f; b = f = ""; next}
          /File "/{if (f == "") f = $0; b = b $0} END{if (b ~ /sanitizer_target/) print f}' "$log" | head -1 |
          sed -E 's/.*File "([^"]*)", line ([0-9]+) in (.*)/\1:\2 (\3)/; s#.*/(lstmdsl|tests)/#\1/#')
        echo ", HUNG in ${top:-?}: its Python stacks are in the log"
      elif [ "$rc" = 124 ]; then echo ", KILLED at the 240 s timeout"; fi
    }
    if [ "$tool" = memcheck ]; then
      timeout 240 compute-sanitizer --tool memcheck --print-limit 10 python3 tests/sanitizer_target.py "$@" > "$log" 2>&1
      rc=$?
      local hung; hung=$(stuck)
      line="memcheck $*: $(grep -E 'ERROR SUMMARY' "$log" | tail -1)$hung ($((SECONDS - t0)) s)"
      grep -q "ERROR SUMMARY: 0 errors" "$log" && [ -z "$hung" ] || line="$line; see $log"
    elif [ "$tool" = racecheck ]; then
      timeout 240 compute-sanitizer --tool racecheck python3 tests/sanitizer_target.py "$@" > "$log" 2>&1
      rc=$?
      line="racecheck $*: $(grep -E 'RACECHECK SUMMARY|ERROR SUMMARY' "$log" | tail -1)$(stuck) ($((SECONDS - t0)) s)"
    else  # racecheck-nvjet: half-precision grids, where racecheck flags cuBLAS's nvjet GEMM kernels (its input
      # projection); its "Race reported" lines name the kernel, and any outside nvjet is a failure of ours
      # (`--kernel-name-exclude kns=nvjet` made compute-sanitizer fail with "Internal Sanitizer Error" on 2026-12-03,
      # on trees that pass without it)
      timeout 240 compute-sanitizer --tool racecheck python3 tests/sanitizer_target.py "$@" > "$log" 2>&1
      rc=$?
      local ours; ours=$(grep -E "Race reported" "$log" | grep -vc nvjet)
      line="racecheck $*: $(grep -E 'RACECHECK SUMMARY|ERROR SUMMARY' "$log" | tail -1), $ours reported outside \
cuBLAS's nvjet kernels$(grep -q 'forward and backward ran' "$log" || echo ', THE TARGET DID NOT FINISH') ($((SECONDS - t0)) s)"
      [ "$ours" = 0 ] || line="$line; see $log"
    fi
    printf '%s\n' "$line" > "$SAN_LOGS/$tool-$n.line"
    printf '%s\n' "$line" >> "$OUT/summary.txt"  # (one short line, appended at once: the jobs' lines do not mix)
  }
  memchecks=("peephole" "--persistent-block gru" "--torch-compile vanilla" "--bidirectional-lengths layernorm"
             "--bf16 --bidirectional-lengths gru" "--fp16 layernorm" "--persistent-grid gru" "--wavefront vanilla"
             "--wavefront --bf16 layernorm" "--bidirectional-lengths slstm" "--persistent-split --bidirectional-lengths gru"
             "--persistent-grid --bidirectional-lengths vanilla" fgr "--bidirectional-lengths fgr" "--fp16 vanilla"
             "--torch-packed vanilla" "--persistent-grid --torch-packed gru" "--persistent-grid --specialise gru"
             "--persistent-block --specialise --torch-packed peephole" "--persistent-grid --fp16 vanilla"
             "--persistent-grid --bf16 peephole" "--persistent-grid --hidden=256 --fp16 vanilla"
             "--persistent-grid --specialise --batch=1 --hidden=512 --fp16 vanilla"
             "--persistent-grid --batch=16 --hidden=512 --fp16 vanilla" "--persistent-grid slstm" slstm
             "--layers=1 --batch=16 --hidden=240 slstm" "--layers=1 --batch=16 --hidden=240 --fp16 slstm"
             "--fold lstmp" "--fold --wavefront lstmp" "--no-fold lstmp"
             "--torch-half gru" "--torch-half --fp16 --layers=1 lstmp")
    # fgr: a step's four GEMMs at once on streams of their own (runtime/fanout.py): in its 2-layer stack the
    # backward (the forward is a wavefront); bidirectional, each direction's layers one by one: both phases;
    # --persistent-grid slstm: block-diagonal matrices' rows expanded into shared memory (3 heads of 100 at H = 300);
    # slstm: `persistent auto`'s forward kernel on the stacks' head-by-head copy (3 heads of 11; in a stack of two
    # the backward is a wavefront); --layers=1 --batch=16 --hidden=240 slstm: both kernels there, the backward
    # gathering each gate's gradients in 16-byte words (3 heads of 80; in fp16 the tensor-core products);
    # --fp16 vanilla: the half-precision kernel as `persistent auto` runs it at B = 3, H = 33 (a split grid);
    # --persistent-grid --fp16 vanilla / --bf16 peephole: half-precision grids handing h on in tagged words
    # (racecheck of the fp16 one flags only cuBLAS's nvjet GEMM kernels, so it is memchecked only); --hidden=256: rows
    # of a power of two words, as users' sizes mostly are (H = 300 elsewhere: in half precision 4 mod 8 elements, the
    # staged operands' 8-byte words); --batch=1 --hidden=512: the products read the exchange's words straight into
    # tensor-core fragments (a grid compiled for one batch row); --specialise: the persistent kernels compiled for
    # their launch's shape (runtime/specialise.py); --batch=16 --hidden=512 --fp16: a half-precision grid forward and
    # backward, as `persistent auto` runs them there; --fold lstmp: the projection folded into the next step's GEMM
    # (passes/projection.py), in a stack of two (--wavefront: a folded wavefront, each chunk's projected states formed
    # after its steps); --torch-half: the torch module with half parameters (GEMMs reading the half stacks in place,
    # gradients copied out in half; --fp16 --layers=1 lstmp: a projection's half weights too)
  racechecks=("--persistent-block peephole" layernorm "--persistent-grid peephole" "--persistent-grid gru"
              "--persistent-grid layernorm" "--wavefront gru" "--persistent-split vanilla" "--persistent-split layernorm"
              "--persistent-split fgr" "--fp16 vanilla" "--persistent-split --specialise vanilla"
              "--persistent-block --specialise layernorm" "--persistent-grid --specialise peephole"
              "--persistent-grid --hidden=256 vanilla" "--persistent-block slstm" slstm
              "--layers=1 --batch=16 --hidden=240 slstm" "--persistent-grid --bidirectional-lengths peephole")
    # --persistent-grid gru / --bidirectional-lengths peephole: backward kernels whose last stage adds its products
    # to the sum the step's kernel began (sum folding's init: GRU's u * dh, the length mask's dh - m * dh);
    # layernorm: row-fused launches, stages separated by barriers; --persistent-block / --persistent-grid: the
    # persistent kernels (forward and backward) in one block / as a grid of blocks; --persistent-split fgr: one
    # stage of four product operands, each handed to the next step in shared memory (ran clean on 2026-12-01)
  # The targets run SAN_JOBS at a time (default 4; each a process of its own on the one GPU: one after the other
  # they took 350-360 s, with the tests more than one 590 s device call), the slowest first; the summary lists
  # them by tool and number once all have finished (each line is in $OUT/summary.txt as soon as it is measured).
  local start=$SECONDS j first t n
  jobs_list=()  # "TOOL NUMBER TARGET...", numbered in the lists' order (two digits: the summary sorts by name)
  n=0; for t in "${memchecks[@]}"; do n=$((n + 1)); jobs_list+=("memcheck $(printf %02d $n) $t"); done
  n=0; for t in "${racechecks[@]}"; do n=$((n + 1)); jobs_list+=("racecheck $(printf %02d $n) $t"); done
  jobs_list+=("racecheck-nvjet 01 --persistent-grid --specialise --batch=1 --hidden=512 --fp16 vanilla")
  slow=("--torch-compile vanilla" "--persistent-grid layernorm" "--persistent-split layernorm")  # (25-55 s alone)
  # alone: memcheck targets run after the others, one at a time. The bidirectional layer's two persistent grids side
  # by side under memcheck, beside other sanitizer processes, hung in a module load (8 targets at a time until
  # 2026-12-06, 4 on 2026-12-07; 3 of 4 copies beside 4 with the directions one after the other, 0 of those 4; 0 of 8
  # copies at once without a sanitizer; alone under memcheck it runs in 3-7 s): the cause is not known
  # (benchmarks/results/probes/memcheck_bidirectional_hang.txt), so the check runs it where it finishes, still
  # memchecking the path
  alone=("--persistent-grid --bidirectional-lengths vanilla")
  ordered=() last=()
  for j in "${jobs_list[@]}"; do for t in "${slow[@]}"; do [ "${j#* * }" = "$t" ] && ordered+=("$j"); done; done
  for j in "${jobs_list[@]}"; do
    first=; for t in "${slow[@]}"; do [ "${j#* * }" = "$t" ] && first=1; done
    for t in "${alone[@]}"; do [ "${j#memcheck * }" = "$t" ] && first=1 && last+=("$j"); done
    [ -n "$first" ] || ordered+=("$j")
  done
  for j in "${ordered[@]}"; do
    while [ "$(jobs -rp | wc -l)" -ge "${SAN_JOBS:-4}" ]; do sleep 0.5; done
    # shellcheck disable=SC2086  # (the target's words are its arguments)
    sanitize $j &
  done
  wait
  for j in "${last[@]}"; do
    # shellcheck disable=SC2086
    sanitize $j
  done
  line="sanitizers: ${#jobs_list[@]} targets, ${SAN_JOBS:-4} at a time, in $((SECONDS - start)) s"
  printf '%s\n' "$line" > "$SAN_LOGS/total.last"; printf '%s\n' "$line" >> "$OUT/summary.txt"
  for f in "$SAN_LOGS"/*.log; do  # a failure's log, at the end of the call's output
    case "$f" in
      */memcheck-*) grep -q "ERROR SUMMARY: 0 errors" "$f" || { echo "== $f"; tail -30 "$f"; };;
      */racecheck-nvjet-*) grep -E "Race reported" "$f" | grep -v nvjet | head -10;;
    esac
  done
  # the logs as one archive beside the folder: a copier that brings back only a few files (the device tool's
  # machine returned 1 of the 78 on 2026-12-04) still brings them all
  tar -czf "$OUT/sanitizers.tar.gz" -C "$(dirname "$SAN_LOGS")" "$(basename "$SAN_LOGS")"
}
san_pid=
if [ -z "${NO_SANITIZERS:-}" ]; then  # (NO_SANITIZERS=1: the tests alone)
  rm -rf "$SAN_LOGS"; mkdir -p "$SAN_LOGS"
  sanitizers > "$OUT/sanitizers.out" 2>&1 &
  san_pid=$!
fi

if [ -z "${NO_TESTS:-}" ]; then
start=$SECONDS
jobs=()  # JOBS=n: n pytest workers (default 12; pytest-xdist, if importable: `../shared/tools/gpu-wheels.sh pytest-xdist
# execnet` puts it in .whl), compiling kernels in parallel; JOBS=0: one process
if [ "${JOBS:-12}" != 0 ] && python3 -c "import xdist" 2>/dev/null; then jobs=(-n "${JOBS:-12}"); fi
# each failure is written to $OUT/failures.txt as it happens (tests/conftest.py), and the time limit interrupts
# pytest (SIGINT) so it still prints its summary: on 2026-12-05 an H100 run cut off at 97% left three F's, no names
: > "$OUT/failures.txt"
LSTMDSL_TEST_FAILURES="$OUT/failures.txt" timeout -s INT -k 20 "${TESTS_S:-520}" python3 -m pytest -q -rf -p no:cacheprovider \
  -m gpu tests/ --maxfail="${MAXFAIL:-1}" "${jobs[@]}" 2>&1 | tee "$OUT/pytest.log" | grep -v PytestBenchmarkWarning | tail -25
note "gpu tests: $(tail -1 "$OUT/pytest.log") ($((SECONDS - start)) s)"
[ -s "$OUT/failures.txt" ] && note "failed: $(grep -c '^FAILED ' "$OUT/failures.txt") ($(grep '^FAILED ' "$OUT/failures.txt" | cut -d' ' -f2 | tr '\n' ' '))"
fi

if [ -n "$san_pid" ]; then
  wait "$san_pid"
  cat "$OUT/sanitizers.out"
  for f in "$SAN_LOGS"/*.line; do summary+=("$(cat "$f")"); done
  summary+=("$(cat "$SAN_LOGS/total.last" 2>/dev/null || echo 'sanitizers: DID NOT FINISH')")
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
if [ -n "${PROJECTION:-}" ]; then
  for p in fp32 tf32; do
    timeout 240 python3 benchmarks/projection.py --precision $p --layers 4 --batches 1 16 64 --hiddens 256 512 \
      --json "$OUT/projection_${p}_l4.json" > "$OUT/projection_${p}_l4.log" 2>&1
    note "projection $p, 4 layers: rc $? ($OUT/projection_${p}_l4.md)"
    grep "^| [0-9]" "$OUT/projection_${p}_l4.md" 2>/dev/null | cut -d'|' -f2-7
  done
fi
if [ -n "${MEMORY:-}" ]; then
  timeout 240 python3 benchmarks/memory_regimes.py --json "$OUT/memory_regimes_bf16.json" 2>&1 | tail -12
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
if [ -s "$OUT/failures.txt" ]; then  # the failures' tracebacks last, where a caller that keeps only the output's
  echo; echo "== failures (each traceback's last lines; all of them in $OUT/failures.txt)"  # tail still has them
  awk '/^FAILED /{n=0} {if (n++ < 14) print}' "$OUT/failures.txt" | head -120
fi
