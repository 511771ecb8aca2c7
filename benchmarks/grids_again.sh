#!/usr/bin/env bash
# The four full vanilla grids (B {1, 16, 64, 256} x H {256, 512, 1024} x T {100, 1000} x layers {1, 4}, forward and
# training, lstmdsl against cuDNN) measured again with the current harness (lstmdsl/bench.py's BENCH_VERSION), one
# benchmarks/run.py process a precision. The committed grids were measured by the harness before 2026-12-04, whose
# cuDNN forward ran in training mode and whose memory counts were not each competitor's own (README, "Not there
# yet"). Estimated from the committed rows: 50-100 s of timed calls a precision (fp32 the longest) plus about 70 s
# of compiling and set-up, so two precisions fit one 590 s device call:
#
#     PRECISIONS="fp32 tf32" bash benchmarks/grids_again.sh      # on the device tool's machine, carrying .whl
#     PRECISIONS="bf16 fp16" bash benchmarks/grids_again.sh
#
# run.py saves each grid after every row ("partial": true until it ends), so a precision cut off by LIMIT (seconds,
# default 280) keeps its rows; the JSON and markdown are copied to $OUT (default benchmarks/out). Then, here:
# copy them into benchmarks/results/ and run `python3 benchmarks/report.py` (README and docs/performance.md.j2 prose
# to be read against the new figures).
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/out}
mkdir -p "$OUT"
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl &&
    export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
fi
export LSTMDSL_CACHE=${LSTMDSL_CACHE:-/tmp/lstmdsl-gpu-check-cache} PYTHONUNBUFFERED=1
for p in ${PRECISIONS:-fp32 tf32 bf16 fp16}; do
  start=$SECONDS
  timeout "${LIMIT:-280}" python3 benchmarks/run.py --only grid --precision "$p" --specs vanilla --variants \
    --competitors lstmdsl cudnn --repeat 7 --name "grid_full_$p" > "$OUT/grid_full_$p.log" 2>&1
  rc=$?
  if [ "$OUT" != benchmarks/out ]; then
    cp benchmarks/out/grid_full_"$p".json benchmarks/out/grid_full_"$p".md "$OUT"/ 2>/dev/null
  fi
  rows=$(python3 -c "import json; d = json.load(open('$OUT/grid_full_$p.json'))
print(len(d['rows']), 'rows', 'partial' if d['meta'].get('partial') else 'whole')" 2>/dev/null)
  echo "grid_full_$p: rc $rc, ${rows:-no JSON}, $((SECONDS - start)) s"
done
