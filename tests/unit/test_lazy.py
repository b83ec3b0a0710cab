"""Libraries loaded at their first use (`imagegw.infra.lazy`): a package whose `__init__` is put
off until one of its attributes is read, its submodules imported without it."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from imagegw.infra.lazy import package_without_init


@pytest.fixture
def heavy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A package `heavy` whose `__init__` imports its costly `cli` submodule, as uvicorn's does."""
    package = tmp_path / "heavy"
    package.mkdir()
    (package / "__init__.py").write_text("from heavy.cli import run\nVERSION = '1'\n")
    (package / "cli.py").write_text("def run():\n    return 'ran'\n")
    (package / "server.py").write_text("from heavy import Config\nSERVES = Config\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in ("heavy", "heavy.cli", "heavy.server"):
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
