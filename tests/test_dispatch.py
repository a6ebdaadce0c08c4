"""Backend selection: explicit argument, environment variable, auto with fallback."""
import warnings

import pytest
import torch

from unsc_fast import dispatch, ops


def test_reference_always_available():
    assert dispatch.availability()["reference"] == "available"
    name, _ = dispatch.resolve("accumulate", torch.device("cpu"), backend="reference")
    assert name == "reference"


def test_unknown_backend_is_a_clear_error(monkeypatch):
    with pytest.raises(ValueError, match="unknown backend"):
        dispatch.resolve("accumulate", torch.device("cpu"), backend="fortran")
    monkeypatch.setenv(dispatch.ENV_VAR, "fortran")
    with pytest.raises(ValueError, match=dispatch.ENV_VAR):
        ops.accumulate_(torch.zeros(2, 2), torch.randn(3, 2))


def test_env_var_forces_backend(monkeypatch):
    monkeypatch.setenv(dispatch.ENV_VAR, "reference")
    assert dispatch.resolve("project_grads", torch.device("cpu"))[0] == "reference"


def test_forced_unavailable_backend_raises():
    if dispatch.availability()["cuda"] == "available":
        pytest.skip("the CUDA backend is available here")
    with pytest.raises(RuntimeError, match="cuda"):
        dispatch.resolve("accumulate", torch.device("cpu"), backend="cuda")


def test_auto_falls_back_to_reference_with_one_warning(monkeypatch):
    monkeypatch.setitem(dispatch._DEFAULT_ORDER, "cpu", ("cuda", "reference"))
    monkeypatch.setattr(dispatch, "_warned", set())
    monkeypatch.setattr(dispatch, "_tuned", {})
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        for _ in range(3):
            name, _ = dispatch.resolve("accumulate", torch.device("cpu"))
            assert name == "reference"
    assert len([x for x in w if "reference implementation" in str(x.message)]) == 1


def test_supports_predicate_moves_auto_on(monkeypatch):
    calls = []
    monkeypatch.setattr(dispatch, "_registry", dict(dispatch._registry))
    monkeypatch.setattr(dispatch, "_loaded", set(dispatch._loaded) | {"cpp"})
    monkeypatch.setattr(dispatch, "_tuned", {})
    monkeypatch.setattr(dispatch, "_warned", {("accumulate", "cpu")})
    dispatch.register("accumulate", "cpp", ("cpu",), supports=lambda S, X: S.shape[0] > 2)(
        lambda S, X: calls.append(1))
    assert dispatch.resolve("accumulate", torch.device("cpu"),
                            (torch.zeros(3, 3), None))[0] == "cpp"
    assert dispatch.resolve("accumulate", torch.device("cpu"),
                            (torch.zeros(2, 2), None))[0] == "reference"
    with pytest.raises(RuntimeError, match="does not support"):
        dispatch.resolve("accumulate", torch.device("cpu"), (torch.zeros(2, 2), None), "cpp")


def test_measured_reference_choice_is_honoured(monkeypatch):
    monkeypatch.setattr(dispatch, "_tuned", {"cpu": {"project_grads": "reference"}})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert dispatch.resolve("project_grads", torch.device("cpu"))[0] == "reference"


def test_cuda_auto_runs_only_measured_kernels(monkeypatch):
    """Without a measured "cuda" row, auto on CUDA is the reference, silently, even where the
    CUDA and Triton backends load; with one, the measured backend is chosen."""
    cuda = torch.device("cuda")  # resolve() looks at the device type only
    monkeypatch.setattr(dispatch, "_registry", dict(dispatch._registry))
    monkeypatch.setattr(dispatch, "_loaded", set(dispatch._loaded) | {"cuda", "triton"})
    monkeypatch.setattr(dispatch, "_warned", set())
    fake = lambda *args: None  # noqa: E731
    for backend in ("cuda", "triton"):
        dispatch.register("project_grads", backend, ("cuda",))(fake)
    monkeypatch.setattr(dispatch, "_tuned", {"cpu": {"project_grads": "cpp"}})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert dispatch.resolve("project_grads", cuda)[0] == "reference"
    monkeypatch.setattr(dispatch, "_tuned", {"cuda": {"project_grads": "triton"}})
    assert dispatch.resolve("project_grads", cuda) == ("triton", fake)
