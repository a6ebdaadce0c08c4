"""Validation in unsc_fast.bases: rank-rule ranges, NullSpace.check and NullSpace.load."""
import json

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

import unsc_fast as uf
from unsc_fast.bases import LayerBasis, NullSpace

NAN, INF = float("nan"), float("inf")

# -- 1. rank rules ---------------------------------------------------------------------------


@pytest.mark.parametrize("spec,match", [
    ("rank:-1", "rank"), ("threshold:2", "threshold"), ("threshold:-0.1", "threshold"),
    ("threshold:nan", "threshold"), ("floor:0", "floor"), ("floor:0.5", "floor"),
    ("floor:inf", "floor"), ("floor:nan", "floor"), ("energy:nan", "energy eps"),
    ("energy:-0.5", "energy eps"), ("energy:inf", "energy eps"),
])
def test_parse_rule_rejects_out_of_range(spec, match):
    with pytest.raises(ValueError, match=match) as info:
        uf.parse_rule(spec)
    assert spec in str(info.value)                       # names the spec as written


@pytest.mark.parametrize("make,match", [
    (lambda: uf.Energy(NAN), r"energy eps .*\[0, 1\]"),
    (lambda: uf.Energy(2.0), r"energy eps .*\[0, 1\]"),
    (lambda: uf.Energy(-0.1), r"energy eps .*\[0, 1\]"),
    (lambda: uf.Threshold(NAN), r"threshold t .*\[0, 1\]"),
    (lambda: uf.Threshold(1.5), r"threshold t .*\[0, 1\]"),
    (lambda: uf.EigenFloor(0.0), r"floor a .*>= 1"),
    (lambda: uf.EigenFloor(0.99), r"floor a .*>= 1"),
    (lambda: uf.EigenFloor(INF), r"floor a .*>= 1"),
    (lambda: uf.EigenFloor(-3.0), r"floor a .*>= 1"),
    (lambda: uf.FixedRank(-1), r"rank k .*>= 0"),
])
def test_rule_constructors_reject_out_of_range(make, match):
    with pytest.raises(ValueError, match=match):
        make()


@pytest.mark.parametrize("make", [lambda: uf.FixedRank(2.5), lambda: uf.FixedRank(True),
                                  lambda: uf.Energy("0.9"), lambda: uf.EigenFloor(None)])
def test_rule_constructors_reject_wrong_types(make):
    with pytest.raises(TypeError):
        make()


@pytest.mark.parametrize("rule", [uf.Energy(0.0), uf.Energy(1.0), uf.Energy(1), uf.Threshold(0),
                                  uf.Threshold(1.0), uf.EigenFloor(1.0), uf.EigenFloor(1e6),
                                  uf.FixedRank(0), uf.FixedRank(10**9)])
def test_rule_constructors_accept_bounds(rule):
    assert isinstance(rule.rank(torch.tensor([3.0, 2.0, 1.0], dtype=torch.float64)), int)


def test_rule_messages_and_existing_messages():
    with pytest.raises(ValueError, match="bad rank rule"):
        uf.parse_rule("bogus:1")
    with pytest.raises(ValueError, match="bad value in rank rule"):
        uf.parse_rule("rank:1.5")
    with pytest.raises(ValueError, match="energy eps"):
        uf.parse_rule("energy:5")
    assert uf.parse_rule("floor:1") == uf.EigenFloor(1.0)
    assert uf.parse_rule("rank:0") == uf.FixedRank(0)


# -- 2. NullSpace.check ----------------------------------------------------------------------


def _lb(kind, d, groups=1, include_bias=False, m=2):
    return LayerBasis(kind, d, [torch.eye(d, m) for _ in range(groups)], [True] * groups,
                      [m] * groups, include_bias)


def _model():
    return nn.Sequential(nn.Conv2d(4, 6, 3, groups=2), nn.ReLU(), nn.Flatten(),
                         nn.Linear(6, 5), nn.Linear(5, 3, bias=False))


def test_check_accepts_matching_bases_from_statistics():
    torch.manual_seed(0)
    model = _model()
    m = uf.SecondMoments(model, include_bias=True).collect([torch.randn(8, 4, 3, 3)],
                                                           progress=False)
    bases = NullSpace.from_moments(m, "energy:0.9", include_bias=False)
    assert bases.check(model) is None
    NullSpace({"0": _lb("conv2d", 2 * 9 + 1, groups=2, include_bias=True),
               "3": _lb("linear", 7, include_bias=True)}).check(model)


def test_check_missing_layer_is_key_error():
    with pytest.raises(KeyError, match="nope"):
        NullSpace({"3": _lb("linear", 6), "nope": _lb("linear", 6)}).check(_model())


def test_check_unsupported_module_is_type_error():
    with pytest.raises(TypeError, match=r"'1'.*ReLU"):
        NullSpace({"1": _lb("linear", 6)}).check(_model())


