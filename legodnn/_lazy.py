"""Package exports resolved on first use (PEP 562).

Importing ``legodnn.online`` on a device must not import the offline machinery (tqdm,
training code): each package lists its public names and the module that defines them,
and a name's module is imported only when the name is first read.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable, Dict, List, Tuple


def lazy_exports(package: str, exports: Dict[str, str]) -> Tuple[Callable[[str], Any], Callable[[], List[str]]]:
    """``__getattr__`` and ``__dir__`` for ``package``; ``exports`` maps a name to its module (relative)."""

    def __getattr__(name: str) -> Any:
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(module, package), name)

    def __dir__() -> List[str]:
        return sorted(exports)

    return __getattr__, __dir__
