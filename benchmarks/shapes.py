"""Benchmark shapes, drawn from the layers of real models, and the suites built from them.

Every shape the suite times comes from this module. Layers carry their full geometry, so the
conv accumulate runs on the real (C_in, H, W, k, stride, pad, groups) of the layer and the
projection runs on the real (out, in) gradient matrices of a whole model.

Models (input resolution in brackets):

- ``resnet18``: ResNet-18, CIFAR variant (32x32; 3x3 stem, stride 1, no max-pool), 20 convs
  (shortcuts included) + fc.
- ``allcnn``: All-CNN-C with BN (32x32), 9 convs (the classifier is a 1x1 conv).
- ``vgg11``: VGG-11-BN, CIFAR variant (32x32), 8 convs + one linear classifier.
- ``resnext50``: one grouped conv of ResNeXt-50 32x4d (ImageNet, 56x56, groups=32), the only
  grouped geometry here.
- ``vit_b``: one encoder block of ViT-B/16 (d_model 768, MLP 3072; 197 tokens an image).
- ``llama2_7b`` / ``llama3_8b``: one decoder block (hidden 4096; MLP 11008 / 14336; Llama-3
  has grouped-query k/v projections to 1024). GPU suites only.

A *case* is one op on one shape set with one dtype (:class:`CaseSpec`, JSON-able so that the
memory worker subprocess can rebuild it). Suites: :func:`suite` (``smoke``, ``quick``, ``full``
per device) and :func:`tune_cases` (representative shapes for ``benchmarks.tune``).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

# ---- layers ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Conv:
    """A 2-D convolution as it sees its input: (C_in, H, W) in, k x k kernel."""

    model: str
    name: str
    c_in: int
    c_out: int
    h: int
    w: int
    k: int
    stride: int = 1
    pad: int = 0
    groups: int = 1

    @property
    def key(self) -> str:
        return f"{self.model}.{self.name}"

    @property
    def d(self) -> int:
        """Patch dimension per group: C_in/groups * k * k."""
        return self.c_in // self.groups * self.k * self.k

    @property
    def out_hw(self) -> tuple[int, int]:
        oh = (self.h + 2 * self.pad - self.k) // self.stride + 1
        ow = (self.w + 2 * self.pad - self.k) // self.stride + 1
        return oh, ow

    @property
    def positions(self) -> int:
        oh, ow = self.out_hw
        return oh * ow

    def geometry_dict(self) -> dict:
        return {"c_in": self.c_in, "c_out": self.c_out, "h": self.h, "w": self.w, "k": self.k,
                "stride": self.stride, "pad": self.pad, "groups": self.groups}

    def describe(self) -> str:
        g = f" g{self.groups}" if self.groups > 1 else ""
        return (f"{self.c_in}x{self.h}x{self.w} k{self.k} s{self.stride} p{self.pad}{g}"
                f" (d={self.d})")


@dataclass(frozen=True)
class Linear:
    model: str
    name: str
    d_in: int
    d_out: int

    @property
    def key(self) -> str:
        return f"{self.model}.{self.name}"

    @property
    def d(self) -> int:
        return self.d_in


def _resnet18_cifar() -> list:
    L: list = [Conv("resnet18", "conv1", 3, 64, 32, 32, 3, 1, 1)]
    cin, side = 64, 32
    for stage, c in enumerate((64, 128, 256, 512), start=1):
        stride = 1 if stage == 1 else 2
        for b in range(2):
            s = stride if b == 0 else 1
            L.append(Conv("resnet18", f"layer{stage}.{b}.conv1", cin, c, side, side, 3, s, 1))
            side_out = side // s
            L.append(Conv("resnet18", f"layer{stage}.{b}.conv2", c, c, side_out, side_out, 3, 1, 1))
            if b == 0 and (s != 1 or cin != c):
                L.append(Conv("resnet18", f"layer{stage}.{b}.shortcut.0", cin, c, side, side,
                              1, s, 0))
            cin, side = c, side_out
    L.append(Linear("resnet18", "fc", 512, 10))
    return L


def _allcnn() -> list:
    spec = [  # (c_in, c_out, side, k, stride, pad)
        (3, 96, 32, 3, 1, 1), (96, 96, 32, 3, 1, 1), (96, 96, 32, 3, 2, 1),
        (96, 192, 16, 3, 1, 1), (192, 192, 16, 3, 1, 1), (192, 192, 16, 3, 2, 1),
        (192, 192, 8, 3, 1, 1), (192, 192, 8, 1, 1, 0), (192, 10, 8, 1, 1, 0),
    ]
    names = [f"features.{i}" for i in range(8)] + ["classifier.0"]
    return [Conv("allcnn", n, ci, co, s, s, k, st, p)
            for n, (ci, co, s, k, st, p) in zip(names, spec)]


def _vgg11_cifar() -> list:
    spec = [(3, 64, 32), (64, 128, 16), (128, 256, 8), (256, 256, 8), (256, 512, 4),
            (512, 512, 4), (512, 512, 2), (512, 512, 2)]
    L: list = [Conv("vgg11", f"conv{i}", ci, co, s, s, 3, 1, 1) for i, (ci, co, s) in
               enumerate(spec)]
    L.append(Linear("vgg11", "classifier", 512, 10))
    return L


RESNET18 = _resnet18_cifar()
ALLCNN = _allcnn()
VGG11 = _vgg11_cifar()
RESNEXT50 = [Conv("resnext50", "layer1.0.conv2", 128, 128, 56, 56, 3, 1, 1, groups=32)]
VIT_B = [Linear("vit_b", "attn.qkv", 768, 2304), Linear("vit_b", "attn.proj", 768, 768),
         Linear("vit_b", "mlp.fc1", 768, 3072), Linear("vit_b", "mlp.fc2", 3072, 768)]
LLAMA2_7B = [Linear("llama2_7b", f"attn.{p}", 4096, 4096) for p in "qkvo"] + [
    Linear("llama2_7b", "mlp.gate", 4096, 11008), Linear("llama2_7b", "mlp.up", 4096, 11008),
    Linear("llama2_7b", "mlp.down", 11008, 4096)]
LLAMA3_8B = [Linear("llama3_8b", "attn.q", 4096, 4096), Linear("llama3_8b", "attn.k", 4096, 1024),
             Linear("llama3_8b", "attn.v", 4096, 1024), Linear("llama3_8b", "attn.o", 4096, 4096),
             Linear("llama3_8b", "mlp.gate", 4096, 14336),
             Linear("llama3_8b", "mlp.up", 4096, 14336),
             Linear("llama3_8b", "mlp.down", 14336, 4096)]

MODELS = {"resnet18": RESNET18, "allcnn": ALLCNN, "vgg11": VGG11, "resnext50": RESNEXT50,
          "vit_b": VIT_B, "llama2_7b": LLAMA2_7B, "llama3_8b": LLAMA3_8B}
LAYERS = {layer.key: layer for layers in MODELS.values() for layer in layers}


def layer(key: str):
    """A layer by ``model.name``, e.g. ``resnet18.layer1.0.conv1``."""
    return LAYERS[key]


# ---- correctness shapes (shared with tests/) -------------------------------------------------
# The small shapes every backend is checked on against the float64 reference: tests/cases.py
# re-exports them for the per-op tests. Tiny, odd,
# tall, wide and square shapes; ranks 0, 1, d-1 and d.

# (n, d) for S += XᵀX
DENSE_SHAPES = [(1, 1), (7, 3), (5, 17), (64, 33), (200, 64), (3, 130), (129, 31)]

# (N, C, H, W, ConvGeometry keyword arguments)
CONV_SHAPES = [
    (2, 3, 5, 5, dict(kernel_size=(3, 3))),
    (2, 3, 7, 6, dict(kernel_size=(3, 3), stride=(2, 2), pad=(1, 1, 1, 1))),
    (1, 4, 9, 9, dict(kernel_size=(3, 2), stride=(1, 2), pad=(0, 0, 2, 2), dilation=(2, 1))),
    (3, 4, 6, 6, dict(kernel_size=(3, 3), pad=(1, 1, 1, 1), groups=2)),
    (2, 6, 5, 7, dict(kernel_size=(3, 3), pad=(1, 1, 1, 1), groups=6)),  # depthwise
    (2, 5, 4, 4, dict(kernel_size=(1, 1))),
    (1, 2, 8, 8, dict(kernel_size=(5, 5), stride=(3, 3), pad=(2, 2, 2, 2))),
]

# (rows, d, m) for G ← G − (G B)Bᵀ; m covers ranks 0, 1, d-1 and d
PROJECT_SHAPES = [(1, 1, 0), (1, 1, 1), (5, 3, 1), (7, 9, 8), (16, 33, 0), (16, 33, 33),
                  (33, 17, 5), (64, 40, 39), (3, 70, 12)]


# ---- cases ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class CaseSpec:
    """One benchmark case: an op, a shape set, a dtype. ``params`` are JSON-able.

    - ``accumulate``: params ``{"layer": key, "d": d, "n": rows}``.
    - ``accumulate_conv``: params ``{"layer": key, "batch": N, **geometry}``.
    - ``project``: params ``{"model": name, "rank_frac": f, "layers": [[key, out, d, groups]...]}``,
      stored basis m = max(1, round(f * d)) columns per layer (group), ``subtract=True``.
    - ``eigh``: params ``{"d": d}`` (context: the decomposition behind the bases, torch only).
    """

    op: str
    shape_set: str
    dtype: str
    params: dict = field(default_factory=dict, hash=False, compare=False)

    @property
    def label(self) -> str:
        p = self.params
        if self.op == "accumulate":
            return f"n={p['n']} d={p['d']}"
        if self.op == "accumulate_conv":
            lay = layer(p["layer"])
            return f"N={p['batch']} {lay.describe()} rows={p['batch'] * lay.positions}"
        if self.op == "project_grads":
            return f"{len(p['layers'])} layers, m={p['rank_frac']:g}d"
        if self.op == "eigh":
            return f"d={p['d']}"
        return ""

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "CaseSpec":
        return cls(d["op"], d["shape_set"], d["dtype"], dict(d["params"]))


def accumulate_case(key: str, n: int, dtype: str = "float32") -> CaseSpec:
    lay = layer(key)
    return CaseSpec("accumulate", f"{key} (in={lay.d})", dtype,
                    {"layer": key, "d": lay.d, "n": int(n)})


def conv_case(key: str, batch: int, dtype: str = "float32") -> CaseSpec:
    lay = layer(key)
    return CaseSpec("accumulate_conv", key, dtype,
                    {"layer": key, "batch": int(batch), **lay.geometry_dict()})


def project_case(model: str, rank_frac: float, dtype: str = "float32",
                 only: list[str] | None = None) -> CaseSpec:
    layers = [lay for lay in MODELS[model] if only is None or lay.name in only]
    rows = []
    for lay in layers:
        if isinstance(lay, Conv):
            rows.append([lay.key, lay.c_out, lay.d, lay.groups])
        else:
            rows.append([lay.key, lay.d_out, lay.d_in, 1])
    name = model if only is None else f"{model}[{','.join(only)}]"
    return CaseSpec("project_grads", name, dtype, {"model": model, "rank_frac": float(rank_frac),
                                             "layers": rows})


def eigh_case(d: int) -> CaseSpec:
    return CaseSpec("eigh", f"covariance d={d}", "float64", {"d": int(d)})


def conv_batch_for_rows(key: str, rows: int) -> int:
    """The image batch whose patches give about ``rows`` rows (at least one image)."""
    return max(1, round(rows / layer(key).positions))


# ---- suites ---------------------------------------------------------------------------------

PRESETS = ("smoke", "quick", "full")


def suite(device: str, preset: str) -> list[CaseSpec]:
    """The cases of one run, in the order they are timed (cheap and important ones first)."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {PRESETS}")
    if preset == "smoke":  # one case of each op, the same on every device
        return [accumulate_case("resnet18.fc", 128), conv_case("vgg11.conv0", 1),
                project_case("resnet18", 0.25, only=["fc"]), eigh_case(64)]
    if device == "cuda":
        return _cuda_suite(preset)
    return _cpu_suite(preset)


