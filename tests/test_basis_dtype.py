"""Bases are stored in their layer's weight dtype by default (a bf16 model gets bf16 bases,
computed in float64/float32 first); ``dtype=`` overrides it; files keep the dtype; the
orthonormality tolerance of validation follows the dtype and d (``bases.ortho_tol``)."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import unsc_fast as uf
from unsc_fast.bases import ortho_tol, store_dtype

LOW = (torch.bfloat16, torch.float16)


def _model(dtype):
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(24, 16), nn.Tanh(), nn.Linear(16, 4)).to(dtype)


def _moments(dtype):
    model = _model(dtype)
    x = torch.randn(64, 24).to(dtype)
    return model, uf.SecondMoments(model).collect([x], progress=False)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32, torch.float64])
@pytest.mark.parametrize("method", ["eigh", "fast"])
def test_default_dtype_is_the_weights_and_projection_works_out_of_the_box(dtype, method):
    model, m = _moments(dtype)
    bases = uf.NullSpace.from_moments(m, "energy:0.9", method=method)
    assert {lb.dtype for lb in bases.values()} == {dtype}
    bases.validate()
    model(torch.randn(8, 24).to(dtype)).sum().backward()
    uf.project_(model, bases)                                 # no .to(dtype) needed


def test_override_and_save_load_keep_the_dtype(tmp_path):
    _, m = _moments(torch.bfloat16)
    bases = uf.NullSpace.from_moments(m, "energy:0.9", dtype=torch.float32)
    assert {lb.dtype for lb in bases.values()} == {torch.float32}
    low = uf.NullSpace.from_moments(m, "energy:0.9")
    for name in ("b.safetensors", "b.pt"):
        low.save(tmp_path / name)
        loaded = uf.NullSpace.load(tmp_path / name)
        assert {lb.dtype for lb in loaded.values()} == {torch.bfloat16}
        for n, lb in low.items():
            assert torch.equal(loaded[n].bases[0], lb.bases[0])
    with pytest.raises(TypeError, match="dtype"):
        uf.NullSpace.from_moments(m, dtype=torch.int8)
    assert store_dtype(torch.int8) == torch.float32 and store_dtype(torch.float16) == torch.float16


def test_grow_stores_in_the_weights_dtype():
    _, m = _moments(torch.float64)
    assert uf.NullSpace.grow([m], eps=0.9)["0"].dtype == torch.float64


def test_fast_bases_stored_in_float64_are_orthonormal_to_float64_round_off(tmp_path):
    # the fast method computes in float32; stored in float64 it is re-orthonormalised, so a
    # saved file passes the float64 tolerance when loaded
    torch.manual_seed(1)
    model = nn.Linear(256, 8).double()
    x = torch.randn(512, 256, dtype=torch.float64) * torch.arange(1, 257) ** -1.0
    m = uf.SecondMoments(model, dtype=torch.float64).collect([x], progress=False)
    bases = uf.NullSpace.from_moments(m, "energy:0.9", method="fast")
    B = bases[""].bases[0]
    assert bases[""].subtract == [True] and B.dtype == torch.float64
    err = float((B.mT @ B - torch.eye(B.shape[1], dtype=torch.float64)).abs().max())
    assert err < ortho_tol(torch.float64, 256) < 1e-12
    bases.save(tmp_path / "b.safetensors")
    uf.NullSpace.load(tmp_path / "b.safetensors")


def _orthonormal(d, m, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.linalg.qr(torch.randn(d, m, generator=g, dtype=torch.float64))[0]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32, torch.float64])
@pytest.mark.parametrize("d", [4, 256, 2048])
def test_validation_tolerance_per_dtype(dtype, d):
    """A float64 basis rounded to ``dtype`` passes; damage of a few times the tolerance (a
    column scaled by 1 + 3·tol) is refused, at every dtype and width."""
    m = max(1, d // 8)
    B = _orthonormal(d, m)
    tol = ortho_tol(dtype, d)
    ok = uf.NullSpace({"l": uf.LayerBasis("linear", d, [B.to(dtype)], [True], [m])})
    ok.validate()
    bad = B.clone()
    bad[:, 0] *= 1 + 3 * tol
    broken = uf.NullSpace({"l": uf.LayerBasis("linear", d, [bad.to(dtype)], [True], [m])})
    with pytest.raises(ValueError, match="orthonormal"):
        broken.validate()
    eps = torch.finfo(dtype).eps
    assert 2 * eps <= tol <= 2 * eps + 64 * max(eps, 2.0 ** -23) * d ** 0.5
    if dtype in LOW:
        assert tol < 0.02                 # rounding, not width, sets it: tight at any d


def test_a_bf16_basis_costs_little_protection():
    """The measurement behind the default (benchmarks/basis_dtype.py, d = 1024 in the README),
    at d = 256: at the paper's ε the bf16 basis changes the residual on D_r by < 1 %; on an
    exact null space it lets through about as much as rounding the gradient to bf16 does."""
    from benchmarks.basis_dtype import one
    paper = one(256, 0.99, None)
    assert abs(paper["fp32 G, low B"] / paper["fp32 G, fp32 B"] - 1) < 0.01
    exact = one(256, 1.0, 64)
    assert exact["fp32 G, fp32 B"] < 1e-5 < exact["fp32 G, low B"] < 1e-2
    assert exact["low G, low B"] < 3 * exact["low G, fp32 B"]
    assert exact["low W step"] > 10 * exact["low G, low B"]   # weight rounding dominates
