"""Property-based tests (hypothesis) of the ops' contracts on random shapes and values,
extreme scales included: every available CPU backend against float64 math, exact
power-of-two scale equivariance, and bad input refused before anything is written."""
import pytest
import torch

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings, strategies as st  # noqa: E402

from unsc_fast import dispatch, ops  # noqa: E402
from unsc_fast.geometry import ConvGeometry  # noqa: E402

BACKENDS = [b for b in ("reference", "cpp")
            if dispatch.availability().get(b) == "available"]
SETTINGS = settings(max_examples=25, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])

dtypes = st.sampled_from([torch.float32, torch.float64])
# power-of-two scales: inside float32's range after squaring a sum of rows
scales = st.integers(-50, 50)


def _tensor(seed: int, shape, dtype, scale: int = 0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=g, dtype=torch.float64) * 2.0 ** scale).to(dtype)


@SETTINGS
@given(n=st.integers(0, 40), d=st.integers(1, 24), dtype=dtypes, scale=scales,
       seed=st.integers(0, 2**16), backend=st.sampled_from(BACKENDS))
def test_accumulate_matches_float64_at_any_scale(n, d, dtype, scale, seed, backend):
    X = _tensor(seed, (n, d), dtype, scale)
    S0 = torch.triu(_tensor(seed + 1, (d, d), dtype, 2 * scale))
    S = S0.clone()
    ops.accumulate_(S, X, backend=backend)
    want = S0.double() + X.double().T @ X.double()
    tol = (2e-6 if dtype == torch.float32 else 1e-13) * (n + d + 1) * 4.0 ** scale
    assert torch.all(torch.isfinite(S))
    diff = (torch.triu(S.double()) - torch.triu(want)).abs().max() if d else 0.0
    assert diff <= tol


@SETTINGS
@given(n=st.integers(1, 30), d=st.integers(1, 16), k=st.integers(-40, 40),
       seed=st.integers(0, 2**16), backend=st.sampled_from(BACKENDS))
def test_accumulate_is_exactly_scale_equivariant(n, d, k, seed, backend):
    """Scaling X by 2^k scales S by 4^k exactly (no rounding change) in float32."""
    X = _tensor(seed, (n, d), torch.float32)
    a, b = torch.zeros(d, d), torch.zeros(d, d)
    ops.accumulate_(a, X, backend=backend)
    ops.accumulate_(b, X * 2.0 ** k, backend=backend)
    assert torch.equal(torch.triu(b), torch.triu(a) * 4.0 ** k)


@SETTINGS
@given(N=st.integers(0, 3), C=st.sampled_from([1, 2, 4]), H=st.integers(3, 7),
       W=st.integers(3, 7), k=st.integers(1, 3), groups=st.sampled_from([1, 2]),
       scale=scales, seed=st.integers(0, 2**16), backend=st.sampled_from(BACKENDS))
def test_accumulate_conv_matches_unfold(N, C, H, W, k, groups, scale, seed, backend):
    if C % groups:
        groups = 1
    geom = ConvGeometry(kernel_size=(k, k), stride=(1, 1), dilation=(1, 1),
                        pad=(0, 0, 0, 0), padding_mode="zeros", groups=groups)
    x = _tensor(seed, (N, C, H, W), torch.float64, scale)
    d = geom.patch_dim(C)
    S = torch.zeros(groups, d, d, dtype=torch.float64)
    ops.accumulate_conv_(S, x, geom, backend=backend)
    P = torch.nn.functional.unfold(x, (k, k))                 # (N, C·k·k, L)
    L = (H - k + 1) * (W - k + 1)
    P = P.reshape(N, groups, d, L).permute(1, 0, 3, 2).reshape(groups, N * L, d)
    want = P.mT @ P
    tol = 1e-12 * (N * H * W + 1) * 4.0 ** scale
    assert (torch.triu(S) - torch.triu(want)).abs().max() <= tol


def _maxabs(t) -> float:
    return float(t.abs().max()) if t.numel() else 0.0


