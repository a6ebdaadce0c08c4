"""The package's floors and imports, checked from the source (no import is executed).

- no import cycle between the package's modules, lazy (function-level) imports included;
- the library core imports neither the lab nor the command line; the lab never imports the
  command line;
- no module imports another module's private (``_name``) names;
- ``import unsc_fast`` loads no optional dependency.
"""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "unsc_fast"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PKG.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_module(name: str) -> bool:
    base = PKG.parent.joinpath(*name.split("."))
    return base.with_suffix(".py").exists() or (base / "__init__.py").exists()


def _imports(path: Path) -> list[tuple[str, list[str]]]:
    """(absolute module, imported names) for every import of the package in ``path``, lazy and
    ``TYPE_CHECKING`` ones included: a cycle a type checker sees is a cycle too."""
    mod = _module_name(path)
    package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
    out = []

    def visit(node):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.ImportFrom):
                if child.level:
                    base = package.split(".")
                    base = base[: len(base) - child.level + 1]
                    target = ".".join(base + ([child.module] if child.module else []))
                else:
                    target = child.module or ""
                if target.split(".")[0] == "unsc_fast":
                    names = [a.name for a in child.names]
                    # `from pkg import mod` imports the submodule
                    subs = [f"{target}.{n}" for n in names if _is_module(f"{target}.{n}")]
                    out.append((target, [n for n in names if f"{target}.{n}" not in subs]))
                    out.extend((s, []) for s in subs)
            elif isinstance(child, ast.Import):
                out.extend((a.name, []) for a in child.names if a.name.split(".")[0] == "unsc_fast")
            visit(child)
    visit(ast.parse(path.read_text()))
    return out


MODULES = {_module_name(p): p for p in PKG.rglob("*.py")}
GRAPH = {m: _imports(p) for m, p in MODULES.items()}


def _floor(mod: str) -> str:
    if mod == "unsc_fast.__main__":  # `python -m unsc_fast` is the command line's entry
        return "cli"
    parts = mod.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in ("lab", "cli") else "core"


def test_no_import_cycle():
    edges = {m: {t for t, _ in imps if t in MODULES and t != m} for m, imps in GRAPH.items()}
    # a package's __init__ re-exporting its children is not a cycle of code
    for m in edges:
        edges[m] = {t for t in edges[m] if not (MODULES[t].name == "__init__.py"
                                                  and m.startswith(t + "."))}
    state: dict[str, int] = {}
    path: list[str] = []

    def dfs(m):
        state[m] = 1
        path.append(m)
        for t in sorted(edges[m]):
            if state.get(t) == 1:
                cycle = path[path.index(t):] + [t]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if t not in state:
                dfs(t)
        path.pop()
        state[m] = 2
    for m in sorted(edges):
        if m not in state:
            dfs(m)


@pytest.mark.parametrize("mod", sorted(MODULES))
def test_floors(mod):
    allowed = {"core": {"core"}, "lab": {"core", "lab"}, "cli": {"core", "lab", "cli"}}[_floor(mod)]
    for target, _ in GRAPH[mod]:
        if target in ("unsc_fast.lab", "unsc_fast.cli") and _floor(mod) == "core":
            pytest.fail(f"{mod} (core) imports {target}")
        if target in MODULES and target != "unsc_fast":
            assert _floor(target) in allowed, f"{mod} ({_floor(mod)}) imports {target}"


@pytest.mark.parametrize("mod", sorted(MODULES))
def test_no_private_names_imported(mod):
    for target, names in GRAPH[mod]:
        private = [n for n in names if n.startswith("_") and not n.startswith("__")
                   and n != "_C"]
        assert not private, f"{mod} imports private {private} from {target}"


def test_import_loads_no_optional_dependency():
    code = ("import sys, unsc_fast; bad = [m for m in ('sklearn', 'matplotlib', 'mlxtend',"
            " 'triton', 'transformers', 'scipy') if m in sys.modules]; print(bad)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "[]", f"import unsc_fast loaded {out}"
