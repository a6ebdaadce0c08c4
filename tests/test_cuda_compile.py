"""Build checks that need no GPU.

* The CUDA kernel sources (csrc/cuda/<op>.cu, one per op) are torch-free and compile for sm_80
  and sm_90 with nvcc alone; the ATen glue (csrc/cuda/<op>_glue.cpp) is compiled by setup.py
  on a CUDA torch. Skipped when nvcc is not on PATH.
* CMakeLists.txt configures and builds the CPU ops library against libtorch, and the library
  registers working ops when loaded (marked slow, about 30 s; skipped without cmake).
"""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CUDA_DIR = ROOT / "csrc" / "cuda"
CU_FILES = sorted(CUDA_DIR.glob("*.cu"))
ARCHS = ("80", "90")
NVCC = shutil.which("nvcc")
TORCH_INCLUDE = re.compile(r'^\s*#\s*include\s*[<"](torch|ATen|c10|caffe2)/', re.M)

CMAKE = shutil.which("cmake")
needs_nvcc = pytest.mark.skipif(NVCC is None, reason="nvcc is not on PATH")


def _headers(path: Path, seen: set[Path] | None = None) -> set[Path]:
    """path and the local headers it includes, transitively."""
    seen = set() if seen is None else seen
    if path in seen:
        return seen
    seen.add(path)
    for name in re.findall(r'^\s*#\s*include\s*"([^"]+)"', path.read_text(), re.M):
        dep = (path.parent / name).resolve()
        if dep.is_file():
            _headers(dep, seen)
    return seen


def test_there_are_kernel_sources():
    assert CU_FILES, f"no .cu files under {CUDA_DIR}"


def test_kernel_sources_are_torch_free():
    for cu in CU_FILES:
        for src in _headers(cu):
            assert not TORCH_INCLUDE.search(src.read_text()), f"{src.name} includes a torch header"


@needs_nvcc
def test_nvcc_compiles_every_kernel_source(tmp_path):
    """One nvcc per file with both -gencode targets, the files compiled two at a time."""
    procs = []
    for cu in CU_FILES:
        cmd = [NVCC, "-c", "-O3", f"-I{CUDA_DIR}", str(cu), "-o", str(tmp_path / f"{cu.stem}.o")]
        for arch in ARCHS:
            cmd.append(f"-gencode=arch=compute_{arch},code=sm_{arch}")
        procs.append((cu, cmd))
    failures = []
    for start in range(0, len(procs), 2):
        running = [(cu, subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                         text=True))
                   for cu, cmd in procs[start:start + 2]]
        for cu, p in running:
            out, _ = p.communicate(timeout=300)
            if p.returncode != 0:
                failures.append(f"{cu.name} (exit {p.returncode}):\n{out[-3000:]}")
    assert not failures, "\n\n".join(failures)
    for cu in CU_FILES:
        assert (tmp_path / f"{cu.stem}.o").stat().st_size > 0


@pytest.mark.slow
@pytest.mark.skipif(CMAKE is None, reason="cmake is not on PATH")
def test_cmake_builds_the_cpu_library(tmp_path):
    build = tmp_path / "build"
    cfg = subprocess.run([CMAKE, "-S", str(ROOT), "-B", str(build), "-DCMAKE_BUILD_TYPE=Release",
                          f"-DPython_EXECUTABLE={sys.executable}", "-DUNSC_FAST_CUDA=OFF"],
                         capture_output=True, text=True, timeout=300)
    assert cfg.returncode == 0, cfg.stdout[-3000:] + cfg.stderr[-3000:]
    bld = subprocess.run([CMAKE, "--build", str(build), "-j2"], capture_output=True, text=True,
                         timeout=600)
    assert bld.returncode == 0, bld.stdout[-3000:] + bld.stderr[-3000:]
    libs = list(build.glob("libunsc_fast_ops.*"))
    assert libs, list(build.iterdir())
    # A fresh interpreter: the namespace may be registered once per process.
    check = textwrap.dedent(f"""
        import torch
        torch.ops.load_library({str(libs[0])!r})
        S, X = torch.zeros(5, 5), torch.randn(9, 5)
        torch.ops.unsc_fast.accumulate_(S, X)
        assert torch.allclose(torch.triu(S), torch.triu(X.T @ X), atol=1e-4)
        print("ok")
    """)
    run = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0 and "ok" in run.stdout, run.stdout + run.stderr