@pytest.mark.parametrize("name,lb,match", [
    ("3", _lb("linear", 7), r"'3'.*6"),                                  # d != in_features
    ("3", _lb("linear", 6, include_bias=True), r"'3'.*7"),               # +1 for the bias
    ("4", _lb("linear", 6, include_bias=True), "no bias"),               # bias=False layer
    ("0", _lb("conv2d", 36), r"'0'.*18"),                                # ignores groups
    ("0", _lb("conv2d", 18, groups=1), "group"),                         # groups differ
    ("0", _lb("conv2d", 18, groups=3), "group"),
    ("3", _lb("linear", 6, groups=2), "group"),
    ("0", _lb("linear", 18, groups=2), "kind"),                          # kind differs
    ("3", LayerBasis("linear", 6, [torch.zeros(5, 2)], [True], [2]), "rows"),
])
def test_check_dimension_mismatch_is_value_error(name, lb, match):
    with pytest.raises(ValueError, match=match):
        NullSpace({name: lb}).check(_model())


# -- 3. NullSpace.load of files that hold something else -------------------------------------


def _good():
    return NullSpace({"0": _lb("conv2d", 18, groups=2), "3": _lb("linear", 6)})


def test_load_round_trip_still_works(tmp_path):
    for name in ("b.safetensors", "b.pt"):
        _good().save(tmp_path / name)
        back = NullSpace.load(tmp_path / name)
        assert list(back) == ["0", "3"] and back["0"].groups == 2 and back["3"].d == 6
    NullSpace({}).save(tmp_path / "e.safetensors")
    assert len(NullSpace.load(tmp_path / "e.safetensors")) == 0


_STATE = {"w": torch.zeros(3, 2), "b": torch.zeros(3)}


@pytest.mark.parametrize("metadata", [
    None, {"format": "pt"}, {"unsc_fast": "not json"}, {"unsc_fast": '"just a string"'},
    {"unsc_fast": "[1, 2]"}, {"unsc_fast": '{"format": "unsc_fast.checkpoint"}'},
    {"unsc_fast": '{"w": {"kind": "linear"}}'},
    {"unsc_fast": json.dumps({"w": {"kind": "linear", "d": 3, "subtract": [True],
                                    "ranks": [2], "include_bias": False}})},   # no "w/0"
])
def test_load_safetensors_not_ours(tmp_path, metadata):
    p = tmp_path / "x.safetensors"
    save_file(_STATE, str(p), metadata=metadata)
    with pytest.raises(ValueError, match="holds no unsc_fast bases"):
        NullSpace.load(p)


def _bad_torch_blobs():
    tensors, meta = _good().state_dict()
    yield {"meta": "x", "tensors": tensors}
    yield {"meta": [1], "tensors": tensors}
    yield {"meta": {"3": "linear"}, "tensors": tensors}
    yield {"meta": meta}                                                 # no tensors
    yield {"meta": meta, "tensors": {}}                                  # missing tensors
    yield {"meta": meta, "tensors": {**tensors, "3/0": "x"}}
    yield {"meta": meta, "tensors": {**tensors, "3/0": torch.zeros(5, 2)}}   # rows != d
    yield {"meta": meta, "tensors": {**tensors, "3/0": torch.zeros(6)}}      # not 2-D
    for key, bad in [("d", "6"), ("d", True), ("d", 0), ("subtract", []), ("subtract", [1]),
                     ("ranks", [2, 2]), ("ranks", [7]), ("ranks", [-1]), ("kind", 3),
                     ("include_bias", "no")]:
        yield {"meta": {**meta, "3": {**meta["3"], key: bad}}, "tensors": tensors}
    yield {"meta": {**meta, "3": {k: v for k, v in meta["3"].items() if k != "ranks"}},
           "tensors": tensors}
    yield _STATE                                                         # a plain state dict
    yield [1, 2]


@pytest.mark.parametrize("i", range(21))
def test_load_torch_not_ours(tmp_path, i):
    blobs = list(_bad_torch_blobs())
    assert len(blobs) == 21
    p = tmp_path / "x.pt"
    torch.save(blobs[i], p)
    with pytest.raises(ValueError, match="holds no unsc_fast bases"):
        NullSpace.load(p)


def test_load_safetensors_stored_columns_must_match_rank(tmp_path):
    meta = {"w": {"kind": "linear", "d": 3, "subtract": [True], "ranks": [1],
                  "include_bias": False}}
    p = tmp_path / "x.safetensors"
    save_file({"w/0": torch.zeros(3, 2)}, str(p), metadata={"unsc_fast": json.dumps(meta)})
    with pytest.raises(ValueError, match="holds no unsc_fast bases"):
        NullSpace.load(p)


# -- 4. docstrings ---------------------------------------------------------------------------


@pytest.mark.parametrize("owner,attr", [
    (LayerBasis, "to"), (NullSpace, "to"), (NullSpace, "state_dict"), (NullSpace, "load"),
    (NullSpace, "check"), (uf.Energy, "rank"), (uf.EigenFloor, "rank"), (uf.Threshold, "rank"),
    (uf.FixedRank, "rank")])
def test_public_methods_have_docstrings(owner, attr):
    doc = getattr(owner, attr, None).__doc__
    assert doc and doc.strip()
