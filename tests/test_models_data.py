"""Models by name (forward, statistics, one unlearning step), data sets and scenarios."""
import gzip
import pickle

import numpy as np
import pytest
import torch

import unsc_fast as uf
from unsc_fast.lab import data as D
from unsc_fast.lab.models import MODELS, build_model
from unsc_fast.lab.scenarios import Scenario

TINY = {"small_cnn": 0.25, "mlp": 0.125, "alexnet": 1 / 32, "allcnn": 1 / 24,
        "vgg11_bn": 1 / 32, "resnet18": 1 / 32}


def test_every_model_is_covered():
    assert set(TINY) == set(MODELS)


@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32)], ids=["28grey", "32rgb"])
@pytest.mark.parametrize("name", sorted(TINY))
def test_model_forward_moments_and_one_unlearning_step(name, shape):
    if name == "mlp":        # a 3072-wide first layer means a 3072x3072 eigh: keep it small
        shape = (shape[0], 8, 8)
    torch.manual_seed(0)
    model = build_model(name, shape, 5, width=TINY[name])
    x, y = torch.randn(6, *shape), torch.tensor([0, 1, 2, 3, 4, 0])
    model.train()
    assert model(x).shape == (6, 5)                       # BN in train mode: batch stats
    model.eval()
    moments = uf.SecondMoments(model).collect([(x, y)], progress=False)
    n_layers = sum(isinstance(m, (torch.nn.Linear, torch.nn.Conv2d)) for m in model.modules())
    assert len(moments.moments) == n_layers
    res = uf.unlearn(model, [(x[:2], y[:2])], moments=moments, forget_classes=[0, 1],
                     epochs=1, lr=0.01, progress=False)
    assert res.model(x).shape == (6, 5)
    assert set(res.bases) == set(moments.moments)
    changed = [n for n, p in res.model.named_parameters()
               if not torch.equal(p, dict(model.named_parameters())[n])]
    assert changed, "one projected step should move some weight"


def test_width_scales_the_parameter_count():
    small = sum(p.numel() for p in build_model("alexnet", (1, 28, 28), 10, 0.25).parameters())
    big = sum(p.numel() for p in build_model("alexnet", (1, 28, 28), 10, 0.5).parameters())
    assert 3 < big / small < 4.5


def test_default_small_models_are_unchanged():
    # The demo's results depend on these sizes: width 1 must keep the historical models.
    assert sum(p.numel() for p in build_model("small_cnn", (1, 28, 28), 10).parameters()) \
        == 105962
    assert sum(p.numel() for p in build_model("mlp", (1, 8, 8), 10).parameters()) == 26122


@pytest.mark.parametrize("args,match", [
    (("nope", (1, 28, 28), 10), "unknown model"),
    (("alexnet", (1, 8, 8), 10), "cannot take inputs"),
    (("mlp", (64,), 10), r"\(C, H, W\)"),
    (("mlp", (1, 8, 8), 10, 0.0), "width"),
    (("mlp", (1, 8, 8), 1), "at least 2 classes"),
])
def test_build_model_errors(args, match):
    with pytest.raises(ValueError, match=match):
        build_model(*args)


# -- data -------------------------------------------------------------------------------------

def test_builtin_datasets_and_unknown_name():
    s = D.load_dataset("synthetic")
    assert s.input_shape == (1, 8, 8) and s.num_classes == 10
    assert set(D.dataset_names()) >= {"mnist5k", "digits", "synthetic", "fashion_mnist",
                                      "cifar10", "cifar100", "svhn"}
    with pytest.raises(ValueError, match="unknown dataset 'imagenet'"):
        D.load_dataset("imagenet")


@pytest.mark.parametrize("name", sorted(D.FILE_DATASETS))
def test_file_datasets_need_a_root_and_their_files(name, tmp_path):
    with pytest.raises(FileNotFoundError, match="--data-root"):
        D.load_dataset(name)
    with pytest.raises(FileNotFoundError, match="not a directory"):
        D.load_dataset(name, root=tmp_path / "absent")
    with pytest.raises(FileNotFoundError, match="never downloads") as e:
        D.load_dataset(name, root=tmp_path)
    assert D.FILE_DATASETS[name].files[0] in str(e.value)


def test_torchvision_requested_but_absent(tmp_path):
    if D._torchvision() is not None:
        pytest.skip("torchvision is installed here")
    with pytest.raises(ImportError, match="torchvision"):
        D.load_file_dataset("cifar10", tmp_path, use_torchvision=True)


