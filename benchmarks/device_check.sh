#!/usr/bin/env bash
# One lent-GPU session in one command: correctness of the compiled kernels on the GPU, then the
# benchmark table. Everything it prints is also written under OUT_DIR (keep it in the repository,
# e.g. benchmarks/results/h100-YYYY-MM-DD/).
#
#   bash benchmarks/device_check.sh OUT_DIR [BENCH_BUDGET_S]   (BENCH_BUDGET_S per benchmark, default 150)
#
# 1. nvidia-smi, torch / triton versions                       -> OUT_DIR/environment.txt
# 2. tests/test_kernels_gpu.py (every kernel and path bit-exact against the CPU reference, the
#    1-bit models' logits equal on the GPU) and the GPU rows of the pytest-benchmark suites
#    gpu_conv, cif, bitpack, layers (correctness only: --benchmark-disable; their tolerances
#    for cuDNN / TF32 were set after the first H100 run)       -> OUT_DIR/pytest-{kernels-gpu,gpu}.txt
#    (any skip in tests/test_kernels_gpu.py counts as a failure: on a GPU nothing may skip there)
# 3. benchmarks/gpu_conv_bench.py (ResNet18 layer shapes, batch 256 then 1; stops starting new
#    shapes after BENCH_BUDGET_S)                               -> OUT_DIR/results.{csv,md}, bench.log
# 4. benchmarks/gpu_model_bench.py (whole ResNet18: float vs simulated binary vs 1-bit, batch 256
#    then 1)                                                    -> OUT_DIR/model/results.{csv,md}, model.log
# Expect about 7 minutes on an H100 (Triton compilation and autotuning included).
set -u -o pipefail
OUT=${1:?usage: bash benchmarks/device_check.sh OUT_DIR [BENCH_BUDGET_S]}
BUDGET=${2:-150}
cd "$(dirname "$0")/.."
mkdir -p "$OUT"
{
  date -u
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv || echo "nvidia-smi unavailable"
  python -c "import sys, torch, triton; print('python', sys.version.split()[0], '| torch', torch.__version__, '| triton', triton.__version__, '| cuda', torch.version.cuda)"
} 2>&1 | tee "$OUT/environment.txt"
start=$(date +%s)
python -m pytest -q -p no:cacheprovider -rs tests/test_kernels_gpu.py 2>&1 | tee "$OUT/pytest-kernels-gpu.txt"
tests_rc=$?
if grep -qi "skipped" "$OUT/pytest-kernels-gpu.txt"; then  # on a GPU machine nothing may skip there
  echo "[device_check] FAILED: tests/test_kernels_gpu.py skipped tests on a GPU machine (reasons above)" \
    | tee -a "$OUT/pytest-kernels-gpu.txt"
  tests_rc=1
fi
python -m pytest -q -p no:cacheprovider --benchmark-disable benchmarks/test_bench_gpu_conv.py \
  benchmarks/test_bench_cif.py benchmarks/test_bench_bitpack.py benchmarks/test_bench_layers.py \
  2>&1 | tee "$OUT/pytest-gpu.txt"
tests_rc=$(( tests_rc || $? ))
echo "[device_check] GPU tests: exit $tests_rc after $(( $(date +%s) - start )) s" | tee -a "$OUT/pytest-gpu.txt"
python benchmarks/gpu_conv_bench.py --out "$OUT" --budget-s "$BUDGET" 2>&1 | tee "$OUT/bench.log"
bench_rc=$?
python benchmarks/gpu_model_bench.py --out "$OUT/model" --budget-s "$BUDGET" 2>&1 | tee "$OUT/model.log"
model_rc=$?
echo "[device_check] tests exit $tests_rc, layer benchmark exit $bench_rc, model benchmark exit $model_rc," \
     "total $(( $(date +%s) - start )) s"
exit $(( tests_rc != 0 || bench_rc != 0 || model_rc != 0 ))
