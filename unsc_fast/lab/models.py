"""Models for the built-in examples and the paper's experiments, all built by name.

``build_model(name, input_shape, num_classes, width=1.0)``; ``width`` multiplies every
channel and hidden size (``width=0.125`` keeps tests tiny). Names (see ``MODELS``):

- ``small_cnn``: two conv-BN-ReLU-pool blocks and a two-layer head (the demo's model).
- ``mlp``: a plain multi-layer perceptron on flattened inputs.
- ``alexnet``: the AlexNet-style CNN of the paper's (Fashion-)MNIST / CIFAR experiments (as in
  the GPM code UNSC builds on): three conv blocks (kernels 4, 3, 2; 64-128-256 channels) with
  BN, ReLU, dropout and 2x2 max-pooling, then two 2048-wide BN fully connected layers. It
  works for 28x28 grey and 32x32 RGB inputs alike (both end in 2x2 feature maps). Its
  dropout precedes BatchNorm layers, so :func:`unsc_fast.lab.train.train` recomputes the BN
  statistics in inference mode after training (GPM's code keeps no running statistics and
  normalises with batch statistics even at test time, so a prediction there depends on the
  rest of its batch).
- ``allcnn``: All-CNN-C (Springenberg et al.) with BN: 96/192-channel 3x3 convs, strided
  convs instead of pooling, global average pooling.
- ``vgg11_bn``: VGG-11 with BN, CIFAR variant (one linear classifier on 512 features);
  max-pools that would shrink a map below 1x1 are left out, so 28x28 inputs work too.
- ``resnet18``: ResNet-18, CIFAR variant (3x3 stem with stride 1, no max-pool).
"""
from __future__ import annotations

import torch
from torch import nn


def _ch(c: int, width: float) -> int:
    return max(1, int(round(c * width)))


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


def _feature_shape(features: nn.Module, input_shape: tuple[int, ...], name: str
                   ) -> torch.Size:
    """Output shape of ``features`` for one input, or a clear error if the input is too small."""
    was = features.training
    features.eval()
    try:
        with torch.no_grad():
            return features(torch.zeros(1, *input_shape)).shape[1:]
    except RuntimeError as exc:
        raise ValueError(f"model {name!r} cannot take inputs of shape {tuple(input_shape)}"
                         f" (too small?): {exc}") from None
    finally:
        features.train(was)


class AlexNet(nn.Module):
    """The paper's AlexNet-style CNN (GPM/UNSC code), for 28x28 grey or 32x32 RGB inputs."""

    def __init__(self, input_shape: tuple[int, int, int] = (1, 28, 28), num_classes: int = 10,
                 width: float = 1.0):
        super().__init__()
        c = input_shape[0]
        c1, c2, c3, h = _ch(64, width), _ch(128, width), _ch(256, width), _ch(2048, width)
        self.features = nn.Sequential(
            nn.Conv2d(c, c1, 4, bias=False), nn.BatchNorm2d(c1), nn.ReLU(), nn.Dropout(0.2),
            nn.MaxPool2d(2),
            nn.Conv2d(c1, c2, 3, bias=False), nn.BatchNorm2d(c2), nn.ReLU(), nn.Dropout(0.2),
            nn.MaxPool2d(2),
            nn.Conv2d(c2, c3, 2, bias=False), nn.BatchNorm2d(c3), nn.ReLU(), nn.Dropout(0.5),
            nn.MaxPool2d(2),
        )
        flat = int(torch.Size(_feature_shape(self.features, input_shape, "alexnet")).numel())
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(flat, h, bias=False), nn.BatchNorm1d(h), nn.ReLU(), nn.Dropout(0.5),
            nn.Linear(h, h, bias=False), nn.BatchNorm1d(h), nn.ReLU(), nn.Dropout(0.5),
            nn.Linear(h, num_classes, bias=False),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def _conv_bn(cin: int, cout: int, k: int, stride: int = 1, padding: int = 0) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, k, stride, padding, bias=False), nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True)]


