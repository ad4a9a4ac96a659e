#!/usr/bin/env bash
# What a GPU session runs (device time is short: one script, results under $OUT, at
# most ~9 minutes): the toolchain checked on a one-line kernel, G1-G4 beside JAX and
# PyTorch (G1 and G2 without vector accesses, G2 with 16-byte ones, G1 and G2 with
# fastmath, G4 without its tape cut, with signed indices, without shuffles and without
# double rows), scans over one sequence (benchmarks/one_sequence.py), runs of small
# equations as one block against a kernel each (benchmarks/one_run.py), an embedding
# RNN's gradient (benchmarks/embedding.py), scans as maps (benchmarks/scan_maps.py),
# where each
# workload's time goes (benchmarks/gpu_profile.py), the CUDA
# tests on the real compiler and GPU, and Nsight Compute's counters for G1's and G2's
# kernels.  Usage: OUT=/some/dir bash benchmarks/gpu_session.sh
set -u
OUT=${OUT:-/tmp/gpu-out}
mkdir -p "$OUT"
export PYTHONPATH=. PYTHONUNBUFFERED=1
PY=$(command -v python3 || command -v python)
{
    date -u
    nvidia-smi -L; ls /dev/nvidia*
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm,clocks.mem \
        --format=csv
    "$PY" - <<'EOF'
import importlib, numpy as np
for m in ("numba", "numba_cuda", "llvmlite", "jax", "torch", "cupy", "sympy", "networkx"):
    try:
        print(m, importlib.import_module(m).__version__)
    except Exception as e:
        print(m, "missing:", type(e).__name__, e)
print("numpy", np.__version__)
EOF
} > "$OUT/gpu.txt" 2>&1

smoke() {
    "$PY" - <<'EOF'
import numpy as np
from gradc.codegen.cuda import import_cuda
cuda = import_cuda()
@cuda.jit
def k(a):
    i = cuda.grid(1)
    if i < a.size:
        a[i] = 2.0 * i
a = cuda.to_device(np.zeros(100))
k[1, 128](a)
assert (a.copy_to_host() == 2.0 * np.arange(100)).all()
print("smoke kernel ok on", cuda.get_current_device().name)
EOF
}
if ! smoke >> "$OUT/gpu.txt" 2>&1; then        # (NVVM not found: point numba at CUDA)
    for d in /usr/local/cuda /usr/local/cuda-13.0 /opt/cuda; do
        [ -d "$d" ] || continue
        export CUDA_HOME=$d
        echo "retrying with CUDA_HOME=$d" >> "$OUT/gpu.txt"
        smoke >> "$OUT/gpu.txt" 2>&1 && break
    done
fi

timeout 140 "$PY" benchmarks/gpu.py --repeats 20 > "$OUT/bench.md" 2> "$OUT/bench.err"
echo "rc $?" >> "$OUT/bench.err"

# G1 and G2's map kernels without vectors (the scalar loop, as run 3 measured it), and
# G2 with 16-byte ones (gradc picks 8 bytes for its three arrays: two float32 lanes)
for v in GRADC_CUDA_VECTOR=0 GRADC_CUDA_VECTOR=16; do
    echo "G1, G2 with $v" >> "$OUT/bench.md"
    only=G1,G2; [ "$v" = GRADC_CUDA_VECTOR=16 ] && only=G2
    env "$v" timeout 50 "$PY" benchmarks/gpu.py --only $only --no-peers --repeats 20 \
        >> "$OUT/bench.md" 2>> "$OUT/bench.err"
done

# G1 and G2 with fastmath=True (approximate float32 division, exp, log, cos: G2's
# kernel has a third of the instructions per point in its SASS)
echo "G1, G2 with fastmath=True" >> "$OUT/bench.md"
timeout 50 "$PY" benchmarks/gpu.py --only G1,G2 --no-peers --fastmath --repeats 20 \
    >> "$OUT/bench.md" 2>> "$OUT/bench.err"

# G4's A/B: the tape cut off (passes.remat: the (B, K, K) exponentials stacked again),
# signed indices in the kernels (numba's negative-index test back: about twice the
# instructions a step in the scans' SASS), reductions' partials combined in shared
# memory between barriers, not by warp shuffles (5 barriers a forward step, not 1), and
# the carry's row not double buffered (the new carry's stage after a barrier: 2, not 1)
for v in GRADC_REMAT=0 GRADC_CUDA_UNSIGNED=0 GRADC_CUDA_SHUFFLE=0 GRADC_CUDA_ROW_DOUBLE=0; do
    echo "G4 with $v" >> "$OUT/bench.md"
    env "$v" timeout 35 "$PY" benchmarks/gpu.py --only G4 --no-peers --repeats 20 \
        >> "$OUT/bench.md" 2>> "$OUT/bench.err"
