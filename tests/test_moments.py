"""Second moments: the reference against closed forms, and the hook-based accumulator."""
import pytest
import torch
import torch.nn.functional as F
from cases import CONV_CASES, DENSE_SHAPES, rand
from torch import nn

import unsc_fast as uf
from unsc_fast import reference as ref
from unsc_fast.geometry import ConvGeometry


@pytest.mark.parametrize("n,d", DENSE_SHAPES)
def test_dense_accumulate_is_xtx(n, d):
    X = rand(n, d, dtype=torch.float64)
    S = torch.zeros(d, d, dtype=torch.float64)
    uf.accumulate_(S, X, backend="reference")
    torch.testing.assert_close(S, X.T @ X, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("N,C,H,W,geom", CONV_CASES)
def test_conv_accumulate_matches_unfold_closed_form(N, C, H, W, geom):
    x = rand(N, C, H, W, dtype=torch.float64)
    S = torch.zeros(geom.groups, geom.patch_dim(C), geom.patch_dim(C), dtype=torch.float64)
    uf.accumulate_conv_(S, x, geom, backend="reference")
    # Closed form: F.unfold on the zero-padded input, columns split per group.
    ph, pw = geom.symmetric_padding
    cols = F.unfold(x, geom.kernel_size, dilation=geom.dilation, padding=(ph, pw),
                    stride=geom.stride)
    for g, block in enumerate(cols.chunk(geom.groups, 1)):
        P = block.permute(0, 2, 1).reshape(-1, block.shape[1])
        torch.testing.assert_close(S[g], P.T @ P, rtol=1e-12, atol=1e-10)


@pytest.mark.parametrize("kwargs", [
    dict(in_channels=4, out_channels=6, kernel_size=3, stride=2, padding=1, groups=2),
    dict(in_channels=3, out_channels=5, kernel_size=(3, 2), dilation=(2, 1), padding=(2, 0)),
    dict(in_channels=3, out_channels=4, kernel_size=4, padding="same", padding_mode="reflect"),
    dict(in_channels=2, out_channels=2, kernel_size=3, padding=1, padding_mode="circular"),
    dict(in_channels=6, out_channels=6, kernel_size=3, padding=1, groups=6, bias=False),
])
def test_conv_patches_reproduce_the_layer(kwargs):
    """Patches times the weight rows give the conv output: the geometry is exact."""
    torch.manual_seed(0)
    conv = nn.Conv2d(**kwargs).double()
    x = torch.randn(2, conv.in_channels, 7, 6, dtype=torch.float64)
    geom = ConvGeometry.of(conv)
    P = ref.conv_patches(x, geom)
    out = conv(x)
    if conv.bias is not None:
        out = out - conv.bias.view(1, -1, 1, 1)
    W = conv.weight.view(conv.out_channels, -1)
    rows = [P[g] @ Wg.T for g, Wg in enumerate(W.chunk(geom.groups, 0))]
    mine = torch.cat(rows, 1).view(2, -1, conv.out_channels).permute(0, 2, 1)
    torch.testing.assert_close(mine.reshape(out.shape), out, rtol=1e-10, atol=1e-10)


def _tiny_model():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(2, 4, 3, stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(4, 4, 3, padding=1, groups=2), nn.Flatten(), nn.Linear(4 * 4 * 4, 5),
    ).double()


def test_chunked_equals_single_pass_and_hooks_see_layer_inputs():
    model = _tiny_model()
    x = torch.randn(13, 2, 8, 8, dtype=torch.float64)
    one = uf.SecondMoments(model, dtype=torch.float64).collect([x], progress=False)
    chunks = uf.SecondMoments(model, dtype=torch.float64)
    chunks.collect([x[:5], x[5:6], x[6:]], progress=False)
    for name in one.moments:
        torch.testing.assert_close(torch.triu(chunks.moments[name].S),
                                   torch.triu(one.moments[name].S), rtol=1e-12, atol=1e-10)
        assert chunks.moments[name].n == one.moments[name].n
    # The Linear layer's statistic is exactly XᵀX of what it received.
    feats = model[:4](x)
    torch.testing.assert_close(torch.triu(one.moments["4"].S[0]), torch.triu(feats.T @ feats))
    assert one.moments["4"].n == 13
    assert one.moments["0"].n == 13 * 4 * 4


def test_max_samples_budget_and_merge():
    model = _tiny_model()
    x = torch.randn(10, 2, 8, 8, dtype=torch.float64)
    capped = uf.SecondMoments(model, dtype=torch.float64).collect([x[:4], x[4:]],
                                                                  max_samples=6,
                                                                  progress=False)
    a = uf.SecondMoments(model, dtype=torch.float64).collect([x[:6]], progress=False)
    torch.testing.assert_close(torch.triu(capped.moments["4"].S), torch.triu(a.moments["4"].S))
    b = uf.SecondMoments(model, dtype=torch.float64).collect([x[6:]], progress=False)
    full = uf.SecondMoments(model, dtype=torch.float64).collect([x], progress=False)
    a.merge_(b)
    torch.testing.assert_close(torch.triu(a.moments["2"].S), torch.triu(full.moments["2"].S))


def test_bias_feature_covariance_is_augmented_second_moment():
    model = _tiny_model()
    x = torch.randn(5, 2, 8, 8, dtype=torch.float64)
    m = uf.SecondMoments(model, dtype=torch.float64, include_bias=True)
    m.collect([x], progress=False)
    P = ref.conv_patches(x, ConvGeometry.of(model[0]))[0]
    Pa = torch.cat([P, torch.ones(len(P), 1, dtype=P.dtype)], 1)
    C = m.moments["0"].covariance(include_bias=True)[0]
    torch.testing.assert_close(C, Pa.T @ Pa / len(P))


def test_save_and_load_statistics(tmp_path):
    model = _tiny_model()
    m = uf.SecondMoments(model).collect([torch.randn(4, 2, 8, 8, dtype=torch.float64)],
                                        progress=False)
    m.save(tmp_path / "s.pt")
    back = uf.SecondMoments(model).load(tmp_path / "s.pt")
    for name in m.moments:
        torch.testing.assert_close(torch.triu(back.moments[name].S), torch.triu(m.moments[name].S))
        assert back.moments[name].n == m.moments[name].n
    assert [p.name for p in tmp_path.iterdir()] == ["s.pt"]
