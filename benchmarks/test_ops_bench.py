"""pytest-benchmark versions of the op timings (small sizes): ``pytest benchmarks/ --benchmark-only``.

Not collected by the plain test run (pyproject's ``testpaths`` is ``["tests"]``). Every
backend available here is discovered at collection time through
``unsc_fast.dispatch.availability()`` and benchmarked next to the best plain-torch primitive
(``torch``); a group per case lets pytest-benchmark compare them side by side. Triton on CPU
tensors (the interpreter) is left out. CUDA cases run when a GPU is present.
"""
from __future__ import annotations

import pytest
import torch

from .cases import make_inputs, make_runner, runner_names
from .shapes import accumulate_case, conv_case, project_case

CASES = [
    accumulate_case("resnet18.fc", 1024),
    accumulate_case("vit_b.attn.qkv", 1024),
    conv_case("resnet18.layer1.0.conv1", 2),
    conv_case("resnet18.layer2.0.conv1", 2),
    conv_case("allcnn.features.4", 2),
    project_case("allcnn", 0.25),
    project_case("vit_b", 0.05, only=["attn.qkv", "mlp.fc1"]),
]
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _params():
    out = []
    for dev in DEVICES:
        for spec in CASES:
            inp = make_inputs(spec, torch.device(dev))
            names, _ = runner_names(inp)
            for name in names:
                out.append(pytest.param(dev, spec, name,
                                        id=f"{dev}-{spec.op}-{spec.shape_set}-{name}"))
    return out


@pytest.mark.parametrize("device,spec,impl", _params())
def test_op(benchmark, device, spec, impl):
    dev = torch.device(device)
    runner = make_runner(make_inputs(spec, dev), impl)
    benchmark.group = f"{device} {spec.op} {spec.shape_set} {spec.label}"
    benchmark.extra_info.update(op=spec.op, shape_set=spec.shape_set, label=spec.label,
                                dtype=spec.dtype, impl=impl)
    if dev.type == "cuda":
        def fn():
            runner.fn()
            torch.cuda.synchronize(dev)
    else:
        fn = runner.fn
    fn()  # warm-up (and Triton autotuning) outside the timed rounds
    benchmark.pedantic(fn, rounds=7, iterations=1, warmup_rounds=1)
