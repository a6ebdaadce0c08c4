"""Rank rules, bases and the projection: the properties UNSC relies on."""
import pytest
import torch
from cases import PROJECT_SHAPES, orthonormal, rand
from torch import nn

import unsc_fast as uf
from unsc_fast import reference as ref


def test_rank_rules_on_known_spectrum():
    evals = torch.tensor([8.0, 4.0, 2.0, 1.0, 1e-20, 0.0], dtype=torch.float64)
    assert ref.energy_rank(evals, 0.0) == 0
    assert ref.energy_rank(evals, 8 / 15) == 1
    assert ref.energy_rank(evals, 0.9) == 3
    assert ref.energy_rank(evals, 1.0) == 4          # round-off eigenvalues count as zero
    assert ref.floor_rank(evals, 10) == 4            # λ_min is 0: only the zeros are null
    assert ref.floor_rank(torch.tensor([8.0, 4.0, 2.0, 1.0]), 3) == 2
    assert ref.threshold_rank(evals, 0.3) == 2
    assert uf.FixedRank(99).rank(evals) == 6
    assert ref.energy_rank(torch.zeros(3, dtype=torch.float64), 0.99) == 0


@pytest.mark.parametrize("spec,expected", [("energy:0.9", uf.Energy(0.9)),
                                           ("floor:30", uf.EigenFloor(30.0)),
                                           ("threshold:0.01", uf.Threshold(0.01)),
                                           ("rank:3", uf.FixedRank(3))])
def test_parse_rule(spec, expected):
    assert uf.parse_rule(spec) == expected


@pytest.mark.parametrize("spec", ["energy", "energy:x", "bogus:1", "energy:1.5"])
def test_parse_rule_rejects(spec):
    with pytest.raises(ValueError):
        uf.parse_rule(spec)


@pytest.mark.parametrize("rows,d,m", PROJECT_SHAPES)
def test_reference_projection_properties(rows, d, m):
    G = rand(rows, d, dtype=torch.float64)
    U = orthonormal(d, m)
    P = ref.project(G, U, subtract=True)
    torch.testing.assert_close(P @ U, torch.zeros(rows, m, dtype=torch.float64),
                               atol=1e-12, rtol=0)                     # ⟂ core
    torch.testing.assert_close(ref.project(P, U, True), P, atol=1e-12, rtol=0)  # idempotent
    # Projecting off U equals projecting onto its complement.
    full = torch.linalg.qr(torch.cat([U, torch.randn(d, d, dtype=torch.float64)], 1))[0]
    U0 = full[:, m:]
    torch.testing.assert_close(ref.project(G, U0, subtract=False), P, atol=1e-10, rtol=0)


def _rank_deficient(n, d, r, gen):
    return torch.randn(n, r, generator=gen, dtype=torch.float64) @ \
        torch.randn(r, d, generator=gen, dtype=torch.float64)


def _step_change(layer, x, bases, lr=0.5):
    """Relative change of the layer's outputs on x after one SGD step on a random loss."""
    before = layer(x).detach()
    target = torch.randn_like(before)
    loss = ((layer(x + 0.1 * torch.randn_like(x)) - target) ** 2).sum()
    layer.zero_grad()
    loss.backward()
    if bases is not None:
        uf.project_(layer, bases)
    grad_norm = layer.weight.grad.norm().item()
    with torch.no_grad():
        for p in (layer.weight,):
            p -= lr * p.grad
    return ((layer(x) - before).norm() / before.norm()).item(), grad_norm


@pytest.mark.parametrize("store", ["auto", "core", "null"])
def test_projected_step_keeps_linear_outputs(store):
    gen = torch.Generator().manual_seed(0)
    layer = nn.Linear(20, 7, bias=False).double()
    X = _rank_deficient(64, 20, 6, gen)
    moments = uf.SecondMoments(layer, dtype=torch.float64).collect([X], progress=False)
    bases = uf.NullSpace.from_moments(moments, uf.Energy(1.0), store=store,
                                      dtype=torch.float64)
    assert bases[""].ranks == [6]
    changed, g = _step_change(layer, X, bases)
    assert g > 1e-3, "projected gradient must not vanish (the null space has 14 dims)"
    assert changed < 1e-5
    free, _ = _step_change(nn.Linear(20, 7, bias=False).double(), X, None)
    assert free > 0.1


@pytest.mark.parametrize("groups,stride,padding", [(1, 1, 0), (2, 2, 1)])
def test_projected_step_keeps_conv_outputs(groups, stride, padding):
    gen = torch.Generator().manual_seed(1)
    torch.manual_seed(1)
    conv = nn.Conv2d(4, 6, 3, stride=stride, padding=padding, groups=groups,
                     bias=False).double()
    # Rank-deficient patches: every input image is constant over a 2-channel pattern.
    x = torch.randn(8, 2, 1, 1, generator=gen, dtype=torch.float64).repeat(1, 2, 6, 6)
    x[:, 2:] *= 0.5
    moments = uf.SecondMoments(conv, dtype=torch.float64).collect([x], progress=False)
    bases = uf.NullSpace.from_moments(moments, uf.Energy(1.0), dtype=torch.float64)
    assert all(r < bases[""].d for r in bases[""].ranks)
    changed, g = _step_change(conv, x, bases)
    assert g > 1e-3
    assert changed < 1e-5
    free, _ = _step_change(nn.Conv2d(4, 6, 3, stride=stride, padding=padding, groups=groups,
                                     bias=False).double(), x, None)
    assert free > 0.1


