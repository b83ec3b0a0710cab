"""Libraries imported at their first use, not when a module that names them is imported.

The API function is ready to answer once the modules `GET /healthz` and `GET /v1/models` need are
imported (docs/architecture.md "Cold start and memory"). The providers' modules are among them
(their settings and catalogues), and they name httpx, which only their calls use: they import
it from here, as a module that loads itself at its first attribute read
(`importlib.util.LazyLoader`). The type checker sees the real module.

httpx's own `__init__` tries its command line (`httpx._main`), which imports click and then fails
for want of rich: it is marked missing here, so httpx loads without click.

The API function's start script (functions/api/serve.py) imports uvicorn's server modules from a
package whose own `__init__` has not run (`package_without_init`): uvicorn's `__init__` imports
its command line (click) and its reload and worker supervisors (multiprocessing), which a server
started with fixed settings never uses.
"""

from __future__ import annotations

import importlib.util
import sys
from types import ModuleType
from typing import TYPE_CHECKING, Final


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


def stand_in(name: str) -> ModuleType:
    """A stand-in for the module `name` (in `sys.modules`, and on its package), which imports
    the module and gives way to it at the first read of one of its attributes (at once the
    module when it was imported already). Unlike `lazy_import`'s module, it is not loaded by an
    `import name` elsewhere (the import system reads a module's `__spec__` when it finds it in
    `sys.modules`, and a lazy module loads at the first attribute read, whichever it is)."""
    module = sys.modules.get(name)
    if module is not None:
        return module
    placeholder = ModuleType(name)

    def load(attribute: str) -> object:
        if sys.modules.get(name) is placeholder:
            del sys.modules[name]
        return getattr(importlib.import_module(name), attribute)

    placeholder.__dict__["__getattr__"] = load
    sys.modules[name] = placeholder
    parent, _, child = name.rpartition(".")
    if parent:
        setattr(sys.modules[parent], child, placeholder)
    return placeholder


def package_without_init(name: str) -> ModuleType:
    """The top-level package `name`, put in `sys.modules` without running its `__init__` (as it
    is when it was imported already): its submodules import as usual by their full name
    (`from name.sub import x`; `from name import sub` reads the attribute first), and its
    `__init__` runs at the first read of an attribute the package does not have yet."""
    module = sys.modules.get(name)
    if module is not None:
        return module
    spec = importlib.util.find_spec(name)
    if spec is None or spec.loader is None or spec.submodule_search_locations is None:
        raise ModuleNotFoundError(f"No package named {name!r}", name=name)
    package = importlib.util.module_from_spec(spec)
    loader = spec.loader

    def run_init(attribute: str) -> object:
        del package.__dict__["__getattr__"]  # once: an attribute `__init__` lacks is an error
        loader.exec_module(package)
        return getattr(package, attribute)

    package.__dict__["__getattr__"] = run_init
    sys.modules[name] = package
    return package


#: httpx's command line, which httpx's `__init__` imports when it can: it loads click (in the
#: layer for uvicorn) before it finds that rich, which it needs too, is not there, and httpx then
#: defines a stand-in `main` that says so. Marked missing, the import fails at once, with the
#: same stand-in and no click (none of the gateway's code runs httpx's command line).
HTTPX_COMMAND_LINE: Final = "httpx._main"
sys.modules.setdefault(HTTPX_COMMAND_LINE, None)  # type: ignore[arg-type]

if TYPE_CHECKING:
    import httpx as httpx
else:
    httpx = lazy_import("httpx")