def _orthonormal(seed: int, d: int, m: int, dtype):
    if m == 0:
        return torch.zeros(d, 0, dtype=dtype)
    g = torch.Generator().manual_seed(seed)
    return torch.linalg.qr(torch.randn(d, m, generator=g, dtype=torch.float64))[0].to(dtype)


@SETTINGS
@given(rows=st.integers(0, 20), d=st.integers(1, 24), frac=st.floats(0, 1), sub=st.booleans(),
       dtype=dtypes, scale=st.integers(-60, 60), seed=st.integers(0, 2**16),
       backend=st.sampled_from(BACKENDS))
def test_project_grads_is_the_projection_at_any_scale(rows, d, frac, sub, dtype, scale, seed,
                                                      backend):
    m = int(round(frac * d))
    B = _orthonormal(seed, d, m, dtype)
    G0 = _tensor(seed + 1, (rows, d), dtype, scale)
    G = G0.clone()
    ops.project_grads_([G], [B], [sub], backend=backend)
    Gd, Bd = G0.double(), B.double()
    want = Gd - Gd @ Bd @ Bd.T if sub else Gd @ Bd @ Bd.T
    eps = 1e-5 if dtype == torch.float32 else 1e-12
    assert torch.all(torch.isfinite(G))
    assert _maxabs(G.double() - want) <= eps * d * 2.0 ** scale
    # idempotent: projecting again changes (almost) nothing
    H = G.clone()
    ops.project_grads_([H], [B], [sub], backend=backend)
    assert _maxabs(H.double() - G.double()) <= eps * d * 2.0 ** scale


@SETTINGS
@given(rows=st.integers(1, 8), d=st.integers(2, 12), seed=st.integers(0, 2**16),
       bad=st.sampled_from(["dtype", "rows", "alias", "broadcast", "length", "device_list"]))
def test_bad_project_grads_input_writes_nothing(rows, d, seed, bad):
    G = _tensor(seed, (rows, d), torch.float32)
    B = _orthonormal(seed, d, 1, torch.float32)
    G2 = _tensor(seed + 1, (rows, d), torch.float32)
    keep, keep2 = G.clone(), G2.clone()
    grads, bases, subs = [G2, G], [B, B], [True, True]
    if bad == "dtype":
        bases[1] = B.double()
    elif bad == "rows":
        bases[1] = _orthonormal(seed, d + 1, 1, torch.float32)
    elif bad == "alias":
        bases[1] = G.T[:, :1]
    elif bad == "broadcast":
        grads[1] = G[:1].expand(rows + 1, d)
    elif bad == "length":
        subs = [True]
    else:
        grads = [G2, G, G2]
        bases, subs = [B] * 3, [True] * 3
    with pytest.raises((ValueError, TypeError)):
        ops.project_grads_(grads, bases, subs)
    assert torch.equal(G, keep) and torch.equal(G2, keep2)


@SETTINGS
@given(n=st.integers(1, 10), d=st.integers(1, 10), seed=st.integers(0, 2**16),
       bad=st.sampled_from(["shape", "dtype", "alias", "noncontig", "int"]))
def test_bad_accumulate_input_writes_nothing(n, d, seed, bad):
    S = torch.triu(_tensor(seed, (d, d), torch.float32))
    X = _tensor(seed + 1, (n, d), torch.float32)
    keep = S.clone()
    if bad == "shape":
        X = _tensor(seed, (n, d + 1), torch.float32)
    elif bad == "dtype":
        X = X.to(torch.int32)
    elif bad == "alias":
        X = S[: max(1, d // 2)]
    elif bad == "noncontig":
        d = max(d, 2)
        X = _tensor(seed + 1, (n, d), torch.float32)
        S = torch.zeros(d, 2 * d)[:, ::2]
        keep = S.clone()
    else:
        S = S.to(torch.int64)
        keep = S.clone()
    with pytest.raises((ValueError, TypeError)):
        ops.accumulate_(S, X)
    assert torch.equal(S, keep)
