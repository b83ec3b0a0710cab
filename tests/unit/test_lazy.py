"""Libraries loaded at their first use (`imagegw.infra.lazy`): a package whose `__init__` is put
off until one of its attributes is read, its submodules imported without it; a module's stand-in
that an `import` statement elsewhere does not load; httpx without its command line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from imagegw.infra.lazy import package_without_init, stand_in

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def heavy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A package `heavy` whose `__init__` imports its costly `cli` submodule, as uvicorn's does."""
    package = tmp_path / "heavy"
    package.mkdir()
    (package / "__init__.py").write_text("from heavy.cli import run\nVERSION = '1'\n")
    (package / "cli.py").write_text("def run():\n    return 'ran'\n")
    (package / "server.py").write_text("from heavy import Config\nSERVES = Config\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in ("heavy", "heavy.cli", "heavy.server", "heavy.user"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    return package


def test_a_submodule_imports_without_its_packages_init_until_an_attribute_is_read(
    heavy: Path,
) -> None:
    # Given the package put in place without its __init__, with what its submodules read of it
    package = package_without_init("heavy")
    package.Config = "config"

    # When one of its submodules is imported by its full name
    from heavy.server import SERVES  # type: ignore[import-not-found]

    # Then it is, and the __init__ has not run (its costly import neither)
    assert SERVES == "config"
    assert "heavy.cli" not in sys.modules
    # And reading what only the __init__ defines runs it, once
    assert package.VERSION == "1"
    assert package.run() == "ran"
    with pytest.raises(AttributeError):
        _ = package.nothing_of_that_name
    # And the package is the one `import` gives
    import heavy  # type: ignore[import-not-found]

    assert heavy is package


def test_a_package_imported_already_is_given_as_it_is(heavy: Path) -> None:
    # Given the package imported the ordinary way
    import heavy  # type: ignore[import-not-found]

    # Then it is what is given
    assert package_without_init("heavy") is heavy


def test_a_module_that_is_no_package_is_refused(
    heavy: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delitem(sys.modules, "plain", raising=False)
    (heavy.parent / "plain.py").write_text("X = 1\n")
    for name in ("nothing_of_that_name", "plain"):
        with pytest.raises(ModuleNotFoundError):
            package_without_init(name)
    assert "plain" not in sys.modules


def test_a_stand_in_is_not_loaded_by_import_statements_but_by_the_first_attribute_read(
    heavy: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given the package imported, and a stand-in for its costly submodule
    import heavy as package  # type: ignore[import-not-found]

    monkeypatch.delitem(sys.modules, "heavy.cli")
    (heavy / "cli.py").write_text("LOADS = 1\ndef run():\n    return 'ran'\n")
    placeholder = stand_in("heavy.cli")

    # When another module imports it as modules do (`import heavy.cli`, `from heavy import cli`)
    (heavy / "user.py").write_text("import heavy.cli\nfrom heavy import cli\n")
    from heavy import user  # type: ignore[import-not-found]

    # Then it is not loaded
    assert sys.modules["heavy.cli"] is placeholder
    assert "LOADS" not in vars(placeholder)
    # And the first attribute read loads it, and the module takes the stand-in's place
    assert user.cli.run() == "ran"
    loaded = sys.modules["heavy.cli"]
    assert loaded is not placeholder
    assert loaded.LOADS == 1
    assert package.cli is loaded
    # And a module imported already is given as it is
    assert stand_in("heavy.cli") is loaded


def test_httpx_loads_through_the_lazy_module_without_its_command_line() -> None:
    # When a fresh interpreter uses httpx as the providers do (through `imagegw.infra.lazy`)
    code = (
        "import json, sys\n"
        "from imagegw.infra.lazy import httpx\n"
        "client = httpx.AsyncClient()\n"
        "print(json.dumps([type(client).__name__, 'click' in sys.modules, callable(httpx.main)]))\n"
    )
    shown = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, "PYTHONPATH": str(ROOT / "layers" / "common")},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    # Then httpx works, and its command line's click was not imported (its `main` is the
    # stand-in httpx defines when its command line cannot be imported)
    assert json.loads(shown) == ["AsyncClient", False, True]