def test_bias_feature_projection_keeps_outputs_with_bias():
    gen = torch.Generator().manual_seed(2)
    layer = nn.Linear(10, 3).double()
    X = _rank_deficient(40, 10, 4, gen)
    m = uf.SecondMoments(layer, dtype=torch.float64, include_bias=True).collect([X],
                                                                              progress=False)
    bases = uf.NullSpace.from_moments(m, uf.Energy(1.0), dtype=torch.float64)
    assert bases[""].d == 11 and bases[""].ranks == [5]
    before = layer(X).detach()
    loss = (layer(X + torch.randn_like(X)) ** 2).sum()
    loss.backward()
    uf.project_(layer, bases)
    with torch.no_grad():
        for p in layer.parameters():
            p -= 0.1 * p.grad
    assert ((layer(X) - before).norm() / before.norm()).item() < 1e-8
    assert layer.bias.grad.abs().sum() > 0


def test_project_accepts_named_parameters_subset():
    model = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3)).double()
    X = torch.randn(30, 6, dtype=torch.float64)
    m = uf.SecondMoments(model, dtype=torch.float64).collect([X], progress=False)
    bases = uf.NullSpace.from_moments(m, "rank:2", dtype=torch.float64)
    model(X).sum().backward()
    G0 = model[0].weight.grad.clone()
    uf.project_(dict(model.named_parameters()), bases)
    expect = ref.project(G0, bases["0"].bases[0], bases["0"].subtract[0])
    torch.testing.assert_close(model[0].weight.grad, expect)


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_bases_save_load_roundtrip(tmp_path, suffix):
    model = nn.Sequential(nn.Conv2d(4, 4, 3, groups=2), nn.Flatten(), nn.Linear(16, 3))
    m = uf.SecondMoments(model).collect([torch.randn(9, 4, 4, 4)], progress=False)
    bases = uf.NullSpace.from_moments(m, "energy:0.9")
    path = tmp_path / f"bases{suffix}"
    bases.save(path)
    back = uf.NullSpace.load(path)
    assert list(back) == list(bases)
    for name, lb in bases.items():
        assert back[name].ranks == lb.ranks and back[name].subtract == lb.subtract
        for a, b in zip(back[name].bases, lb.bases):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]
    assert "| 0 | conv2d |" in bases.summary()


def test_gpm_growth_spans_every_step():
    gen = torch.Generator().manual_seed(3)
    layer = nn.Linear(12, 2, bias=False).double()
    steps = []
    for _ in range(3):
        X = _rank_deficient(50, 12, 2, gen)
        steps.append(uf.SecondMoments(layer, dtype=torch.float64).collect([X], progress=False))
    bases = uf.NullSpace.grow(steps, eps=1.0, store="core", dtype=torch.float64)
    U = bases[""].core()
    assert U.shape == (12, 6)
    torch.testing.assert_close(U.T @ U, torch.eye(6, dtype=torch.float64), atol=1e-10, rtol=0)
    for s in steps:  # every step's inputs lie in the grown core
        C = s.moments[""].covariance()[0]
        resid = C - U @ (U.T @ C @ U) @ U.T
        assert resid.norm() / C.norm() < 1e-8
    # The paper's schedule keeps fewer directions than eps = 1, never more.
    sched = uf.NullSpace.grow(steps, store="core", dtype=torch.float64)
    assert sched[""].ranks[0] <= 6
    null = uf.NullSpace.grow(steps, eps=1.0, store="null", dtype=torch.float64)
    assert null[""].bases[0].shape == (12, 6) and null[""].subtract == [False]


def test_pseudo_labels_rules():
    logits = torch.tensor([[5.0, 4.0, 1.0], [0.0, 1.0, 3.0], [2.0, 9.0, 3.0]])
    assert ref.pseudo_labels(logits, forget_classes=[0]).tolist() == [1, 2, 1]
    assert ref.pseudo_labels(logits, forget_classes=[0, 1]).tolist() == [2, 2, 2]
    labels = torch.tensor([0, 2, 2])
    assert ref.pseudo_labels(logits, labels).tolist() == [1, 1, 1]
    with pytest.raises(ValueError):
        ref.pseudo_labels(logits)


def test_project_channels_last_conv_and_grouped_blocks():
    torch.manual_seed(4)
    conv = nn.Conv2d(4, 6, 3, padding=1, groups=2).double()
    m = uf.SecondMoments(conv, dtype=torch.float64).collect([torch.randn(3, 4, 5, 5,
                                                                         dtype=torch.float64)],
                                                            progress=False)
    bases = uf.NullSpace.from_moments(m, "rank:5", dtype=torch.float64)
    conv = conv.to(memory_format=torch.channels_last)
    conv(torch.randn(2, 4, 5, 5, dtype=torch.float64)).sum().backward()
    assert not conv.weight.grad.is_contiguous()
    G = conv.weight.grad.contiguous().view(6, -1).clone()
    uf.project_(conv, bases)
    lb = bases[""]
    expect = torch.cat([ref.project(Gg, lb.bases[g], lb.subtract[g])
                        for g, Gg in enumerate(G.chunk(2, 0))])
    torch.testing.assert_close(conv.weight.grad.contiguous().view(6, -1), expect)