def _idx(path, arr, gz=False):
    arr = np.asarray(arr, np.uint8)
    head = bytes([0, 0, 8, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    (gzip.open if gz else open)(path, "wb").write(head + arr.tobytes())


def _fake_files(name, root, rng):
    if name == "fashion_mnist":
        raw = root / "FashionMNIST" / "raw"
        raw.mkdir(parents=True)
        for pre, n, gz in (("train", 12, False), ("t10k", 5, True)):
            suffix = ".gz" if gz else ""
            _idx(raw / f"{pre}-images-idx3-ubyte{suffix}", rng.integers(0, 256, (n, 28, 28)), gz)
            _idx(raw / f"{pre}-labels-idx1-ubyte{suffix}", np.arange(n) % 10, gz)
        return (12, 5), (1, 28, 28), 10
    if name in ("cifar10", "cifar100"):
        sub = root / ("cifar-10-batches-py" if name == "cifar10" else "cifar-100-python")
        sub.mkdir()
        key = b"labels" if name == "cifar10" else b"fine_labels"
        for rel in D.FILE_DATASETS[name].files:
            n = 3
            blob = {b"data": rng.integers(0, 256, (n, 3072)).astype(np.uint8),
                    key: [i % 10 for i in range(n)]}
            with open(root / rel, "wb") as f:
                pickle.dump(blob, f)
        n_train = 3 * (5 if name == "cifar10" else 1)
        return (n_train, 3), (3, 32, 32), 10 if name == "cifar10" else 100
    from scipy.io import savemat
    for split, n in (("train", 4), ("test", 2)):
        savemat(root / f"{split}_32x32.mat",
                {"X": rng.integers(0, 256, (32, 32, 3, n)).astype(np.uint8),
                 "y": np.array([[10], [1], [2], [3]][:n], np.uint8)})
    return (4, 2), (3, 32, 32), 10


@pytest.mark.parametrize("name", sorted(D.FILE_DATASETS))
def test_file_datasets_read_torchvisions_layout_without_torchvision(name, tmp_path):
    (n_train, n_test), shape, k = _fake_files(name, tmp_path, np.random.default_rng(0))
    s = D.load_file_dataset(name, tmp_path, use_torchvision=False)
    assert (len(s.train), len(s.test)) == (n_train, n_test)
    assert s.input_shape == shape and s.num_classes == k
    x, y = s.train.tensors
    assert x.dtype == torch.float32 and y.dtype == torch.long and -3 < float(x.mean()) < 3
    if name == "svhn":
        assert y.tolist() == [0, 1, 2, 3]          # SVHN stores the digit 0 as label 10


def test_file_dataset_with_a_corrupt_file(tmp_path):
    _fake_files("cifar100", tmp_path, np.random.default_rng(0))
    (tmp_path / "cifar-100-python" / "test").write_bytes(b"not a pickle")
    with pytest.raises(ValueError, match="cannot read"):
        D.load_file_dataset("cifar100", tmp_path, use_torchvision=False)


# -- scenarios ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def synth():
    return D.make_synthetic(num_classes=4, per_class=30, size=4)


def test_class_and_classes_scenarios(synth):
    one = Scenario.from_dict({"kind": "class", "classes": [2]}).split(synth)
    assert one.forget_classes == [2] and len(one.forget) == 24
    assert set(D.labels_of(one.forget).tolist()) == {2}
    assert 2 not in D.labels_of(one.retain).tolist()
    assert int(one.test_forget.sum()) == 6
    many = Scenario.from_dict({"kind": "class", "classes": [0, 3]}).split(synth)
    assert many.scenario.kind == "classes" and many.forget_classes == [0, 3]
    assert len(many.forget) + len(many.retain) == len(synth.train)


def test_subclass_scenario_is_a_deterministic_part_of_one_class(synth):
    sc = Scenario.from_dict({"kind": "subclass", "classes": [1], "k": 2})
    a, b = sc.split(synth, seed=0), sc.split(synth, seed=0)
    assert a.forget.indices == b.forget.indices and torch.equal(a.test_forget, b.test_forget)
    assert a.forget_classes is None
    assert set(D.labels_of(a.forget).tolist()) == {1}
    assert 0 < len(a.forget) < 24                      # a strict part of the class
    assert len(a.forget) >= 12                         # cluster 0 is the largest
    assert set(D.labels_of(synth.test)[a.test_forget].tolist()) <= {1}
    assert a.info()["n_test_forget"] == int(a.test_forget.sum())


def test_random_scenario(synth):
    s = Scenario.from_dict({"kind": "random", "count": 10}).split(synth, seed=3)
    assert len(s.forget) == 10 and s.forget_classes is None and s.test_forget is None
    assert s.forget.indices == Scenario.from_dict({"kind": "random", "count": 10}
                                                  ).split(synth, seed=3).forget.indices
    f = Scenario.from_dict({"kind": "random", "fraction": 0.25}).split(synth)
    assert len(f.forget) == 24


@pytest.mark.parametrize("spec,match", [
    ({"kind": "class", "classes": [7]}, "unknown class"),
    ({"kind": "class", "classes": []}, "at least one class"),
    ({"kind": "classes", "classes": [0, 1, 2, 3]}, "every class"),
    ({"kind": "subclass", "classes": [0, 1]}, "exactly one class"),
    ({"kind": "subclass", "classes": [0], "k": 1}, "k >= 2"),
    ({"kind": "random"}, "count or fraction"),
    ({"kind": "random", "fraction": 0.001}, "forget set is empty"),
    ({"kind": "random", "count": 10_000}, "all 96"),
    ({"kind": "random", "count": 0}, ">= 1"),
    ({"kind": "blob"}, "unknown scenario"),
    ({"kind": "class", "colour": 3}, "unknown scenario key"),
])
def test_scenario_errors(synth, spec, match):
    with pytest.raises(ValueError, match=match):
        Scenario.from_dict(spec).split(synth)
