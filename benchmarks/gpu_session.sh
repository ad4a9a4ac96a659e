#!/usr/bin/env bash
# What a GPU session runs (device time is short: one script, results under $OUT):
# the CUDA tests that matter most on real hardware, then G1-G4 without and with
# gradc's caching allocator.  Usage: OUT=/some/dir bash benchmarks/gpu_session.sh
set -u
OUT=${OUT:-/tmp/gpu-out}
mkdir -p "$OUT"
export PYTHONPATH=.
nvidia-smi -L > "$OUT/gpu.txt" 2>&1
python -c "import numba, numpy; print('numba', numba.__version__, 'numpy', numpy.__version__)" >> "$OUT/gpu.txt" 2>&1
# (decomposition and argsort rows: CuPy's cuSOLVER and CUB on a machine with CuPy;
# integers and sorting on the real compiler: wrapping int8, NumPy's edges)
timeout 240 python -m pytest tests/test_cuda.py tests/test_numpy_surface.py -q \
    --maxfail=10 -o addopts="" -p no:cacheprovider -k "programs or vmap or device or \
    fresh or scan or narrow or integer_division or sorting or \
    (rows_on_cuda and (cholesky or eigh or svd or det or argsort or shl or shr or floordiv))" \
    > "$OUT/tests.txt" 2>&1
echo "tests rc $?" >> "$OUT/tests.txt"
timeout 200 python benchmarks/gpu.py --repeats 20 > "$OUT/bench.md" 2> "$OUT/bench.err"
echo "rc $?" >> "$OUT/bench.err"
GRADC_CUDA_POOL=1 timeout 150 python benchmarks/gpu.py --repeats 20 --no-peers \
    > "$OUT/bench-pool.md" 2> "$OUT/bench-pool.err"
echo "rc $?" >> "$OUT/bench-pool.err"
tail -n 3 "$OUT/tests.txt"; cat "$OUT/bench.md" "$OUT/bench-pool.md"
