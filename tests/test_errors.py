"""Bad input gets a clear error, raised before any state changes."""
import pytest
import torch
from torch import nn

import unsc_fast as uf
from unsc_fast.lab import data as D
from unsc_fast.geometry import ConvGeometry


def _model_and_bases():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3))
    m = uf.SecondMoments(model).collect([torch.randn(20, 6)], progress=False)
    return model, uf.NullSpace.from_moments(m, "energy:0.9")


def _grads_after_backward(model):
    model.zero_grad()
    model(torch.randn(4, 6)).sum().backward()
    return [p.grad.clone() for p in model.parameters()]


def _assert_grads_unchanged(model, before):
    for p, g in zip(model.parameters(), before):
        torch.testing.assert_close(p.grad, g, rtol=0, atol=0)


@pytest.mark.parametrize("op_args,err", [
    (lambda: (torch.zeros(3, 3), torch.randn(4, 2)), ValueError),                # shape
    (lambda: (torch.zeros(3, 3), torch.randint(0, 3, (4, 3))), TypeError),       # dtype
    (lambda: (torch.zeros(3, 3, dtype=torch.float16), torch.randn(4, 3)), TypeError),
    (lambda: (torch.zeros(3, 4), torch.randn(4, 3)), ValueError),                # not square
    (lambda: (torch.zeros(3, 3)[:, :3].t(), torch.randn(4, 3)), ValueError),     # not contig
    (lambda: (torch.zeros(3, 3), torch.randn(3)), ValueError),
])
def test_accumulate_rejects_bad_input(op_args, err):
    S, X = op_args()
    before = S.clone()
    with pytest.raises(err):
        uf.accumulate_(S, X)
    torch.testing.assert_close(S, before, rtol=0, atol=0)


def test_accumulate_conv_rejects_bad_input():
    geom = ConvGeometry((3, 3), groups=2)
    S = torch.zeros(2, 18, 18)
    with pytest.raises(ValueError, match="groups"):
        uf.accumulate_conv_(S, torch.randn(1, 3, 5, 5), geom)
    with pytest.raises(ValueError, match=r"\(groups, d, d\)"):
        uf.accumulate_conv_(torch.zeros(1, 18, 18), torch.randn(1, 4, 5, 5), geom)
    with pytest.raises(ValueError, match="N, C, H, W"):
        uf.accumulate_conv_(S, torch.randn(4, 5, 5), geom)
    assert S.abs().sum() == 0


def test_project_shape_dtype_device_mismatch_changes_nothing():
    model, bases = _model_and_bases()
    before = _grads_after_backward(model)
    with pytest.raises(TypeError, match="float64"):
        uf.project_(model, bases.to(dtype=torch.float64))
    wrong = nn.Sequential(nn.Linear(7, 5), nn.ReLU(), nn.Linear(5, 3))
    wrong(torch.randn(2, 7)).sum().backward()
    with pytest.raises(ValueError, match="input features"):
        uf.project_(wrong, bases)
    if torch.cuda.is_available():
        with pytest.raises(ValueError, match="device"):
            uf.project_(model, bases.to("cuda"))
    with pytest.raises(TypeError):
        uf.project_(model, {"0": None})
    _assert_grads_unchanged(model, before)


def test_project_basis_for_missing_module_changes_nothing():
    model, bases = _model_and_bases()
    before = _grads_after_backward(model)
    other = nn.Sequential(nn.Linear(6, 5))  # has "0" but no "2"
    with pytest.raises(KeyError, match="'2'"):
        uf.project_(other, bases)
    renamed = uf.NullSpace({"nope": bases["0"], **dict(bases.items())})
    with pytest.raises(KeyError, match="nope"):
        uf.project_(model, renamed)
    _assert_grads_unchanged(model, before)


def test_ops_project_rejects_mismatched_lists():
    G = torch.randn(3, 4)
    with pytest.raises(ValueError, match="length"):
        uf.ops.project_grads_([G], [], [True])
    with pytest.raises(ValueError, match=r"\(rows, d\)"):
        uf.ops.project_grads_([G], [torch.randn(5, 2)], [True])
    with pytest.raises(TypeError):
        uf.ops.project_grads_([G], [torch.randn(4, 2, dtype=torch.float64)], [True])


