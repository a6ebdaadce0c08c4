"""``torch.compile(fullgraph=True)`` traces the projection: ``unsc_fast.ops.project_grads_``
and ``unsc_fast.project_``, with the same result as eager (an optimizer's ``step()`` always
graph-breaks, by torch.optim's design, so it is not inside the fullgraph region).

The eager aliasing checks compare data pointers, which Dynamo cannot trace; under compile
they are skipped (see ``unsc_fast.ops._can_check_aliasing``), while eager calls still raise.
"""
from __future__ import annotations

import pytest
import torch
from torch import nn

import unsc_fast
from unsc_fast import ops

pytestmark = pytest.mark.skipif(not hasattr(torch, "compile"), reason="no torch.compile")


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _orthonormal(d: int, m: int, g: torch.Generator) -> torch.Tensor:
    return torch.linalg.qr(torch.randn(d, m, generator=g, dtype=torch.float64))[0]


def test_project_grads_fullgraph_matches_eager():
    g = torch.Generator().manual_seed(0)
    parent = torch.randn(10, 24, generator=g, dtype=torch.float64)
    grads = [torch.randn(16, 8, generator=g, dtype=torch.float64),
             parent[:, ::2],                                   # a strided view (d = 12)
             torch.randn(5, 6, generator=g, dtype=torch.float64),
             torch.randn(4, 7, generator=g, dtype=torch.float64)]
    bases = [_orthonormal(8, 3, g), _orthonormal(12, 9, g), _orthonormal(6, 0, g),
             _orthonormal(7, 0, g)]
    subtract = [True, False, False, True]                      # rank 0: zero, unchanged

    def run(gs):
        ops.project_grads_(gs, bases, subtract)

    eager = [t.clone() for t in grads]
    run(eager)
    compiled = [t.clone() for t in grads]
    compiled[1] = parent.clone()[:, ::2]
    torch.compile(run, fullgraph=True)(compiled)
    for a, b in zip(compiled, eager):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    assert compiled[2].abs().max() == 0 and torch.equal(compiled[3], grads[3])


def test_eager_aliasing_checks_still_raise():
    G = torch.randn(4, 4, dtype=torch.float64)
    with pytest.raises(ValueError, match="share memory"):
        ops.project_grads_([G], [G[:, :2]], [True])
    with pytest.raises(ValueError, match="same memory"):
        ops.project_grads_([G, G], [torch.eye(4, 2, dtype=torch.float64)] * 2, [True, True])


def _mlp_and_bases(include_bias: bool):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4)).double()
    moments = unsc_fast.SecondMoments(model, dtype=torch.float64,
                                      include_bias=include_bias).collect(
        [torch.randn(5, 8, dtype=torch.float64)], progress=False)
    bases = unsc_fast.NullSpace.from_moments(moments, "energy:1", dtype=torch.float64)
    return model, bases


def _compiled_matches_eager(model, bases, grads):
    """``grads()`` fills the gradients; a fullgraph-compiled ``project_`` then gives the
    eager projection's result, to float64 rounding."""
    grads()
    unsc_fast.project_(model, bases)
    eager = [p.grad.clone() for p in model.parameters()]
    grads()
    torch.compile(lambda: unsc_fast.project_(model, bases), fullgraph=True)()
    for p, e in zip(model.parameters(), eager):
        torch.testing.assert_close(p.grad, e, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("include_bias", [False, True])
def test_project_fullgraph_matches_eager(include_bias):
    model, bases = _mlp_and_bases(include_bias)
    x = torch.randn(7, 8, dtype=torch.float64)

    def grads():
        model.zero_grad(set_to_none=True)
        model(x).square().sum().backward()

    _compiled_matches_eager(model, bases, grads)


def test_compiled_project_and_step_keep_retained_outputs():
    model, bases = _mlp_and_bases(include_bias=True)
    retain = torch.randn(3, 8, dtype=torch.float64)
    # retained inputs in the span of the collected ones: energy 1 keeps their outputs exact
    moments_in = unsc_fast.SecondMoments(model, dtype=torch.float64, include_bias=True)
    moments_in.collect([retain], progress=False)
    bases = unsc_fast.NullSpace.from_moments(moments_in, "energy:1", dtype=torch.float64)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    before = model(retain).detach()
    # fullgraph covers the projection; an optimizer's step() graph-breaks by design
    # (torch.optim's _use_grad), so it stays outside the fullgraph region.
    project = torch.compile(lambda: unsc_fast.project_(model, bases), fullgraph=True)
    for _ in range(2):
        opt.zero_grad(set_to_none=True)
        model(torch.randn(6, 8, dtype=torch.float64)).square().sum().backward()
        project()
        opt.step()
    after = model(retain).detach()
    assert not torch.equal(model[0].weight, _mlp_and_bases(True)[0][0].weight)
    torch.testing.assert_close(after, before, rtol=1e-9, atol=1e-9)


def test_project_fullgraph_on_llama():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                                   num_key_value_heads=4, intermediate_size=64, vocab_size=64,
                                   max_position_embeddings=64)
    model = transformers.LlamaForCausalLM(cfg)
    ids = torch.randint(0, 64, (2, 8))
    moments = unsc_fast.SecondMoments(model).collect([{"input_ids": ids}], progress=False)
    bases = unsc_fast.NullSpace.from_moments(moments, "energy:0.99")
    unsc_fast.freeze_for_unlearning(model, bases)
    forget = torch.randint(0, 64, (2, 8))

    def grads():
        model.zero_grad(set_to_none=True)
        model(input_ids=forget, labels=forget).loss.backward()

    grads()
    unsc_fast.project_(model, bases)
    eager = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    grads()
    torch.compile(lambda: unsc_fast.project_(model, bases), fullgraph=True)()
    got = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert got.keys() == eager.keys() and len(got) == len(bases)
    for n in eager:
        torch.testing.assert_close(got[n], eager[n], rtol=1e-5, atol=1e-6)


class _Tokens(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(12, 6)
        self.head = nn.Linear(6, 12)

    def forward(self, ids):
        return self.head(self.embed(ids))


@pytest.mark.parametrize("store", ["core", "null"])
def test_project_fullgraph_with_an_embedding_row_mask(store):
    """The embedding's basis is a row mask of core token ids: it traces too, and a compiled
    projection leaves the core rows' gradients zero as eager does."""
    torch.manual_seed(0)
    model = _Tokens().double()
    retain = torch.tensor([[1, 2, 3, 3], [2, 5, 1, 1]])
    moments = unsc_fast.SecondMoments(model, dtype=torch.float64, embeddings=True)
    bases = unsc_fast.NullSpace.from_moments(moments.collect([retain], progress=False),
                                             "energy:1", dtype=torch.float64, store=store)
    assert "embed" in bases and bases["embed"].subtract[0] == (store == "core")
    forget = torch.tensor([[1, 7, 9, 2]])

    def grads():
        model.zero_grad(set_to_none=True)
        model(forget).square().sum().backward()

    _compiled_matches_eager(model, bases, grads)
    core = [1, 2, 3, 5]
    assert model.embed.weight.grad[core].abs().max() == 0
    assert model.embed.weight.grad[[7, 9]].abs().max() > 0
