"""Every public name of ``unsc_fast`` and every public method of its classes has a docstring."""
import inspect

import unsc_fast as uf


def _undocumented() -> list[str]:
    missing = []
    for name in uf.__all__:
        obj = getattr(uf, name)
        if inspect.ismodule(obj):
            continue
        if not (obj.__doc__ or "").strip():
            missing.append(name)
        if inspect.isclass(obj):
            for attr, value in vars(obj).items():
                if attr.startswith("_"):
                    continue
                fn = value.__func__ if isinstance(value, (classmethod, staticmethod)) else value
                fn = fn.fget if isinstance(fn, property) else fn
                if callable(fn) and not (fn.__doc__ or "").strip():
                    missing.append(f"{name}.{attr}")
    return missing


def test_public_api_is_documented():
    assert _undocumented() == []
