"""Unlearning scenarios: which training samples form D_f, and how the test split is judged.

Four kinds (``Scenario.kind``):

- ``class``: forget every training sample of one class (``classes=[c]``), or
- ``classes``: of several classes. Both are class-level: ``forget_classes`` is passed to
  :func:`unsc_fast.unlearn` (pseudo-labels avoid every forgotten class), Acc_f on test is the
  mean per-class accuracy over the forgotten classes, Acc_r over the others.
- ``subclass``: forget a sub-population of one class ``c``. The rule (deterministic): k-means
  (scikit-learn, ``k`` clusters, ``random_state=seed``, 10 restarts) on the raw, flattened
  training inputs of class c; clusters are numbered by size, largest first, and D_f is
  cluster ``cluster`` (default 0, the largest). Test samples of class c are assigned to their
  nearest centroid: those of the same cluster are the test forget set (Acc_f = their
  accuracy); Acc_r is the mean per-class accuracy over every other test sample.
- ``random``: forget ``count`` training samples (or a ``fraction`` of them) drawn uniformly
  with ``seed``. Acc_f on test is undefined (``None``); Acc_r is the mean per-class accuracy
  over the whole test split.

``subclass`` and ``random`` are sample-level: ``forget_classes`` is ``None`` and each sample's
pseudo-label is the best class other than its own label.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from torch.utils.data import Subset

from .data import DataSplit, class_split, index_split, inputs_of, labels_of

KINDS = ("class", "classes", "subclass", "random")


@dataclass
class Scenario:
    """What to forget. Build from a config with :meth:`from_dict`; apply with :meth:`split`."""

    kind: str = "class"
    classes: list[int] = field(default_factory=lambda: [3])
    k: int = 3                      # subclass: number of k-means clusters within the class
    cluster: int = 0                # subclass: which cluster (0 = the largest)
    count: int | None = None        # random: number of samples
    fraction: float | None = None   # random: share of the training split (if count unset)

    @classmethod
    def from_dict(cls, d: dict) -> "Scenario":
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown scenario key(s) {sorted(unknown)};"
                             f" allowed: {sorted(cls.__dataclass_fields__)}")
        s = cls(**d)
        bad = [c for c in (s.classes or []) if isinstance(c, bool)
               or not isinstance(c, (int, np.integer))]
        if bad:
            raise ValueError(f"scenario classes must be integer class ids, got {bad}")
        s.classes = [int(c) for c in (s.classes or [])]
        if s.kind not in KINDS:
            raise ValueError(f"unknown scenario {s.kind!r}; choose one of {list(KINDS)}")
        if s.kind == "class" and len(s.classes) > 1:
            s.kind = "classes"
        return s

    def as_dict(self) -> dict:
        return asdict(self)

    @property
    def class_level(self) -> bool:
        return self.kind in ("class", "classes")

    def validate(self, num_classes: int) -> None:
        if self.kind in ("class", "classes", "subclass"):
            if not self.classes:
                raise ValueError(f"scenario {self.kind!r} needs at least one class to forget")
            bad = [c for c in self.classes if not 0 <= c < num_classes]
            if bad:
                raise ValueError(f"unknown class {bad}: the data set has classes"
                                 f" 0..{num_classes - 1}")
            if len(set(self.classes)) >= num_classes:
                raise ValueError("every class would be forgotten: nothing left to retain")
        if self.kind == "subclass":
            if len(self.classes) != 1:
                raise ValueError("scenario 'subclass' takes exactly one class")
            if self.k < 2 or not 0 <= self.cluster < self.k:
                raise ValueError(f"subclass needs k >= 2 and 0 <= cluster < k,"
                                 f" got k={self.k}, cluster={self.cluster}")
        if self.kind == "random":
            if self.count is None and self.fraction is None:
                raise ValueError("scenario 'random' needs count or fraction")
            if self.count is not None and self.count < 1:
                raise ValueError(f"random count must be >= 1, got {self.count}")
            if self.fraction is not None and not 0 < self.fraction < 1:
                raise ValueError(f"random fraction must lie in (0, 1), got {self.fraction}")

    def describe(self) -> str:
        if self.kind in ("class", "classes"):
            return f"class{'es' if len(self.classes) > 1 else ''} {self.classes}"
        if self.kind == "subclass":
            return (f"sub-class: k-means cluster {self.cluster} of {self.k}"
                    f" in class {self.classes[0]}")
        n = self.count if self.count is not None else f"{100 * self.fraction:g}%"
        return f"{n} random samples"

    def split(self, data: DataSplit, seed: int = 0) -> "ScenarioSplit":
        """Apply to a data split: D_r, D_f and the test masks (clear errors when empty)."""
        self.validate(data.num_classes)
        ytest = labels_of(data.test)
        if self.class_level:
            retain, forget = class_split(data.train, self.classes)
            test_forget = torch.isin(ytest, torch.as_tensor(self.classes))
            forget_classes = sorted(set(self.classes))
        elif self.kind == "subclass":
            idx, test_forget = self._subclass(data, seed)
            retain, forget = index_split(data.train, idx)
            forget_classes = None
        else:
            n = len(data.train)
            count = self.count if self.count is not None else int(round(self.fraction * n))
            if count < 1:
                raise ValueError(f"the forget set is empty: the random scenario picks {count}"
                                 f" of {n} training samples")
            if count >= n:
                raise ValueError(f"the random scenario would forget all {n} training samples")
            g = torch.Generator().manual_seed(seed)
            idx = torch.randperm(n, generator=g)[:count].sort().values.tolist()
            retain, forget = index_split(data.train, idx)
            test_forget = None
            forget_classes = None
        if len(forget) == 0:
            raise ValueError(f"the forget set is empty for {self.describe()}")
        if len(retain) == 0:
            raise ValueError(f"nothing is left to retain for {self.describe()}")
        return ScenarioSplit(self, retain, forget, forget_classes, test_forget, data.num_classes)

    def _subclass(self, data: DataSplit, seed: int) -> tuple[list[int], torch.Tensor]:
        from sklearn.cluster import KMeans
        c = self.classes[0]
        ytr, yte = labels_of(data.train), labels_of(data.test)
        idx = torch.nonzero(ytr == c).flatten()
        if len(idx) < self.k:
            raise ValueError(f"class {c} has {len(idx)} training samples, fewer than k={self.k}")
        X = inputs_of(data.train)[idx].flatten(1).double().numpy()
        km = KMeans(self.k, random_state=seed, n_init=10).fit(X)
        sizes = np.bincount(km.labels_, minlength=self.k)
        order = np.argsort(-sizes, kind="stable")          # cluster ids by size, largest first
        target = order[self.cluster]
        forget_idx = idx[torch.from_numpy(km.labels_ == target)].tolist()
        test_forget = torch.zeros(len(yte), dtype=torch.bool)
        tidx = torch.nonzero(yte == c).flatten()
        if len(tidx):
            Xt = inputs_of(data.test)[tidx].flatten(1).double().numpy()
            test_forget[tidx[torch.from_numpy(km.predict(Xt) == target)]] = True
        return forget_idx, test_forget


@dataclass
class ScenarioSplit:
    """The training split cut into D_r / D_f, and which test samples count as "forget"."""

    scenario: Scenario
    retain: Subset
    forget: Subset
    forget_classes: list[int] | None     # class-level: passed to unlearn; else None
    test_forget: torch.Tensor | None     # bool mask over the test split (None: random)
    num_classes: int

    def holdout(self, test, share: float = 0.5, seed: int = 0) -> Subset:
        """Held-out data for UNSC's sample mode: a fixed random ``share`` of the test samples
        outside the test forget part (the samples Acc_f is measured on are never used).

        MNIST 5k has no validation split, so this stands in for the user's own held-out
        data; the evaluation still uses the whole test split (docs/reproduction.md)."""
        keep = torch.ones(len(test), dtype=torch.bool)
        if self.test_forget is not None:
            keep &= ~self.test_forget
        idx = torch.nonzero(keep).flatten()
        g = torch.Generator().manual_seed(seed)
        n = max(2, int(round(share * len(idx))))
        return Subset(test, idx[torch.randperm(len(idx), generator=g)[:n]].sort().values.tolist())

    def info(self) -> dict:
        return {**self.scenario.as_dict(), "kind": self.scenario.kind,
                "description": self.scenario.describe(),
                "forget_classes": self.forget_classes,
                "n_forget": len(self.forget), "n_retain": len(self.retain),
                "n_test_forget": None if self.test_forget is None
                else int(self.test_forget.sum())}