done

# scans over one sequence: one block, one block of 1024 threads, the runs outside the
# loops apart, the host loop, JAX (a fixed point's gradient also with its backward
# trips as the host loop, GRADC_CUDA_WHILE_TAPE=0); then a run of small equations as one block or a
# kernel each, n = 256 ... 262144 (where the default limit of 2^14 should be)
timeout 85 "$PY" benchmarks/one_sequence.py --repeats 10 > "$OUT/one_sequence.md" 2>&1
echo "rc $?" >> "$OUT/one_sequence.md"
timeout 25 "$PY" benchmarks/one_run.py --repeats 30 >> "$OUT/one_sequence.md" 2>&1
echo "one_run rc $?" >> "$OUT/one_sequence.md"
# an embedding RNN's gradient (one sequence, a batch sharing the table, per-example):
# scatters added in place, atomically, against the one-hot stage or the host loop
timeout 40 "$PY" benchmarks/embedding.py --repeats 10 >> "$OUT/one_sequence.md" 2>&1
echo "embedding rc $?" >> "$OUT/one_sequence.md"
# an accumulator's gradient: its loops as maps over the steps, or as loops
timeout 30 "$PY" benchmarks/scan_maps.py --repeats 20 >> "$OUT/one_sequence.md" 2>&1
echo "scan_maps rc $?" >> "$OUT/one_sequence.md"

timeout 60 "$PY" benchmarks/gpu_profile.py --host > "$OUT/profile.txt" 2>&1
echo "profile rc $?" >> "$OUT/profile.txt"
# (the Python of a call with the launches stubbed out, on this host: the profile's host
# column less this is what the driver's launches and copies take)
timeout 20 "$PY" benchmarks/cuda_host.py --only G1,G2,G4 --repeats 500 >> "$OUT/profile.txt" 2>&1
# A/B of the host-side paths and the scans' shared rows (numba's launches, CuPy's
# products, every row in global memory), each against the default run above
GRADC_CUDA_DIRECT=0 GRADC_CUDA_GEMM=0 GRADC_CUDA_ROW_SHARED=0 timeout 50 "$PY" \
    benchmarks/gpu_profile.py --only G1,G3,G4 > "$OUT/profile-off.txt" 2>&1
echo "profile (direct, gemm, shared rows off) rc $?" >> "$OUT/profile-off.txt"

# (JAX stays on the CPU in the tests: twelve processes must not each take 75% of the GPU;
# the whole CUDA suite takes over two minutes here: GPU_TESTS picks a part)
JAX_PLATFORMS=cpu XLA_PYTHON_CLIENT_PREALLOCATE=false timeout "${TESTS_S:-50}" "$PY" -m pytest \
    tests/test_cuda.py tests/test_numpy_surface.py -n 12 -v -o addopts="" --tb=short \
    -p no:cacheprovider --timeout 45 -k "${GPU_TESTS:-cuda}" > "$OUT/tests.txt" 2>&1
# (GPU_TESTS unset runs every CUDA test: give it TESTS_S=200 seconds)
echo "tests rc $?" >> "$OUT/tests.txt"

# kernel counters (registers, occupancy, DRAM throughput) of G1's and G2's kernels
NCU=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -n 1)
[ -n "$NCU" ] && timeout 40 "$NCU" --clock-control none -k regex:_k0 -c 4 --metrics \
    launch__registers_per_thread,sm__warps_active.avg.pct_of_peak_sustained_active,\
dram__throughput.avg.pct_of_peak_sustained_elapsed,gpu__time_duration.sum,\
launch__grid_size,smsp__inst_executed.sum \
    "$PY" benchmarks/gpu_profile.py --plain --only G1,G2 > "$OUT/ncu.txt" 2>&1

cat "$OUT/gpu.txt"
grep -E "passed|failed|error" "$OUT/tests.txt" | tail -n 3
grep -E "FAILED|ERROR" "$OUT/tests.txt" | head -n 10
grep -E "^## |launches:|^\| G" "$OUT/profile.txt"
grep -E "^## |launches:" "$OUT/profile-off.txt"
grep -E "registers|warps_active|dram__|duration" "$OUT/ncu.txt" | head -n 12
cat "$OUT/bench.md"
cat "$OUT/one_sequence.md"