def _cpu_suite(preset: str) -> list[CaseSpec]:
    cases: list[CaseSpec] = []
    if preset == "quick":
        acc = [("resnet18.fc", (128, 1024, 8192)), ("vit_b.attn.qkv", (128, 1024, 8192)),
               ("vit_b.mlp.fc2", (128, 1024))]
        conv = [("resnet18.conv1", 8192), ("resnet18.layer1.0.conv1", 1024),
                ("resnet18.layer1.0.conv1", 8192), ("resnet18.layer2.0.conv1", 2048),
                ("resnet18.layer2.0.shortcut.0", 2048), ("resnet18.layer3.0.conv2", 1024),
                ("allcnn.features.4", 1024), ("resnext50.layer1.0.conv2", 3136)]
        proj = [("allcnn", 0.05), ("allcnn", 0.25), ("resnet18", 0.05), ("vit_b", 0.25)]
        eig = (256, 512, 1024)
    else:
        acc = [("resnet18.fc", (128, 512, 2048, 8192)), ("vit_b.attn.qkv", (128, 512, 2048, 8192)),
               ("vit_b.mlp.fc2", (128, 512, 2048, 8192))]
        conv = [(k, r) for k in ("resnet18.conv1", "resnet18.layer1.0.conv1",
                                 "resnet18.layer2.0.conv1", "resnet18.layer2.0.shortcut.0",
                                 "resnet18.layer3.0.conv2", "resnet18.layer4.0.conv2",
                                 "allcnn.features.1", "allcnn.features.4", "allcnn.features.7",
                                 "vgg11.conv2", "vgg11.conv6", "resnext50.layer1.0.conv2")
                for r in (1024, 8192)]
        proj = [(m, f) for m in ("allcnn", "resnet18", "vgg11", "vit_b") for f in (0.05, 0.25)]
        eig = (128, 256, 512, 1024)
    for key, ns in acc:
        cases += [accumulate_case(key, n) for n in ns]
    cases += [conv_case(key, conv_batch_for_rows(key, rows)) for key, rows in conv]
    cases += [project_case(m, f) for m, f in proj]
    cases += [eigh_case(d) for d in eig]
    return cases


