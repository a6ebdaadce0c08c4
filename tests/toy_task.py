"""A tiny sample-level task shared by the sample-mode tests: an MLP trained on 4 Gaussian
classes, 12 training samples to forget and the rest to retain."""
import torch

from unsc_fast.lab import data as D
from unsc_fast.lab.models import build_model
from unsc_fast.lab.train import train


def toy_task(seed=0):
    """(split, trained model in eval mode, forget Subset, retain Subset)."""
    split = D.make_synthetic(num_classes=4, per_class=30, size=6, seed=seed)
    torch.manual_seed(seed)
    model = build_model("mlp", split.input_shape, split.num_classes)
    train(model, D.loader(split.train, 16, True), epochs=10, progress=False)
    model.eval()
    idx = list(range(len(split.train)))
    forget = torch.utils.data.Subset(split.train, idx[:12])
    retain = torch.utils.data.Subset(split.train, idx[12:])
    return split, model, forget, retain
