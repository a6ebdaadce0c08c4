"""What the command-line tests share: the repository root, a tiny job's flags, and an
in-process ``unsc-fast`` call."""
from __future__ import annotations

from pathlib import Path

from unsc_fast.cli import main

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--dataset", "synthetic", "--model", "mlp", "--width", "0.125", "--quiet"]


def run(*args) -> int:
    """``unsc-fast ARGS`` in this process; its exit code."""
    return main([str(a) for a in args])