def _cuda_suite(preset: str) -> list[CaseSpec]:
    dtypes = ("float32", "bfloat16")
    acc_layers = ["resnet18.fc", "vit_b.attn.qkv", "vit_b.mlp.fc2", "llama2_7b.attn.q",
                  "llama2_7b.mlp.down", "llama3_8b.mlp.down"]
    rows = (128, 1024, 8192) if preset == "quick" else (128, 512, 2048, 8192)
    conv_keys = ["resnet18.conv1", "resnet18.layer1.0.conv1", "resnet18.layer2.0.conv1",
                 "resnet18.layer2.0.shortcut.0", "resnet18.layer3.0.conv2",
                 "resnet18.layer4.0.conv2", "allcnn.features.1", "allcnn.features.4",
                 "vgg11.conv6", "resnext50.layer1.0.conv2"]
    batches = (16, 128)
    proj_models = ["allcnn", "resnet18", "vgg11", "vit_b", "llama2_7b", "llama3_8b"]
    fracs = (0.05, 0.25)
    cases: list[CaseSpec] = []
    for dt in dtypes:  # fp32 of every op first: a time budget cuts bf16 and eigh, not an op
        cases += [accumulate_case(k, n, dt) for k in acc_layers for n in rows]
        cases += [conv_case(k, b, dt) for k in conv_keys for b in batches]
        cases += [project_case(m, f, dt) for m in proj_models for f in fracs]
    cases += [eigh_case(d) for d in (512, 1024, 2304, 4608)]
    return cases


def tune_cases(device: str) -> dict[str, list[CaseSpec]]:
    """Representative shapes per op for ``benchmarks.tune`` (fp32, a spread of sizes)."""
    if device == "cuda":
        acc = [("vit_b.attn.qkv", 1024), ("vit_b.mlp.fc2", 8192), ("llama2_7b.attn.q", 8192)]
        conv = [("resnet18.layer1.0.conv1", 128), ("resnet18.layer3.0.conv2", 128),
                ("allcnn.features.4", 128)]
        proj = [("resnet18", 0.05), ("vit_b", 0.25), ("llama2_7b", 0.05)]
    else:
        acc = [("resnet18.fc", 1024), ("vit_b.attn.qkv", 8192), ("vit_b.mlp.fc2", 1024)]
        conv = [("resnet18.layer1.0.conv1", 8), ("resnet18.layer3.0.conv2", 16),
                ("allcnn.features.4", 4)]
        proj = [("allcnn", 0.25), ("resnet18", 0.05), ("vit_b", 0.05)]
    return {"accumulate": [accumulate_case(key, n) for key, n in acc],
            "accumulate_conv": [conv_case(key, batch) for key, batch in conv],
            "project_grads": [project_case(m, f) for m, f in proj]}