class AllCNN(nn.Module):
    """All-CNN-C with BatchNorm (the CIFAR-10 model of the paper's experiments)."""

    def __init__(self, input_shape: tuple[int, int, int] = (3, 32, 32), num_classes: int = 10,
                 width: float = 1.0, dropout: bool = True):
        super().__init__()
        c = input_shape[0]
        a, b = _ch(96, width), _ch(192, width)
        layers: list[nn.Module] = []
        layers += _conv_bn(c, a, 3, padding=1) + _conv_bn(a, a, 3, padding=1)
        layers += _conv_bn(a, a, 3, stride=2, padding=1)
        layers += [nn.Dropout(0.5)] if dropout else []
        layers += _conv_bn(a, b, 3, padding=1) + _conv_bn(b, b, 3, padding=1)
        layers += _conv_bn(b, b, 3, stride=2, padding=1)
        layers += [nn.Dropout(0.5)] if dropout else []
        layers += _conv_bn(b, b, 3, padding=1) + _conv_bn(b, b, 1)
        self.features = nn.Sequential(*layers)
        _feature_shape(self.features, input_shape, "allcnn")
        self.classifier = nn.Sequential(nn.Conv2d(b, num_classes, 1), nn.AdaptiveAvgPool2d(1),
                                        nn.Flatten())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


VGG11 = [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"]


class VGG(nn.Module):
    """VGG with BatchNorm, CIFAR variant: conv stack, global pooling, one linear classifier."""

    def __init__(self, input_shape: tuple[int, int, int] = (3, 32, 32), num_classes: int = 10,
                 width: float = 1.0, cfg: list = VGG11):
        super().__init__()
        c, side = input_shape[0], min(input_shape[1:])
        layers: list[nn.Module] = []
        for v in cfg:
            if v == "M":
                if side >= 2:  # skip pools that would leave no pixel (small inputs)
                    layers.append(nn.MaxPool2d(2))
                    side //= 2
            else:
                layers += _conv_bn(c, _ch(v, width), 3, padding=1)
                c = _ch(v, width)
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.classifier = nn.Linear(c, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                          nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class ResNet18(nn.Module):
    """ResNet-18, CIFAR variant: 3x3 stem, stride 1, no max-pool; four stages of two blocks."""

    def __init__(self, input_shape: tuple[int, int, int] = (3, 32, 32), num_classes: int = 10,
                 width: float = 1.0):
        super().__init__()
        c0 = _ch(64, width)
        self.conv1 = nn.Conv2d(input_shape[0], c0, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c0)
        stages, cin = [], c0
        for i, c in enumerate((64, 128, 256, 512)):
            cout = _ch(c, width)
            stride = 1 if i == 0 else 2
            stages.append(nn.Sequential(BasicBlock(cin, cout, stride), BasicBlock(cout, cout)))
            cin = cout
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        return self.fc(torch.flatten(self.pool(out), 1))


def _small_cnn(shape, classes, width):
    return SmallCNN(shape[0], classes, shape[1], width=_ch(16, width))


def _mlp(shape, classes, width):
    return MLP(int(torch.Size(shape).numel()), classes, hidden=_ch(128, width))


MODELS = {
    "small_cnn": _small_cnn,
    "mlp": _mlp,
    "alexnet": lambda s, k, w: AlexNet(s, k, w),
    "allcnn": lambda s, k, w: AllCNN(s, k, w),
    "vgg11_bn": lambda s, k, w: VGG(s, k, w),
    "resnet18": lambda s, k, w: ResNet18(s, k, w),
}


def build_model(name: str, input_shape: tuple[int, ...], num_classes: int,
                width: float = 1.0) -> nn.Module:
    """A model by name (see ``MODELS``) for inputs of ``input_shape`` (C, H, W).

    ``width`` multiplies every channel / hidden size (1.0: the published sizes).
    """
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of {sorted(MODELS)}")
    if len(input_shape) != 3:
        raise ValueError(f"model {name!r} needs (C, H, W) inputs, got shape {tuple(input_shape)}")
    if not width > 0:
        raise ValueError(f"width must be positive, got {width}")
    if num_classes < 2:
        raise ValueError(f"need at least 2 classes, got {num_classes}")
    return MODELS[name](tuple(int(s) for s in input_shape), int(num_classes), float(width))
