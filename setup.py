"""Build of the compiled kernels, ``unsc_fast._C`` (metadata lives in pyproject.toml).

    pip install -e . --no-build-isolation      # or: python setup.py build_ext --inplace

The sources are listed once, in csrc/sources.txt (read through csrc/build_rules.py, which the
JIT build and CMakeLists.txt use too): the "core" part (schemas and CPU ops, -O3, OpenMP) and
the "python" part (the module object) always; the "cuda" part (torch-free kernels csrc/cuda/*.cu
and their ATen glue) only by the CUDA rule of csrc/build_rules.py: torch is a CUDA build AND a
CUDA toolkit is found AND the environment variable ``UNSC_FAST_CUDA`` is not ``0`` (a GPU is not
needed to compile). Otherwise it says why it skipped them.
``--no-build-isolation`` matters: the extension must be compiled against the torch that runs it.
"""
from __future__ import annotations

import importlib.util
import os
import sys

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _build_rules():
    """csrc/build_rules.py, loaded by path (setup.py must not import the package)."""
    spec = importlib.util.spec_from_file_location(
        "unsc_fast_build_rules", os.path.join(ROOT, "csrc", "build_rules.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


rules = _build_rules()


def extension_sources(with_cuda: bool) -> list[str]:
    """The extension's sources, relative to the repository root (setuptools wants them so)."""
    parts = ("core", "python") + (("cuda",) if with_cuda else ())
    return rules.sources(*parts, root="csrc")


def _extensions():
    import torch
    from torch.utils.cpp_extension import CppExtension, CUDAExtension

    include_dirs = [os.path.join(ROOT, "csrc")]
    reason = rules.cuda_skip_reason(torch)
    if reason is None:
        # sm_80 (Ampere) and sm_90 (Hopper) unless the user chose their own list.
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0")
        print(f"unsc_fast: building the CPU and CUDA ops (CUDA {torch.version.cuda},"
              f" archs {os.environ['TORCH_CUDA_ARCH_LIST']})", file=sys.stderr)
        return [CUDAExtension(
            "unsc_fast._C", extension_sources(with_cuda=True),
            include_dirs=include_dirs,
            define_macros=[(rules.CUDA_MACRO, "1")],
            extra_compile_args={"cxx": list(rules.CXX_FLAGS), "nvcc": list(rules.NVCC_FLAGS)},
            extra_link_args=list(rules.LINK_FLAGS),
        )]
    print(f"unsc_fast: building the CPU ops only; skipping the CUDA ops because {reason}",
          file=sys.stderr)
    return [CppExtension(
        "unsc_fast._C", extension_sources(with_cuda=False), include_dirs=include_dirs,
        extra_compile_args={"cxx": list(rules.CXX_FLAGS)},
        extra_link_args=list(rules.LINK_FLAGS),
    )]


def _build_ext():
    from torch.utils.cpp_extension import BuildExtension
    return BuildExtension.with_options(use_ninja=True)


if __name__ == "__main__":
    setup(ext_modules=_extensions(), cmdclass={"build_ext": _build_ext()})
