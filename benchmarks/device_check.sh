#!/usr/bin/env bash
# One lent-GPU session in one command, within 8 minutes (compile and autotune included): the
# measurements that decide first, then correctness, then a summary. Commit OUT_DIR as
# benchmarks/results/<gpu>-<date>/.
#
#   bash benchmarks/device_check.sh OUT_DIR [--dry-run]
#
# Steps, in this order, each under its own `timeout` (at most its own limit and what is left of
# the 8 minutes; elapsed seconds printed after each):
#   env      nvidia-smi, python / torch / triton / CUDA versions, the git commit
#   layers   benchmarks/gpu_conv_bench.py: per ResNet18 layer, fp8 vs int8 GEMMs, mma_packed, the
#            fused layer (int8 / fp8, plain / K-sum) and cuDNN, batch 256 then 1
#   model    benchmarks/gpu_model_bench.py: whole ResNet18s, OneBitRunner with and without CUDA
#            graphs, the 1-bit model eager and torch.compiled, vs the float model (eager,
#            torch.compile), batch 256 then 1
#   profile  benchmarks/gpu_profile.py: torch.profiler kernel table of one fused 1-bit forward
#   train    benchmarks/gpu_train_check.py: `cbcn train` on the GPU, 300 steps of a CIFAR-shaped
#            ResNet18 CBCN K=4 on synthetic data: images/s, peak memory, resumed == uninterrupted
#   tests    tests/test_kernels_gpu.py on the GPU (a skip counts as a failure there: recorded as
#            step no_gpu_skips), over 8 processes with pytest-xdist (compilation dominates)
#   tiles    the autotuner's chosen tiles of each step
#   summary  benchmarks/device_summary.py -> OUT_DIR/summary.json (written even if steps failed)
# OUT_DIR then holds 9 files: summary.json, device_check.log (everything printed), layers.csv,
# layers.md, model.csv, model.md, profile.txt, train.json, extra.tar.gz (the rest: each step's output, the
# autotuned tiles, the step table). Exit status: non-zero if any step failed or timed out.
#
# Autotuning results are shared between the steps through Triton's disk cache
# (TRITON_CACHE_AUTOTUNING=1): the profile and the tests reuse the benchmarks' tiles where the
# shapes are the same, as compiled kernels are reused already.
#
# --dry-run runs every step on the CPU (tiny shapes, Triton interpreter, two quick tests) and
# produces the same files; tests/test_triton_bench.py runs it. PYTHON=... picks the interpreter.
set -u -o pipefail
usage="usage: bash benchmarks/device_check.sh OUT_DIR [--dry-run]"
OUT="" DRY=0
for arg in "$@"; do
  case "$arg" in
    --dry-run) DRY=1 ;;
    -h|--help) echo "$usage"; exit 0 ;;
    -*) echo "device_check: unknown option $arg; $usage" >&2; exit 2 ;;
    *) if [ -n "$OUT" ]; then echo "device_check: one OUT_DIR only; $usage" >&2; exit 2; fi; OUT=$arg ;;
  esac
done
if [ -z "$OUT" ]; then echo "$usage" >&2; exit 2; fi
if [ -e "$OUT" ] && [ -n "$(ls -A "$OUT" 2>/dev/null)" ]; then
  echo "device_check: $OUT exists and is not empty; give a new folder" >&2; exit 2
fi
mkdir -p "$OUT" || exit 2
OUT=$(cd "$OUT" && pwd)
cd "$(dirname "$0")/.." || exit 2
PY=${PYTHON:-$(command -v python || command -v python3)}
EXTRA="$OUT/extra"
PATHS=mma,mma_fp8,mma_async,mma_packed  # int8 and fp8 GEMMs, int8 with one wgmma in flight (Gluon), the int8 GEMM on packed input
BUDGET_S=440          # every step but tiles and the summary ends by then: 8 min less tiles (10 s), the summary (15 s) and the archive
T0=$(date +%s)
FAILED=0
export TRITON_CACHE_AUTOTUNING=1

step() {  # step NAME MAX_SECONDS COMMAND...: run it under timeout, its output also in extra/NAME.txt
  local name=$1 max=$2 rc limit started
  shift 2
  started=$(date +%s)
  limit=$(( T0 + BUDGET_S - started ))
  (( max < limit )) && limit=$max
  if (( limit < 5 )); then
    echo "[device_check] step $name: not run, the ${BUDGET_S}s budget is spent"
    rc=124
  else
    echo "[device_check] === step $name (timeout ${limit}s) ==="
    timeout -k 5 "$limit" "$@" 2>&1 | tee "$EXTRA/$name.txt"
    rc=${PIPESTATUS[0]}
  fi
  record "$name" "$rc" $(( $(date +%s) - started ))
}

record() {  # record NAME EXIT_CODE SECONDS: the step table the summary reads
  printf '%s\t%s\t%s\n' "$1" "$2" "$3" >> "$EXTRA/steps.tsv"
  (( $2 != 0 )) && FAILED=1
  echo "[device_check] step $1: exit $2 after $3 s (total $(( $(date +%s) - T0 )) s)"
}

