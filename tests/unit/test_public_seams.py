"""The gateway uses httpx and httpcore through their public seams only (issue 19, item 5), which is
what lets layers/common/requirements.txt give them version ranges instead of pins; and botocore
and boto3 too (the runtime's SDK, whose version follows the runtime's: `imagegw.infra.aws`).

The package's source is read (`ast`) for what would tie it to one release of either library:
an import of a private module (`httpx._transports`, `httpcore._async`), a private name of the
libraries (`httpx._something`), a private attribute of their objects read or written from outside
(`client._transport`, `transport._pool`), the same from inside a subclass of theirs
(`self._pool` in a subclass of `httpx.AsyncHTTPTransport`), or a patch of their classes
(`setattr(httpx.AsyncClient, ...)`). The private attributes are those the libraries' own source
uses on `self`, as installed.
"""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

import boto3
import botocore
import httpcore
import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "layers" / "common" / "imagegw"
LIBRARIES = ("httpx", "httpcore", "botocore", "boto3")
_MODULES = {"httpx": httpx, "httpcore": httpcore, "botocore": botocore, "boto3": boto3}


@cache
def private_names_of(name: str) -> frozenset[str]:
    """Every `self._name` the installed library `name` sets or reads (not dunders)."""
    library = _MODULES[name]
    assert library.__file__ is not None
    names: set[str] = set()
    for source in Path(library.__file__).parent.rglob("*.py"):
        for node in ast.walk(ast.parse(source.read_text(encoding="utf-8"))):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id == "self"
                and _private(node.attr)
            ):
                names.add(node.attr)
    return frozenset(names)


@cache
def library_private_names() -> frozenset[str]:
    """Every `self._name` the installed libraries set or read (not dunders)."""
    return frozenset().union(*(private_names_of(name) for name in LIBRARIES))


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def _root(node: ast.expr) -> str | None:
    """The name an attribute chain starts from (`httpx` for `httpx.AsyncClient.__init__`)."""
    while isinstance(node, ast.Attribute):
        node = node.value
    return node.id if isinstance(node, ast.Name) else None


def _from_library(node: ast.expr) -> bool:
    return _root(node) in LIBRARIES


def private_uses(source: str) -> list[str]:
    """What in `source` reaches into httpx's or httpcore's internals, one line each."""
    tree = ast.parse(source)
    found: list[str] = []
    private = library_private_names()
    # a subclass of a library's class: the private names of that library (its own `self._x`)
    inside: dict[ast.AST, frozenset[str]] = {}
    for cls in ast.walk(tree):
        if not isinstance(cls, ast.ClassDef):
            continue
        roots = {_root(base) for base in cls.bases if _from_library(base)}
        if roots:
            names = frozenset().union(*(private_names_of(str(root)) for root in roots))
            for child in ast.walk(cls):
                inside[child] = names
    for node in ast.walk(tree):
        where = f"line {getattr(node, 'lineno', '?')}: "
        if isinstance(node, ast.ImportFrom) and node.module:
            parts = node.module.split(".")
            if parts[0] in LIBRARIES and any(_private(p) for p in parts[1:]):
                found.append(where + f"from {node.module} import ...")
            if parts[0] in LIBRARIES and any(_private(a.name) for a in node.names):
                found.append(where + f"a private name imported from {node.module}")
        elif isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] in LIBRARIES and any(_private(p) for p in parts[1:]):
                    found.append(where + f"import {alias.name}")
        elif isinstance(node, ast.Attribute):
            owner = node.value
            if _from_library(owner) and _private(node.attr):
                found.append(where + ast.unparse(node))
            elif isinstance(owner, ast.Name) and owner.id in ("self", "cls"):
                if node.attr in inside.get(node, frozenset()):
                    found.append(where + f"{ast.unparse(node)} in a subclass of the library's")
            elif node.attr in private:
                found.append(where + ast.unparse(node))
        elif isinstance(node, ast.Assign | ast.AugAssign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                if isinstance(target, ast.Attribute) and _from_library(target.value):
                    found.append(where + f"{ast.unparse(target)} assigned")
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in ("setattr", "delattr")
            and node.args
            and _from_library(node.args[0])
        ):
            found.append(where + ast.unparse(node))
    return found


def test_the_gateway_uses_no_private_part_of_httpx_httpcore_or_the_aws_sdk() -> None:
    # Given every module of the package / When each is read
    found = {
        str(path.relative_to(ROOT)): uses
        for path in sorted(PACKAGE.rglob("*.py"))
        if (uses := private_uses(path.read_text(encoding="utf-8")))
    }

    # Then none reaches into the libraries' internals
    assert found == {}


@pytest.mark.parametrize(
    "source",
    [
        "from httpx._transports.default import map_httpcore_exceptions",
        "import httpcore._async.connection_pool",
        "from httpcore import _exceptions",
        "import httpx\nx = httpx._config.DEFAULT_LIMITS",
        "def f(client):\n    client._transport = wrap(client._transport)",
        "import httpx\nclass T(httpx.AsyncHTTPTransport):\n"
        "    def __init__(self):\n        self._pool = make_pool()",
        "import httpx\nsetattr(httpx.AsyncClient, '__init__', traced_init)",
        "import httpx\nhttpx.AsyncClient.__init__ = traced_init",
        "import botocore.loaders\nclass L(botocore.loaders.Loader):\n"
        "    def list_available_services(self, type_name):\n        return self._cache",
        "import botocore.session\nsession = botocore.session.get_session()\n"
        "session._register_components()",
        "def f(client):\n    return client._request_signer",
        "from botocore import _helpers",
    ],
)
def test_the_check_finds_each_kind_of_private_use(source: str) -> None:
    # Given what the gateway did before (and its neighbours) / Then the check names it
    assert private_uses(source) != []


def test_the_check_leaves_public_uses_and_the_gateways_own_private_state_alone() -> None:
    source = (
        "import httpx, httpcore\n"
        "class Backend(httpcore.AsyncNetworkBackend):\n"
        "    def __init__(self):\n        self._resolve = resolver\n"
        "class Pool:\n    def __init__(self):\n        self._pool = []\n"
        "client = httpx.AsyncClient(transport=httpx.AsyncHTTPTransport(retries=1))\n"
    )
    assert private_uses(source) == []
