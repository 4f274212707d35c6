#!/usr/bin/env bash
# On a lent GPU machine: build the CUDA extension, run the CUDA tests and the parity suite
# on backend 'cuda', then the GPU layer benchmarks. Everything lands under $OUT (logs,
# gpu-<device>.json/.md/-speedup.png); the last lines printed are a short summary.
#
#   OUT=/some/dir bash benchmarks/gpu_check.sh [all|build|test|bench] [pytest -k expr]
#
# The stages can also run one by one (build, then test, then bench). A device call is
# limited to 10 minutes and the machine is given back soon after a call, so keep build
# and test in one call. Measured on an H100 (16 cores, 12 xdist workers): build ~2 min, tests ~3 min,
# the bench ~2 min with BENCH_ARGS="--budget 0.3 --backends cuda".
# BENCH_ARGS passes options to benchmarks/layers_gpu.py (e.g. "--cases h512,h1024").
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-$PWD/out}"
STAGE="${1:-all}"
KEXPR="${2:-}"
mkdir -p "$OUT"
export MAX_JOBS="${MAX_JOBS:-$(nproc)}"
# Machine code for this GPU alone unless asked otherwise: half the build time of "8.0;9.0".
if [ -z "${FASTRNN_CUDA_ARCHS:-}" ]; then
    arch=$(python -c "import torch; print('%d.%d' % torch.cuda.get_device_capability())") &&
        export FASTRNN_CUDA_ARCHS="$arch"
fi
rc=0

if [ "$STAGE" = all ] || [ "$STAGE" = build ]; then
    nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1
    python -c "import torch; print(torch.__version__, torch.version.cuda, torch.backends.cudnn.version(), torch.cuda.get_device_name())" \
        > "$OUT/versions.txt" 2>&1
    # --no-build-isolation: compile against the installed torch; --no-deps: the machine is offline.
    if ! python -m pip install --no-build-isolation --no-deps -v -e . > "$OUT/build.log" 2>&1; then
        tail -n 60 "$OUT/build.log"
        echo "BUILD FAILED (see $OUT/build.log)"
        exit 1
    fi
    echo "== build ok"
fi

python -c "import torch, fastrnn.ops; assert torch._C._dispatch_has_kernel_for_dispatch_key('fastrnn::gru_layer_fwd', 'CUDA'), 'no CUDA kernels in fastrnn._C'" \
    > "$OUT/import.log" 2>&1 || { cat "$OUT/import.log"; echo "IMPORT FAILED"; exit 1; }

if [ "$STAGE" = all ] || [ "$STAGE" = test ]; then
    # The plan the launchers will take on this device, for the sizes the issue names.
    python - > "$OUT/plans.txt" 2>&1 <<'EOF'
import torch
from fastrnn.cuda_paths import cuda_path
for mode in ("RNN_TANH", "GRU", "LSTM"):
    for dtype in (torch.float32, torch.bfloat16):
        for H, N in ((16, 1), (256, 1), (256, 64), (512, 64), (768, 16), (1024, 64)):
            for bwd in (False, True):
                print(mode, dtype, H, N, "bwd" if bwd else "fwd", cuda_path(mode, H, N, dtype, backward=bwd))
EOF
    # Parallel workers where pytest-xdist is installed: ~3 min on an H100 with 12 workers
    # (serially, ~10 by the first run's pace).
    workers=()
    python -c "import xdist" 2>/dev/null && workers=(-n 12)
    # The CUDA-graph tests run in their own processes: a capture that fails leaves torch's
    # CUDA generator in capture mode, and every later test of that process that draws
    # random numbers fails with "Offset increment outside graph capture".
    for part in "not graph" "graph"; do
        name="pytest-cuda-${part// /-}"
        FASTRNN_TEST_BACKENDS=cuda python -m pytest tests/test_cuda.py tests/test_cuda_paths.py tests/test_graphs.py \
            tests/test_parity.py -q -ra ${workers[@]+"${workers[@]}"} -k "($part)${KEXPR:+ and ($KEXPR)}" \
            --junitxml="$OUT/$name.xml" > "$OUT/$name.log" 2>&1
        tests_rc=$?
        echo "== tests -k '$part' (rc=$tests_rc): $(tail -n 1 "$OUT/$name.log")"
        grep -E "^(FAILED|ERROR)" "$OUT/$name.log" | head -n 20
        [ $tests_rc -eq 0 ] || rc=1
    done
fi

if [ "$STAGE" = all ] || [ "$STAGE" = bench ]; then
    # shellcheck disable=SC2086
    python benchmarks/layers_gpu.py --out "$OUT" ${BENCH_ARGS:-} > "$OUT/bench.log" 2>&1
    bench_rc=$?
    echo "== benchmarks (rc=$bench_rc)"
    if [ $bench_rc -eq 0 ]; then cat "$OUT"/gpu-*.md; else tail -n 30 "$OUT/bench.log"; fi
    [ $bench_rc -eq 0 ] || rc=1
fi
exit $rc
