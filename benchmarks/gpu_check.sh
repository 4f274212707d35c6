#!/usr/bin/env bash
# One call on a lent GPU machine: build the CUDA extension, run the CUDA tests and the
# parity suite on backend 'cuda', then the GPU layer benchmarks. Everything lands under
# $OUT (logs, gpu-<device>.json/.md); the last lines printed are a short summary.
#
#   OUT=/some/dir bash benchmarks/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-$PWD/out}"
mkdir -p "$OUT"
export MAX_JOBS="${MAX_JOBS:-$(nproc)}"

nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1
python -c "import torch; print(torch.__version__, torch.version.cuda, torch.backends.cudnn.version(), torch.cuda.get_device_name())" \
    > "$OUT/versions.txt" 2>&1

# --no-build-isolation: compile against the installed torch; --no-deps: the machine is offline.
if ! python -m pip install --no-build-isolation --no-deps -v -e . > "$OUT/build.log" 2>&1; then
    tail -n 60 "$OUT/build.log"
    echo "BUILD FAILED (see $OUT/build.log)"
    exit 1
fi
python -c "import torch, fastrnn.ops; assert torch._C._dispatch_has_kernel_for_dispatch_key('fastrnn::gru_layer_fwd', 'CUDA'), 'no CUDA kernels in fastrnn._C'" \
    > "$OUT/import.log" 2>&1 || { cat "$OUT/import.log"; echo "IMPORT FAILED"; exit 1; }

FASTRNN_TEST_BACKENDS=cuda python -m pytest tests/test_cuda.py tests/test_parity.py -q -ra \
    --junitxml="$OUT/pytest-cuda.xml" > "$OUT/pytest-cuda.log" 2>&1
tests_rc=$?

python benchmarks/layers_gpu.py --out "$OUT" > "$OUT/bench.log" 2>&1
bench_rc=$?

echo "== tests (rc=$tests_rc): $(tail -n 1 "$OUT/pytest-cuda.log")"
grep -E "^(FAILED|ERROR)" "$OUT/pytest-cuda.log" | head -n 20
echo "== benchmarks (rc=$bench_rc)"
if [ $bench_rc -eq 0 ]; then cat "$OUT"/gpu-*.md; else tail -n 30 "$OUT/bench.log"; fi
[ $tests_rc -eq 0 ] && [ $bench_rc -eq 0 ]
