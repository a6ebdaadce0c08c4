"""The build's one source list (csrc/sources.txt) and its one CUDA rule (csrc/build_rules.py).

* sources.txt lists exactly the .cpp/.cu files under csrc/ (none forgotten, none stale), each
  once, in a known part, with object names that cannot collide in the JIT build;
* setup.py and the JIT path (unsc_fast/kernels/cpp.py) build the same list, by the same rule,
  and CMakeLists.txt reads the same file instead of naming sources;
* the CUDA rule: a CUDA torch AND a toolkit AND UNSC_FAST_CUDA != "0"; no device needed;
* no synonym of the ops (gram, syrk) is left in csrc/ file or symbol names.
No compiler runs here; the builds themselves are checked by the kernel tests and
tests/test_cuda_compile.py.
"""
from __future__ import annotations

import importlib.util
import re
import types
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CSRC = ROOT / "csrc"


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


rules = _load("unsc_fast_build_rules_test", CSRC / "build_rules.py")
setup_py = _load("unsc_fast_setup_test", ROOT / "setup.py")  # setup() runs only as __main__


def _rel(paths) -> list[str]:
    return [Path(p).resolve().relative_to(CSRC).as_posix() for p in paths]


def test_sources_file_lists_exactly_the_sources_under_csrc():
    listed = _rel(rules.sources(*rules.PARTS))
    assert len(listed) == len(set(listed)), f"listed twice: {listed}"
    present = sorted(p.relative_to(CSRC).as_posix() for ext in ("cpp", "cu")
                     for p in CSRC.rglob(f"*.{ext}"))
    assert sorted(listed) == present, (
        f"not listed in sources.txt: {sorted(set(present) - set(listed))}; "
        f"listed but missing: {sorted(set(listed) - set(present))}")


def test_sources_file_parts():
    core, python, cuda = (_rel(rules.sources(p)) for p in rules.PARTS)
    assert "ops.cpp" in core, "the schemas (ops.cpp) belong to every build"
    assert python == ["module.cpp"]
    assert all(p.startswith("cpu/") or p == "ops.cpp" for p in core), core
    assert all(p.startswith("cuda/") for p in cuda), cuda
    for op in ("accumulate", "accumulate_conv", "project_grads"):
        assert f"cpu/{op}.cpp" in core and f"cuda/{op}.cu" in cuda, op


def test_object_names_do_not_collide():
    """cpp_extension.load names objects by file stem (<stem>.o, <stem>.cuda.o)."""
    paths = [Path(p) for p in rules.sources(*rules.PARTS)]
    objects = [p.stem + (".cuda.o" if p.suffix == ".cu" else ".o") for p in paths]
    assert len(objects) == len(set(objects)), sorted(objects)


def test_sources_file_rejects_bad_lines(tmp_path, monkeypatch):
    bad = tmp_path / "sources.txt"
    bad.write_text("core ops.cpp\ngpu cuda/x.cu\n")
    monkeypatch.setattr(rules, "SOURCES_FILE", bad)
    with pytest.raises(ValueError, match="sources.txt:2"):
        rules.sources("core")
    with pytest.raises(ValueError, match="unknown source parts"):
        rules.sources("gpu")


@pytest.mark.parametrize("with_cuda", [False, True])
def test_setup_and_jit_build_the_same_sources(with_cuda):
    cpp = pytest.importorskip("unsc_fast.kernels.cpp", reason="unsc_fast._C is not built")
    from_setup = _rel(ROOT / p for p in setup_py.extension_sources(with_cuda))
    from_jit = _rel(cpp.jit_sources(with_cuda))
    assert from_setup == from_jit
    expected = ("core", "python") + (("cuda",) if with_cuda else ())
    assert from_setup == _rel(rules.sources(*expected))


def _fake_torch(cuda_version, device=False):
    return types.SimpleNamespace(
        __version__="0.0", version=types.SimpleNamespace(cuda=cuda_version),
        cuda=types.SimpleNamespace(is_available=lambda: device))


def test_cuda_rule(monkeypatch):
    from torch.utils import cpp_extension
    monkeypatch.delenv(rules.CUDA_ENV, raising=False)
    monkeypatch.setattr(cpp_extension, "CUDA_HOME", "/opt/cuda")
    # A CUDA torch and a toolkit: built, with no device present.
    assert rules.cuda_skip_reason(_fake_torch("12.4", device=False)) is None
    assert "CPU-only" in rules.cuda_skip_reason(_fake_torch(None))
    monkeypatch.setenv(rules.CUDA_ENV, "0")
    assert rules.cuda_skip_reason(_fake_torch("12.4")) == "UNSC_FAST_CUDA=0"
    monkeypatch.setenv(rules.CUDA_ENV, "1")
    monkeypatch.setattr(cpp_extension, "CUDA_HOME", None)
    assert "no CUDA toolkit" in rules.cuda_skip_reason(_fake_torch("12.4"))


@pytest.mark.parametrize("cuda", [False, True])
def test_jit_build_follows_the_rule_and_the_list(monkeypatch, cuda):
    """_jit_build compiles what setup.py would, by the same rule (cpp_extension.load faked)."""
    cpp = pytest.importorskip("unsc_fast.kernels.cpp", reason="unsc_fast._C is not built")
    import torch
    from torch.utils import cpp_extension
    monkeypatch.delenv(rules.CUDA_ENV, raising=False)
    monkeypatch.setattr(torch.version, "cuda", "12.4" if cuda else None)
    monkeypatch.setattr(cpp_extension, "CUDA_HOME", "/opt/cuda")
    calls = []
    monkeypatch.setattr(cpp_extension, "load", lambda **kw: calls.append(kw))
    cpp._jit_build()
    (kw,) = calls
    assert (rules.cuda_skip_reason(torch) is None) == cuda
    assert _rel(kw["sources"]) == _rel(ROOT / p for p in setup_py.extension_sources(cuda))
    assert (f"-D{rules.CUDA_MACRO}=1" in kw["extra_cflags"]) == cuda


def test_cmake_reads_the_sources_file():
    text = (ROOT / "CMakeLists.txt").read_text()
    assert re.search(r"file\(STRINGS\s+\"[^\"]*csrc/sources\.txt\"", text)
    named = re.findall(r"csrc/[\w/]+\.(?:cpp|cu)\b", text)
    assert not named, f"CMakeLists.txt names sources itself: {named}"


def test_no_op_synonyms_in_csrc():
    for path in sorted(CSRC.rglob("*")):
        if not path.is_file() or path.suffix not in {".cpp", ".cu", ".h", ".cuh", ".txt", ".py"}:
            continue
        rel = path.relative_to(CSRC).as_posix()
        assert not re.search(r"gram|syrk", rel, re.I), rel
        hits = re.findall(r"\w*(?:\bgram|syrk)\w*", path.read_text(), re.I)
        assert not hits, f"{rel}: {sorted(set(hits))}"


def test_manifest_ships_the_build_inputs():
    text = (ROOT / "MANIFEST.in").read_text()
    assert re.search(r"recursive-include\s+csrc\b.*\*\.txt.*\*\.py", text)
    for pattern in ("*.cpp", "*.cu", "*.h", "*.cuh"):
        assert pattern in text
