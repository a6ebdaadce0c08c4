"""End to end on real digits that ship offline: UNSC forgets a class and keeps the rest."""
import pytest
import torch

import unsc_fast as uf
from unsc_fast.lab import data as D
from unsc_fast.lab.metrics import class_accuracies
from unsc_fast.lab.models import build_model
from unsc_fast.lab.train import train
from unsc_fast.unlearn import freeze_for_unlearning


def _original(split, seed=0, epochs=4):
    torch.manual_seed(seed)
    model = build_model("small_cnn", split.input_shape, split.num_classes)
    return train(model, D.loader(split.train, 64, True, seed), epochs=epochs, progress=False)


def _forget_run(split, forget_class, **kwargs):
    model = _original(split)
    retain, forget = D.class_split(split.train, [forget_class])
    test = D.loader(split.test, 512)
    before = class_accuracies(model, test, [forget_class], split.num_classes)
    res = uf.unlearn(model, D.loader(forget, 64, True), D.loader(retain, 256),
                     forget_classes=[forget_class], progress=False, **kwargs)
    after = class_accuracies(res.model, test, [forget_class], split.num_classes)
    return model, res, before, after


@pytest.mark.slow
def test_mnist5k_forget_one_class():
    split = D.load_mnist5k()
    model, res, before, after = _forget_run(split, 3, lr=0.04, epochs=20)
    assert before["acc_f"] > 0.9
    assert after["acc_f"] <= 0.05
    assert after["acc_r"] >= before["acc_r"] - 0.01
    assert res.report.time_unlearn > 0 and len(res.report.epoch_loss) == 20
    # The original is untouched, and the copy is fully trainable again.
    assert class_accuracies(model, D.loader(split.test, 512), [3], 10) == before
    assert all(p.requires_grad for p in res.model.parameters())


def test_digits_forget_one_class_and_the_unprojected_ablation_hurts_more():
    split = D.load_digits()
    _, res, before, after = _forget_run(split, 5, lr=0.05, epochs=25)
    assert after["acc_f"] <= 0.05
    assert after["acc_r"] >= before["acc_r"] - 0.01
    _, _, _, free = _forget_run(split, 5, lr=0.05, epochs=25, project=False)
    assert free["acc_r"] < after["acc_r"]


def test_sample_level_forgetting_uses_other_labels():
    # 64-dim inputs, 36 retained samples: D_f sticks out of D_r's span, so it can be moved.
    split = D.make_synthetic(num_classes=4, per_class=10, size=8)
    torch.manual_seed(0)
    model = build_model("mlp", split.input_shape, split.num_classes)
    train(model, D.loader(split.train, 8, True), epochs=15, progress=False)
    idx = list(range(len(split.train)))
    forget = torch.utils.data.Subset(split.train, idx[:6])
    retain = torch.utils.data.Subset(split.train, idx[6:])
    x, y = next(iter(D.loader(forget, 100)))
    xr, yr = next(iter(D.loader(retain, 100)))
    assert (model(x).argmax(1) == y).all()
    res = uf.unlearn(model, D.loader(forget, 6), D.loader(retain, 64), lr=0.05, epochs=30,
                     progress=False)
    with torch.no_grad():
        assert (res.model(x).argmax(1) != y).float().mean() >= 0.8
        assert (res.model(xr).argmax(1) == model(xr).argmax(1)).float().mean() >= 0.95


def test_precomputed_bases_skip_statistics():
    split = D.make_synthetic(num_classes=3, per_class=30, size=4)
    torch.manual_seed(0)
    model = build_model("mlp", split.input_shape, split.num_classes)
    train(model, D.loader(split.train, 32, True), epochs=5, progress=False)
    retain, forget = D.class_split(split.train, [0])
    bases = uf.NullSpace.from_moments(
        uf.SecondMoments(model).collect(D.loader(retain, 64), progress=False))
    res = uf.unlearn(model, D.loader(forget, 16), bases=bases, forget_classes=[0], epochs=2,
                     progress=False)
    assert res.report.time_stats == 0.0 and res.bases is not None
    assert set(res.report.ranks) == set(bases)


def test_dropout_is_off_while_unlearning_unless_asked():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Dropout(0.5),
                                torch.nn.BatchNorm1d(4), torch.nn.Linear(4, 2))
    params = freeze_for_unlearning(model, None)
    assert not model[1].training and not model[2].training and model[0].training
    assert {id(p) for p in params} == {id(model[0].weight), id(model[3].weight)}
    freeze_for_unlearning(model, None, dropout=True)
    assert model[1].training and not model[2].training
