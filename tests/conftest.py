"""Shared test settings.

* A hypothesis profile that keeps the suite fast on two cores.
* The derivative tests run on the reference interpreter (``GRADC_TARGET=numpy``): they
  check the mathematics, and compiling each of their hundreds of small functions with
  Numba would take most of an hour.  The compiled targets are checked against the
  interpreter in ``test_codegen.py`` (every primitive row, forward and reverse),
  ``test_fuse.py`` and ``test_compiled_api.py``, which ask for them explicitly.
  ``GRADC_TARGET=cpu python -m pytest`` runs everything compiled.
* Generated code goes to a cache directory of this test session unless
  ``GRADC_CACHE_DIR`` says otherwise.
* CUDA: without an NVIDIA GPU (no ``/dev/nvidia0``), numba.cuda runs kernels in its
  simulator (``NUMBA_ENABLE_CUDASIM=1``, read when Numba is imported), so that
  ``tests/test_cuda.py`` checks the CUDA target on any machine; with a GPU it runs there.
* No shared libraries are built for the disk cache (``GRADC_NATIVE=0``): each costs
  ~0.2 s of CPU after a compile; ``test_native.py`` turns them on where it tests them.
* Random draws do not depend on the order tests run in: a module's generator (``RNG``,
  ``rng``, ``_RNG``) is reseeded before each test from the test's id.  With one generator
  per module, what a test drew depended on which tests pytest-xdist had given the same
  worker before it, so a tolerance could fail on one run in many.
"""
import os
import tempfile
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

os.environ.setdefault("GRADC_TARGET", "numpy")
os.environ.setdefault("GRADC_NATIVE", "0")
os.environ.setdefault("GRADC_CACHE_DIR", tempfile.mkdtemp(prefix="gradc-test-cache-"))
if not os.path.exists("/dev/nvidia0"):
    os.environ.setdefault("NUMBA_ENABLE_CUDASIM", "1")

settings.register_profile(
    "gradc", deadline=None, max_examples=10, derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.differing_executors])
settings.register_profile("gradc-thorough", deadline=None, max_examples=200,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("GRADC_HYPOTHESIS_PROFILE", "gradc"))


_GENERATOR_NAMES = ("RNG", "rng", "_RNG")


@pytest.fixture(autouse=True)
def _draws_independent_of_test_order(request):
    module = request.module
    for name in _GENERATOR_NAMES:
        if isinstance(getattr(module, name, None), np.random.Generator):
            seed = zlib.crc32(f"{request.node.nodeid}::{name}".encode())
            setattr(module, name, np.random.default_rng(seed))
