"""Lazy package attributes (PEP 562), so `import onebert` and `onebert --help` do not pay for torch.

A package lists `{name: module}` and gets a `__getattr__` that imports the module on first use
(and caches the value in the package) plus a `__dir__` for completion.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable, Mapping


def lazy_exports(package: str, exports: Mapping[str, str], namespace: dict[str, Any]
                 ) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """(__getattr__, __dir__) for `package`, whose public names come from `exports` ({name: module})."""
    names = sorted(set(exports) | {name for name in namespace.get("__all__", ())})

    def __getattr__(name: str) -> Any:
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module '{package}' has no attribute '{name}'")
        value = getattr(importlib.import_module(module), name)
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return names

    return __getattr__, __dir__
