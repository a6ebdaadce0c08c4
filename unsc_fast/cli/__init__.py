"""The command line, ``unsc-fast`` / ``python -m unsc_fast``: jobs, TOML config, checkpoints.

The top floor of the package: it imports the library core and the evaluation lab; neither
imports it.
"""
from .main import main

__all__ = ["main"]