main() {
  mkdir -p "$EXTRA"
  local dry_flag=() bench=() tests=()
  if (( DRY )); then
    dry_flag=(--dry-run)
    bench=(--dry-run --rep-ms 1)
    tests=(env CBCN_GPU_TESTS_ON_CPU=1 "$PY" -m pytest -q -p no:cacheprovider -rs tests/test_kernels_gpu.py
           tests/test_runner.py -k "test_pack_unpack or test_fused_layer_on_device or test_runner_errors")
    echo "[device_check] DRY RUN on the CPU: tiny shapes, Triton interpreter; timings meaningless"
  else
    # tests/test_runner.py is CPU-only there (the whole-model fused runner on the GPU, int8 and fp8,
    # is test_kernels_gpu.py::test_runner_on_device)
    tests=("$PY" -m pytest -q -p no:cacheprovider -rs tests/test_kernels_gpu.py)
    # compilation dominates these tests (about 500 kernel variants): spread them over processes
    # where pytest-xdist is installed (the device machines have 16 cores)
    "$PY" -c "import xdist" 2>/dev/null && tests+=(-n 8)
  fi
  step env 20 bash -c "date -u; nvidia-smi || echo 'nvidia-smi: unavailable'
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv 2>/dev/null
    $PY -c \"import sys, torch; import triton; print('python', sys.version.split()[0], '| torch', torch.__version__, '| triton', triton.__version__, '| cuda', torch.version.cuda, '| gpu', torch.cuda.get_device_name() if torch.cuda.is_available() else None)\"
    git rev-parse HEAD 2>/dev/null && git status --short 2>/dev/null | head -20 || echo 'git: no repository'"
  if (( DRY )); then
    step layers 135 "$PY" benchmarks/gpu_conv_bench.py --out "$EXTRA/layers" --paths "$PATHS" "${bench[@]}"
    step model 165 "$PY" benchmarks/gpu_model_bench.py --out "$EXTRA/model" "${bench[@]}"
  else
    step layers 120 "$PY" benchmarks/gpu_conv_bench.py --out "$EXTRA/layers" --paths "$PATHS" --batches 256,1 \
      --budget-s 85
    step model 150 "$PY" benchmarks/gpu_model_bench.py --out "$EXTRA/model" --batches 256,1 --budget-s 110
  fi
  mkdir -p "$EXTRA/profile"
  step profile 45 "$PY" benchmarks/gpu_profile.py --out "$EXTRA/profile/profile.txt" "${dry_flag[@]}"
  step train 60 "$PY" benchmarks/gpu_train_check.py --out "$EXTRA/train" "${dry_flag[@]}"
  step tests 150 "${tests[@]}"
  if (( ! DRY )); then  # on a GPU nothing may skip in test_kernels_gpu.py
    if ! grep -Eq "[0-9]+ (passed|failed|skipped|errors?)|no tests ran" "$EXTRA/tests.txt" 2>/dev/null; then
      echo "[device_check] no_gpu_skips: not checked (pytest printed no summary: the tests step did not finish)"
    elif grep -q "SKIPPED.*test_kernels_gpu" "$EXTRA/tests.txt"; then
      echo "[device_check] FAILED: tests/test_kernels_gpu.py skipped tests on a GPU machine (reasons above)"
      record no_gpu_skips 1 0
    else
      record no_gpu_skips 0 0
    fi
  fi
  # bookkeeping outside the budget: its failure is reported, it does not fail the run
  echo "[device_check] === tiles (timeout 10s) ==="
  timeout -k 2 10 "$PY" benchmarks/device_summary.py "$OUT" --tiles 2>&1 | tee "$EXTRA/tiles.txt"
  echo "[device_check] tiles: exit ${PIPESTATUS[0]}"
  # the files kept beside the summary; everything else goes into extra.tar.gz
  for pair in layers/results.csv:layers.csv layers/results.md:layers.md model/results.csv:model.csv \
              model/results.md:model.md profile/profile.txt:profile.txt train/train.json:train.json; do
    [ -f "$EXTRA/${pair%%:*}" ] && cp "$EXTRA/${pair%%:*}" "$OUT/${pair##*:}"
  done
  echo "[device_check] === summary ==="
  if ! timeout -k 2 15 "$PY" benchmarks/device_summary.py "$OUT" "${dry_flag[@]}" || [ ! -s "$OUT/summary.json" ]; then
    echo "[device_check] summary failed: writing a minimal summary.json"
    printf '{"gpu": null, "dry_run": %s, "per_layer_speedup_vs_cudnn_fp16": {}, "gemm_fraction_of_int8_peak": {}, %s}\n' \
      "$( (( DRY )) && echo true || echo false )" \
      '"model_speedup_vs_float_fp16_b256": {}, "model_speedup_vs_float_fp16_b1": {}, "exact": false, "unavailable": {"summary": "benchmarks/device_summary.py failed; see device_check.log"}' \
      > "$OUT/summary.json"
    FAILED=1
  fi
  tar -czf "$OUT/extra.tar.gz" -C "$OUT" extra && rm -rf "$EXTRA"
  echo "[device_check] files in $OUT: $(ls "$OUT" | wc -l) ($(ls "$OUT" | tr '\n' ' '))"
  echo "[device_check] done in $(( $(date +%s) - T0 )) s; $( (( FAILED )) && echo 'some step FAILED' || echo 'every step passed')"
  return $FAILED
}

main 2>&1 | tee "$OUT/device_check.log"
exit "${PIPESTATUS[0]}"
