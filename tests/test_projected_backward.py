"""projected_backward: Linear gradients projected inside backward (from the inputs when the
batch has fewer rows than the layer has outputs) equal project_ after a plain backward."""
import pytest
import torch
from torch import nn

import unsc_fast as uf


def _model(include_bias: bool) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(), nn.Flatten(),
                         nn.Linear(4 * 5 * 5, 60), nn.ReLU(), nn.Linear(60, 7)).double()


def _bases(model, include_bias: bool, store: str):
    m = uf.SecondMoments(model, dtype=torch.float64, include_bias=include_bias)
    m.collect([torch.randn(30, 2, 5, 5, dtype=torch.float64)], progress=False)
    return uf.NullSpace.from_moments(m, "energy:0.95", store=store, dtype=torch.float64,
                                     include_bias=include_bias)


def _assert_like_project_(model, bases, loss, rest=None, rtol=1e-10, atol=1e-12):
    """loss().backward() then project_ over all bases, against the same step inside
    projected_backward (then project_ over what it leaves, which must be ``rest``)."""
    model.zero_grad()
    loss().backward()
    uf.project_(model, bases)
    expected = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    with uf.projected_backward(model, bases) as left:
        loss().backward()
        if rest is not None:
            assert list(left) == rest
        uf.project_(model, left)
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, expected[n], rtol=rtol, atol=atol)


@pytest.mark.parametrize("include_bias", [False, True])
@pytest.mark.parametrize("store", ["core", "null"])
@pytest.mark.parametrize("batch", [3, 200])  # fewer rows than outputs (inputs projected) or more
def test_equals_project_after_backward(include_bias, store, batch):
    model = _model(include_bias)
    bases = _bases(model, include_bias, store)
    x = torch.randn(batch, 2, 5, 5, dtype=torch.float64)
    y = torch.randint(0, 7, (batch,))
    # fewer rows than outputs: both Linear layers (60 and 7 outputs) done in backward
    _assert_like_project_(model, bases, lambda: nn.functional.cross_entropy(model(x), y),
                          rest=["0"] if batch < 7 else ["0", "3", "5"])


@pytest.mark.parametrize("include_bias", [False, True])
def test_routing_sticks_and_larger_later_batches_are_projected_too(include_bias):
    """Routed by a 3-row batch, a later 200-row batch takes the gradient path in backward."""
    model = _model(include_bias)
    bases = _bases(model, include_bias, "core")
    small = torch.randn(3, 2, 5, 5, dtype=torch.float64)
    big = torch.randn(200, 2, 5, 5, dtype=torch.float64)

    _assert_like_project_(model, bases,
                          lambda: model(small).square().sum() + model(big).square().sum(),
                          rest=["0"])


def test_token_inputs_and_frozen_bias():
    torch.manual_seed(1)
    lin = nn.Linear(16, 40).double()
    lin.bias.requires_grad_(False)
    model = nn.Sequential(lin)
    m = uf.SecondMoments(model, dtype=torch.float64)
    m.collect([torch.randn(12, 5, 16, dtype=torch.float64)], progress=False)
    bases = uf.NullSpace.from_moments(m, "rank:6", dtype=torch.float64)
    x = torch.randn(2, 3, 16, dtype=torch.float64, requires_grad=True)  # 6 rows < 40 outputs
    model(x).square().sum().backward()
    gx = x.grad.clone()
    uf.project_(model, bases)
    expected = lin.weight.grad.clone()
    lin.weight.grad = None
    x.grad = None
    with uf.projected_backward(model, bases):
        model(x).square().sum().backward()
    torch.testing.assert_close(lin.weight.grad, expected, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(x.grad, gx)  # the input gradient is untouched
    assert lin.bias.grad is None


def test_forward_is_restored_and_errors_come_first():
    model = _model(False)
    bases = _bases(model, False, "core")
    with pytest.raises(RuntimeError, match="boom"):
        with uf.projected_backward(model, bases):
            assert "forward" in vars(model[3])
            raise RuntimeError("boom")
    assert "forward" not in vars(model[3]) and "forward" not in vars(model[5])
    with_bias = _bases(model, True, "core")
    model[3].bias.requires_grad_(False)
    with pytest.raises(ValueError, match="bias"):
        with uf.projected_backward(model, with_bias):
            pass
    other = nn.Sequential(nn.Linear(3, 2))
    with pytest.raises(KeyError):
        with uf.projected_backward(other, bases):
            pass
    assert "forward" not in vars(other[0])


def _small():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 64), nn.ReLU(), nn.Linear(64, 32))
    m = uf.SecondMoments(model)
    m.collect([torch.randn(200, 8)], progress=False)
    return model, uf.NullSpace.from_moments(m, "energy:0.95")


def test_deepcopy_inside_the_block_runs_its_own_weights():
    import copy
    model, bases = _small()
    with uf.projected_backward(model, bases):
        snap = copy.deepcopy(model)
    with torch.no_grad():
        snap[2].weight.zero_()
        snap[2].bias.zero_()
    assert snap(torch.randn(4, 8)).abs().max() == 0


def test_backward_under_autocast():
    model, bases = _small()
    with uf.projected_backward(model, bases) as rest, torch.autocast("cpu", torch.bfloat16):
        model(torch.randn(4, 8)).float().square().sum().backward()
        assert list(rest) == []
    assert model[2].weight.grad.dtype == torch.float32


def test_tied_weight_is_not_routed():
    class LM(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb, self.head = nn.Embedding(32, 16), nn.Linear(16, 32, bias=False)
            self.head.weight = self.emb.weight

        def forward(self, t):
            return self.head(self.emb(t))
    torch.manual_seed(0)
    lm = LM()
    m = uf.SecondMoments(lm, layers=["head"])
    m.collect([torch.randint(0, 32, (50,))], progress=False)
    bases = uf.NullSpace.from_moments(m, "energy:0.9")
    t = torch.randint(0, 32, (4,))
    lm(t).square().sum().backward()
    uf.project_(lm, bases)
    expected = lm.head.weight.grad.clone()
    lm.zero_grad()
    with uf.projected_backward(lm, bases) as rest:
        lm(t).square().sum().backward()
        assert list(rest) == ["head"]
        uf.project_(lm, rest)
    torch.testing.assert_close(lm.head.weight.grad, expected)


def test_create_graph_gradient_penalty_equals_project_():
    model, bases = _small()
    x = torch.randn(4, 8, requires_grad=True)

    def loss():
        out = model(x).square().sum()
        gx, = torch.autograd.grad(out, x, create_graph=True)
        return out + gx.square().sum()
    _assert_like_project_(model, bases, loss, rtol=1e-4, atol=1e-5)
