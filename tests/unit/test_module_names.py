"""The suite's test files have names of their own: pytest imports each by its base name (the
test folders are not packages), so two folders' `test_x.py` stop the whole run at collection
("import file mismatch") in a fresh clone, whatever order a developer's cache hid it in."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]


def test_no_two_test_files_share_a_name() -> None:
    where: dict[str, list[str]] = defaultdict(list)
    for path in TESTS.rglob("*.py"):
        if path.name.startswith(("test_", "conftest")) and path.name != "conftest.py":
            where[path.name].append(str(path.relative_to(TESTS)))
    shared = {name: paths for name, paths in where.items() if len(paths) > 1}
    assert shared == {}
