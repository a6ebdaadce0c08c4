"""Timing, roofline and peak-memory measurement, plus a description of the machine.

Timing: every implementation of a case is warmed up, then timed in *interleaved rounds*
(A B C, B C A, ...), so that the noise of a shared machine falls on all of them alike. A
sample is one call, or a few calls averaged when one call is shorter than ``min_sample_s``.
On CUDA samples are timed with CUDA events around the calls. Reported: the median, the
quartiles (IQR) and min/max of the samples.

Roofline: measured in the same process, same run: the best rate of a large copy (bytes read
plus written) and of a large square matmul per dtype.

Peak memory:

- CUDA: ``torch.cuda.max_memory_allocated()`` during one call, minus what was allocated
  before it (inputs and state excluded); allocations outside torch's allocator are not seen.
- CPU: *peak extra resident memory* of one call, measured in a fresh subprocess per case
  (``python -m benchmarks.memworker``): inputs are built, each implementation is called once
  to warm up, the kernel's high-water mark is reset (``/proc/self/clear_refs``), and the peak
  ``VmHWM`` during one more call minus the ``VmRSS`` just before it is reported. glibc is told
  (``MALLOC_MMAP_THRESHOLD_``) to serve every block of 64 KiB or more with mmap, so freed
  buffers leave the resident set and cannot hide the next one's cost. This counts everything
  the call touches (torch tensors, the extension's own buffers, BLAS packing buffers) but not
  memory that a library keeps cached from the warm-up call. Resolution: one page.
  ``--memory shared`` (used by the smoke test) measures all cases in one worker process
  after the timings instead: the same method, cheaper, with the heap state of earlier cases.
"""
from __future__ import annotations

import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn: Callable, inner: int, device: torch.device) -> float:
    """Seconds per call of ``inner`` back-to-back calls."""
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(inner):
            fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3 / inner
    t0 = time.perf_counter()
    for _ in range(inner):
        fn()
    return (time.perf_counter() - t0) / inner


def summarize(samples: list[float]) -> dict:
    xs = sorted(samples)
    if len(xs) >= 2:
        q1, _, q3 = statistics.quantiles(xs, n=4, method="inclusive")
    else:
        q1 = q3 = xs[0]
    return {"median_s": statistics.median(xs), "q1_s": q1, "q3_s": q3, "iqr_s": q3 - q1,
            "min_s": xs[0], "max_s": xs[-1], "reps": len(xs)}


def time_interleaved(fns: dict[str, Callable], device: torch.device, *, reps: int,
                     min_reps: int = 3, warmup: int = 1, min_sample_s: float = 2e-3,
                     max_case_s: float = 10.0) -> dict[str, dict]:
    """Time each function in interleaved rounds; returns name -> summary (plus ``inner``)."""
    inner: dict[str, int] = {}
    for name, fn in fns.items():
        for _ in range(max(warmup, 0)):
            fn()
        sync(device)
        t = _timed(fn, 1, device)
        inner[name] = 1 if t >= min_sample_s else min(1000, math.ceil(min_sample_s / max(t, 1e-7)))
    names = list(fns)
    samples: dict[str, list[float]] = {n: [] for n in names}
    t_start = time.perf_counter()
    for r in range(reps):
        order = names[r % len(names):] + names[: r % len(names)]
        for name in order:
            sync(device)
            samples[name].append(_timed(fns[name], inner[name], device))
        if r + 1 >= min(min_reps, reps) and time.perf_counter() - t_start > max_case_s:
            break
    return {n: {**summarize(samples[n]), "inner": inner[n]} for n in names}


# ---- roofline --------------------------------------------------------------------------------

def measure_roofline(device: torch.device, preset: str) -> dict:
    """Best copy bandwidth (GB/s, read + write) and matmul rates (TFLOP/s) per dtype."""
    small = preset == "smoke"
    if device.type == "cuda":
        copy_elems = (64 if small else 256) * 2**20          # float32: 256 MiB / 1 GiB
        mm = {"float32": 8192, "bfloat16": 8192, "float16": 8192, "float64": 4096}
        if small:
            mm = {k: 1024 for k in mm}
        reps = 5 if small else 20
    else:
        copy_elems = (8 if small else 64) * 2**20            # float32: 32 MiB / 256 MiB
        mm = {"float32": 512 if small else 2048, "float64": 256 if small else 1024}
        reps = 2 if small else 7
    out: dict = {"copy_bytes": copy_elems * 4 * 2, "matmul_n": mm}
    src = torch.empty(copy_elems, dtype=torch.float32, device=device).uniform_()
    dst = torch.empty_like(src)
    t = _best(lambda: dst.copy_(src), device, reps)
    out["copy_GBps"] = copy_elems * 4 * 2 / t / 1e9
    del src, dst
    out["matmul_TFLOPs"] = {}
    for name, n in mm.items():
        dt = getattr(torch, name)
        a = torch.randn(n, n, device=device).to(dt)
        b = torch.randn(n, n, device=device).to(dt)
        c = torch.empty(n, n, device=device, dtype=dt)
        t = _best(lambda: torch.mm(a, b, out=c), device, reps)
        out["matmul_TFLOPs"][name] = 2 * n**3 / t / 1e12
        del a, b, c
    if device.type == "cuda":
        torch.cuda.empty_cache()
    out["note"] = ("copy: best of repeated dst.copy_(src), bytes read + written; matmul: best"
                   " of repeated torch.mm; float32 at torch's default precision"
                   f" ({torch.get_float32_matmul_precision()!r})")
    return out


