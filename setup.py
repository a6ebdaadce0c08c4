"""Build of the compiled kernels, ``unsc_fast._C`` (metadata lives in pyproject.toml).

    pip install -e . --no-build-isolation      # or: python setup.py build_ext --inplace

Always builds the CPU ops (csrc/*.cpp, -O3, OpenMP). Adds the CUDA ops (csrc/cuda/*.cu and the
ATen glue csrc/cuda/*.cpp) only when torch is a CUDA build, a CUDA toolchain is found and the
environment variable ``UNSC_FAST_CUDA`` is not ``0``; otherwise it says why it skipped them.
``--no-build-isolation`` matters: the extension must be compiled against the torch that runs it.
"""
from __future__ import annotations

import glob
import os
import sys

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _rel(pattern: str) -> list[str]:
    return sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, pattern)))


def _cuda_skip_reason(torch) -> str | None:
    """Why the CUDA ops are not built, or None when they are."""
    if os.environ.get("UNSC_FAST_CUDA", "").strip() == "0":
        return "UNSC_FAST_CUDA=0"
    if torch.version.cuda is None:
        return f"torch {torch.__version__} is a CPU-only build"
    from torch.utils.cpp_extension import CUDA_HOME
    if CUDA_HOME is None:
        return "no CUDA toolkit found (set CUDA_HOME to the toolkit root)"
    return None


def _extensions():
    import torch
    from torch.utils.cpp_extension import CppExtension, CUDAExtension

    cpp_sources = _rel("csrc/*.cpp")
    cxx_flags = ["-O3", "-fopenmp"]
    link_flags = ["-fopenmp"]
    include_dirs = [os.path.join(ROOT, "csrc")]

    reason = _cuda_skip_reason(torch)
    if reason is None:
        # sm_80 (Ampere) and sm_90 (Hopper) unless the user chose their own list.
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0")
        print(f"unsc_fast: building the CPU and CUDA ops (CUDA {torch.version.cuda},"
              f" archs {os.environ['TORCH_CUDA_ARCH_LIST']})", file=sys.stderr)
        return [CUDAExtension(
            "unsc_fast._C",
            cpp_sources + _rel("csrc/cuda/*.cu") + _rel("csrc/cuda/*.cpp"),
            include_dirs=include_dirs,
            define_macros=[("UNSC_FAST_WITH_CUDA", "1")],
            extra_compile_args={"cxx": cxx_flags, "nvcc": ["-O3", "-lineinfo"]},
            extra_link_args=link_flags,
        )]
    print(f"unsc_fast: building the CPU ops only; skipping the CUDA ops because {reason}",
          file=sys.stderr)
    return [CppExtension(
        "unsc_fast._C", cpp_sources, include_dirs=include_dirs,
        extra_compile_args={"cxx": cxx_flags}, extra_link_args=link_flags,
    )]


def _build_ext():
    from torch.utils.cpp_extension import BuildExtension
    return BuildExtension.with_options(use_ninja=True)


setup(ext_modules=_extensions(), cmdclass={"build_ext": _build_ext()})
