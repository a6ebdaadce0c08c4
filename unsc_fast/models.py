"""Models for the built-in examples and the paper's experiments."""
from __future__ import annotations

import torch
from torch import nn


class SmallCNN(nn.Module):
    """Two conv blocks (conv-BN-ReLU-pool) and a two-layer head: the tiny-data workhorse."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10, image_size: int = 28,
                 width: int = 16):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.BatchNorm2d(2 * width), nn.ReLU(),
            nn.MaxPool2d(2),
        )
        side = image_size // 4
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(2 * width * side * side, 64), nn.ReLU(),
            nn.Linear(64, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class MLP(nn.Module):
    """A plain multi-layer perceptron on flattened inputs."""

    def __init__(self, in_features: int, num_classes: int = 10, hidden: int = 128,
                 depth: int = 2):
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        d = in_features
        for _ in range(depth):
            layers += [nn.Linear(d, hidden), nn.ReLU()]
            d = hidden
        layers.append(nn.Linear(d, num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


MODELS = {"small_cnn": SmallCNN, "mlp": MLP}


def build_model(name: str, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """A model by name for inputs of ``input_shape`` (C, H, W)."""
    c, h, w = input_shape
    if name == "small_cnn":
        return SmallCNN(c, num_classes, h)
    if name == "mlp":
        return MLP(c * h * w, num_classes)
    raise ValueError(f"unknown model {name!r}; choose one of {sorted(MODELS)}")