def _best(fn: Callable, device: torch.device, reps: int) -> float:
    fn()
    sync(device)
    return min(_timed(fn, 1, device) for _ in range(reps))


def roofline_pct(flops: float, nbytes: float, seconds: float, roof: dict,
                 compute_dtype: str) -> dict:
    """Achieved rates and percent of the attainable rate min(peak, intensity x bandwidth)."""
    gbps = nbytes / seconds / 1e9
    tflops = flops / seconds / 1e12
    peak = roof.get("matmul_TFLOPs", {}).get(compute_dtype)
    bw = roof.get("copy_GBps")
    res = {"GBps": gbps, "TFLOPs": tflops, "pct_bw": None, "pct_peak_flops": None,
           "pct_roofline": None, "bound": None}
    if bw:
        res["pct_bw"] = 100 * gbps / bw
    if peak:
        res["pct_peak_flops"] = 100 * tflops / peak
    if bw and peak and nbytes > 0:
        attainable = min(peak, flops / nbytes * bw / 1e3)   # TFLOP/s
        res["pct_roofline"] = 100 * tflops / attainable
        res["bound"] = "memory" if attainable < peak else "compute"
    return res


# ---- peak memory ------------------------------------------------------------------------------

def cuda_peak_bytes(fn: Callable, device: torch.device) -> int:
    """Extra bytes torch's allocator held at peak during one call of ``fn`` (warmed up)."""
    fn()
    torch.cuda.synchronize(device)
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    torch.cuda.synchronize(device)
    return int(torch.cuda.max_memory_allocated(device) - base)


CPU_MEMORY_METHOD = (
    "peak extra resident memory (VmHWM after the call - VmRSS before it) of one call after one"
    " warm-up call, fresh subprocess per case, glibc MALLOC_MMAP_THRESHOLD_=65536, high-water"
    " mark reset through /proc/self/clear_refs; inputs and state excluded")
CUDA_MEMORY_METHOD = ("torch.cuda.max_memory_allocated during one call minus memory_allocated"
                      " before it, after one warm-up call; inputs and state excluded")


def cpu_peak_bytes_subprocess(cases: list[tuple[dict, list[str]]], threads: int,
                              timeout_s: float = 600) -> list[dict]:
    """Run the memory worker on (spec dict, runner names) cases, all in one fresh process.

    Returns one dict per case: {runner: bytes or None}, with '_error' when it failed.
    """
    env = dict(os.environ)
    env["MALLOC_MMAP_THRESHOLD_"] = "65536"
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"]
                                      if env.get("PYTHONPATH") else "")
    env.pop("TRITON_INTERPRET", None)
    payload = json.dumps({"cases": [{"spec": s, "runners": r} for s, r in cases],
                          "threads": threads})
    try:
        proc = subprocess.run([sys.executable, "-m", "benchmarks.memworker"], input=payload,
                              capture_output=True, text=True, env=env, cwd=str(REPO),
                              timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return [{"_error": f"memory worker timed out after {timeout_s:.0f} s"}] * len(cases)
    if proc.returncode != 0:
        return [{"_error": f"memory worker failed: {proc.stderr.strip()[-500:]}"}] * len(cases)
    try:
        return json.loads(proc.stdout.strip().splitlines()[-1])["results"]
    except (ValueError, IndexError, KeyError):
        return [{"_error": f"memory worker printed no result: {proc.stdout[-300:]}"}] * len(cases)


# ---- machine ----------------------------------------------------------------------------------

def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _git(*args: str) -> str | None:
    try:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True,
                              timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def machine_info(device: torch.device) -> dict:
    info = {
        "device": device.type,
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "git_commit": _git("rev-parse", "HEAD"),
        "git_dirty": bool(_git("status", "--porcelain", "--untracked-files=no")),
    }
    try:
        import triton
        info["triton"] = triton.__version__
    except ImportError:
        info["triton"] = None
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(gpu=props.name, gpu_memory_GiB=round(props.total_memory / 2**30, 1),
                    sm_count=props.multi_processor_count, cuda=torch.version.cuda,
                    capability=".".join(map(str, torch.cuda.get_device_capability(device))))
    try:
        info["loadavg_start"] = os.getloadavg()
    except OSError:
        pass
    return info
