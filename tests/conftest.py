"""Test set-up shared by every test file.

Triton kernels run in CI on the CPU through Triton's interpreter, which must be switched on
before anything imports triton: hence here, at collection time, when no GPU is present.

The ``backend`` fixture runs a kernel test once per backend of :mod:`unsc_fast.dispatch`
(reference, cpp, cuda, triton); see tests/kernel_helpers.py for the gate (skip, or fail with
``UNSC_FAST_REQUIRE_CUDA=1``) and the one tolerance table.
"""
import os
import sys
from pathlib import Path

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

torch.set_num_threads(max(1, min(torch.get_num_threads(), os.cpu_count() or 1)))

# the repository root: tests share their shapes with the benchmarks (benchmarks/shapes.py)
_ROOT = str(Path(__file__).resolve().parents[1])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

import pytest  # noqa: E402

from kernel_helpers import BACKEND_PARAMS, gate  # noqa: E402


@pytest.fixture(params=BACKEND_PARAMS)
def backend(request):
    """A :class:`kernel_helpers.Backend` (name, device) that can run here, else a skip."""
    return gate(request.param)


@pytest.fixture
def threads(request):
    """torch's CPU thread count for the test (the indirect param; None leaves it alone)."""
    old = torch.get_num_threads()
    if getattr(request, "param", None) is not None:
        torch.set_num_threads(request.param)
    yield getattr(request, "param", None)
    torch.set_num_threads(old)