def test_nan_or_inf_statistics_are_refused():
    model = nn.Sequential(nn.Linear(4, 2))
    x = torch.randn(8, 4)
    x[3, 1] = float("nan")
    m = uf.SecondMoments(model).collect([torch.randn(8, 4)], progress=False)
    S = m.moments["0"].S.clone()
    with pytest.raises(ValueError, match="NaN or Inf"):
        m.collect([x], progress=False)
    torch.testing.assert_close(m.moments["0"].S, S, rtol=0, atol=0)  # the bad batch left no trace
    assert m.moments["0"].n == 8
    diverged = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2))
    with torch.no_grad():
        diverged[0].weight[0, 0] = float("inf")
    with pytest.raises(ValueError, match=r"\['1'\] contain NaN or Inf"):
        uf.SecondMoments(diverged).collect([torch.randn(4, 4)], progress=False)
    m = uf.SecondMoments(model, check_inputs=False)
    m.update("0", torch.full((2, 4), float("inf")))
    with pytest.raises(ValueError, match="NaN or Inf"):
        uf.NullSpace.from_moments(m)


def test_empty_data_and_unsupported_models():
    model = nn.Sequential(nn.Linear(4, 3))
    with pytest.raises(ValueError, match="empty"):
        uf.SecondMoments(model).collect([], progress=False)
    with pytest.raises(ValueError, match="empty"):
        uf.NullSpace.from_moments(uf.SecondMoments(model))
    with pytest.raises(ValueError, match="no supported layer"):
        uf.SecondMoments(nn.Sequential(nn.ReLU(), nn.Tanh()))
    with pytest.raises(KeyError, match="missing"):
        uf.SecondMoments(model, layers=["missing"])
    with pytest.raises(TypeError, match="supported type"):
        uf.SecondMoments(nn.Sequential(nn.Linear(2, 2), nn.ReLU()), layers=["1"])


def test_unlearn_rejects_bad_requests_and_leaves_model_alone():
    split = D.make_synthetic(num_classes=3, per_class=10, size=4)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    retain, forget = D.class_split(split.train, [1])
    empty = D.loader(torch.utils.data.Subset(split.train, []))
    with pytest.raises(ValueError, match="empty"):
        uf.unlearn(model, empty, D.loader(retain), forget_classes=[1])
    with pytest.raises(ValueError, match="not classes"):
        uf.unlearn(model, D.loader(forget), D.loader(retain), forget_classes=[7])
    with pytest.raises(ValueError, match="every class"):
        uf.unlearn(model, D.loader(forget), D.loader(retain), forget_classes=[0, 1, 2])
    with pytest.raises(ValueError, match="D_r"):
        uf.unlearn(model, D.loader(forget), None, forget_classes=[1])
    with pytest.raises(ValueError, match="unknown backend"):
        uf.unlearn(model, D.loader(forget), D.loader(retain), forget_classes=[1],
                   backend="nope", progress=False)
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, state[k], rtol=0, atol=0)


# -- found by a user review ------------------------------------------------------------------

def test_collect_refuses_a_batch_the_model_cannot_take_before_any_layer_sees_it():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(2 * 6 * 6, 3))
    m = uf.SecondMoments(model)
    with pytest.raises(RuntimeError, match="input batch 0 .* statistics are unchanged"):
        m.collect([torch.randn(4, 1, 9, 9)], progress=False)  # conv fits, linear does not
    assert all(lm.n == 0 and not lm.S.any() for lm in m.moments.values())
    m.collect([torch.randn(4, 1, 8, 8)], progress=False)
    assert m.moments["0"].n == 4 * 36 and m.moments["2"].n == 4


def test_collect_and_layers_arguments():
    model = nn.Sequential(nn.Linear(3, 2))
    with pytest.raises(ValueError, match="max_samples"):
        uf.SecondMoments(model).collect([torch.randn(4, 3)], max_samples=0, progress=False)
    assert uf.SecondMoments(model, layers="0").layers == ["0"]  # a name, not its characters


