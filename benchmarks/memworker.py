"""Subprocess that measures the peak extra resident memory of one case's implementations (CPU).

Reads ``{"cases": [{"spec": CaseSpec dict, "runners": [...]}, ...], "threads": n}`` on stdin
and prints one JSON line ``{"results": [{runner: bytes, ...}, ...]}``. Run by
:func:`benchmarks.timing.cpu_peak_bytes_subprocess` with ``MALLOC_MMAP_THRESHOLD_=65536``
(normally one case per process); see :mod:`benchmarks.timing` for the method.
"""
from __future__ import annotations

import gc
import json
import sys


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _reset_hwm() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def measure_case(spec_dict: dict, runners: list[str]) -> dict:
    import torch

    from .cases import make_inputs, make_runner
    from .shapes import CaseSpec

    spec = CaseSpec.from_dict(spec_dict)
    inp = make_inputs(spec, torch.device("cpu"))
    out: dict = {}
    for name in runners:
        try:
            runner = make_runner(inp, name)
            runner.fn()                      # warm-up: code pages, thread pools, lazy init
            gc.collect()
            reset = _reset_hwm()
            rss0 = _status_kib("VmRSS")
            hwm0 = _status_kib("VmHWM")
            runner.fn()
            hwm1 = _status_kib("VmHWM")
            base = rss0 if reset else max(rss0, hwm0)
            out[name] = max(0, hwm1 - base) * 1024
            if not reset:
                out["_note"] = "clear_refs unavailable: lower bound (peak above the prior peak)"
            del runner
            gc.collect()
        except Exception as exc:  # report, never hide
            out[name] = None
            out.setdefault("_error", f"{name}: {type(exc).__name__}: {exc}")
    del inp
    gc.collect()
    return out


def main() -> int:
    """stdin: ``{"cases": [{"spec": ..., "runners": [...]}, ...], "threads": n}``;
    stdout: one JSON line ``{"results": [{runner: bytes, ...}, ...]}``."""
    req = json.loads(sys.stdin.read())
    import torch

    torch.set_num_threads(int(req.get("threads") or torch.get_num_threads()))
    results = [measure_case(c["spec"], c["runners"]) for c in req["cases"]]
    print(json.dumps({"results": results}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
