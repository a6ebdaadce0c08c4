"""Build rules of the unsc_fast ops, in one place: which sources, and when CUDA is built.

Used by setup.py and by the JIT build (``unsc_fast/kernels/cpp.py``), which load this file by
path (it imports nothing from the package, and torch only inside the functions); CMakeLists.txt
reads the same ``sources.txt`` and mirrors the CUDA rule with its option ``UNSC_FAST_CUDA``.

The CUDA rule: the CUDA ops are compiled when
    torch is a CUDA build (``torch.version.cuda``)  AND  a CUDA toolkit is found
    (``torch.utils.cpp_extension.CUDA_HOME``)  AND  the environment variable
    ``UNSC_FAST_CUDA`` is not ``0``.
A CUDA device is NOT required: compiling needs only the toolkit, and the ops check the
device when called.
"""
from __future__ import annotations

import os
from pathlib import Path

CSRC = Path(__file__).resolve().parent
SOURCES_FILE = CSRC / "sources.txt"
PARTS = ("core", "python", "cuda")
CUDA_ENV = "UNSC_FAST_CUDA"

# Compiler flags shared by setup.py and the JIT build (CMake sets its own equivalents).
CXX_FLAGS = ["-O3", "-fopenmp"]
LINK_FLAGS = ["-fopenmp"]
NVCC_FLAGS = ["-O3", "-lineinfo"]
CUDA_MACRO = "UNSC_FAST_WITH_CUDA"  # defined (=1) in CUDA builds: unsc_fast._C.with_cuda


def sources(*parts: str, root: Path | None = None) -> list[str]:
    """The source files of the given parts (see sources.txt), in file order, as paths under
    ``root`` (default: this csrc/ folder, absolute)."""
    unknown = set(parts) - set(PARTS)
    if unknown:
        raise ValueError(f"unknown source parts {sorted(unknown)}; parts are {PARTS}")
    base = CSRC if root is None else Path(root)
    out = []
    for lineno, line in enumerate(SOURCES_FILE.read_text().splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        fields = line.split()
        if len(fields) != 2 or fields[0] not in PARTS:
            raise ValueError(f"{SOURCES_FILE.name}:{lineno}: expected '<part> <path>' with part"
                             f" in {PARTS}, got {line!r}")
        if fields[0] in parts:
            out.append(str(base / fields[1]))
    return out


def cuda_skip_reason(torch=None) -> str | None:
    """Why the CUDA ops are NOT built, or None when they are (the CUDA rule above)."""
    if os.environ.get(CUDA_ENV, "").strip() == "0":
        return f"{CUDA_ENV}=0"
    if torch is None:
        import torch
    if torch.version.cuda is None:
        return f"torch {torch.__version__} is a CPU-only build"
    from torch.utils.cpp_extension import CUDA_HOME
    if CUDA_HOME is None:
        return "no CUDA toolkit found (set CUDA_HOME to the toolkit root)"
    return None