def test_moments_file_is_loaded_without_running_code(tmp_path):
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(2 * 6 * 6, 3))
    m = uf.SecondMoments(model).collect([torch.randn(4, 1, 8, 8)], progress=False)
    m.save(tmp_path / "m.pt")
    again = uf.SecondMoments(model).load(tmp_path / "m.pt")
    torch.testing.assert_close(torch.triu(again.moments["0"].S), torch.triu(m.moments["0"].S))

    class Payload:  # unpickling this would call print: weights_only refuses it
        def __reduce__(self):
            return (print, ("code ran",))
    torch.save({"0": {"S": Payload()}}, tmp_path / "evil.pt")
    with pytest.raises(ValueError, match="not a statistics file"):
        uf.SecondMoments(model).load(tmp_path / "evil.pt")


def test_saved_files_get_the_usual_mode(tmp_path):
    import os
    from unsc_fast.io import atomic_save
    mask = os.umask(0o022)
    try:
        path = atomic_save(tmp_path / "f.bin", lambda f: f.write(b"x"))
        assert path.stat().st_mode & 0o777 == 0o644  # not mkstemp's private 0600
        os.chmod(path, 0o640)
        atomic_save(path, lambda f: f.write(b"y"))
        assert path.stat().st_mode & 0o777 == 0o640  # a replaced file keeps its mode
    finally:
        os.umask(mask)


def test_conv_input_smaller_than_the_kernel_is_a_value_error():
    S = torch.zeros(1, 9, 9)
    with pytest.raises(ValueError, match="smaller than the dilated kernel"):
        uf.accumulate_conv_(S, torch.randn(1, 1, 2, 2), ConvGeometry((3, 3)))
    uf.accumulate_conv_(S, torch.randn(1, 1, 1, 1), ConvGeometry((3, 3), pad=(1, 1, 1, 1)))


def test_project_subtract_must_be_booleans():
    G = torch.randn(2, 3)
    before = G.clone()
    with pytest.raises(TypeError, match="booleans"):
        uf.ops.project_grads_([G], [torch.eye(3)[:, :1]], ["no"])
    torch.testing.assert_close(G, before, rtol=0, atol=0)


@pytest.mark.parametrize("kwargs,err,match", [
    ({"lr": float("nan")}, ValueError, "lr must be"),
    ({"lr": float("inf")}, ValueError, "lr must be"),
    ({"epochs": 1.5}, ValueError, "epochs must be"),
    ({"lr": 1e30}, FloatingPointError, "loss became"),
])
def test_unlearn_refuses_non_finite_learning(kwargs, err, match):
    model, bases = _model_and_bases()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    forget = [(torch.randn(8, 6), torch.randint(0, 3, (8,)))]
    with pytest.raises(err, match=match):
        uf.unlearn(model, forget, bases=bases, forget_classes=[0], progress=False,
                   **{"epochs": 3, **kwargs})
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, state[k], rtol=0, atol=0)


def test_unlearn_refuses_bases_of_another_model_before_any_work():
    _, bases = _model_and_bases()
    other = nn.Sequential(nn.Linear(6, 5), nn.Flatten(), nn.Linear(5, 3))  # "1" has no weight
    forget = [(torch.randn(8, 6), torch.randint(0, 3, (8,)))]
    with pytest.raises((KeyError, TypeError, ValueError)):
        uf.unlearn(nn.Sequential(nn.Linear(7, 3)), forget, bases=bases, progress=False)
    renamed = uf.NullSpace({"1": bases["0"]})
    with pytest.raises(TypeError, match="Linear"):
        uf.unlearn(other, forget, bases=renamed, progress=False)


def test_project_refuses_gradients_that_alias():
    G = torch.randn(3, 4)
    B = torch.linalg.qr(torch.randn(4, 2))[0]
    with pytest.raises(ValueError, match="broadcast"):
        uf.ops.project_grads_([torch.randn(1, 4).expand(3, 4)], [B], [True])
    with pytest.raises(ValueError, match="same memory"):
        uf.ops.project_grads_([G, G], [B, B], [True, True])
    before = G.clone()
    uf.ops.project_grads_([G[:1], G[1:]], [B, B], [True, False])  # disjoint rows of one tensor: fine
    assert not torch.equal(G, before)
