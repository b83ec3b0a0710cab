"""Libraries imported at their first use, not when a module that names them is imported.

The API function is ready to answer once the modules `GET /healthz` and `GET /v1/models` need are
imported (docs/architecture.md "Cold start and memory"). The providers' modules are among them
(their settings and catalogues), and they name httpx, which only their calls use: they import
it from here, as a module that loads itself at its first attribute read
(`importlib.util.LazyLoader`). The type checker sees the real module.
"""

from __future__ import annotations

import importlib.util
import sys
from types import ModuleType
from typing import TYPE_CHECKING


def lazy_import(name: str) -> ModuleType:
    """The module `name`, executed when one of its attributes is first read (at once when it
    was imported already)."""
    module = sys.modules.get(name)
    if module is not None:
        return module
    spec = importlib.util.find_spec(name)
    if spec is None or spec.loader is None:
        raise ModuleNotFoundError(f"No module named {name!r}", name=name)
    loader = importlib.util.LazyLoader(spec.loader)
    spec.loader = loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    loader.exec_module(module)
    return module


if TYPE_CHECKING:
    import httpx as httpx
else:
    httpx = lazy_import("httpx")
