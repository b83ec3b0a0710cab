"""What the docs promise a newcomer, checked against the repository: every template parameter
is documented, every section a comment or doc points at exists, and the examples name no file
they never make."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = sorted((ROOT / "docs").glob("*.md"))


def headings(path: Path) -> set[str]:
    return {
        match.group(1).strip()
        for match in re.finditer(r"^#+ (.+)$", path.read_text(), re.MULTILINE)
    }


def test_every_template_parameter_is_in_the_configuration_doc() -> None:
    template = (ROOT / "template.yaml").read_text()
    section = template.split("\nParameters:\n", 1)[1].split("\nConditions:", 1)[0]
    parameters = re.findall(r"^  (\w+):\n    Type:", section, re.MULTILINE)
    assert "AlarmEmail" in parameters and len(parameters) > 10
    documented = (ROOT / "docs" / "configuration.md").read_text()
    assert [p for p in parameters if f"| `{p}` |" not in documented] == []


@pytest.mark.parametrize(
    "path",
    [ROOT / "template.yaml", ROOT / "samconfig.toml", ROOT / "Makefile", *DOCS],
    ids=lambda p: p.name,
)
def test_the_readme_sections_pointed_at_exist(path: Path) -> None:
    sections = headings(ROOT / "README.md")
    text = " ".join(path.read_text().split())  # a name may wrap across comment lines
    named = set(re.findall(r'README "([^"]+)"', text))
    assert sorted(named - sections) == []


@pytest.mark.parametrize("path", [ROOT / "README.md", *DOCS], ids=lambda p: p.name)
def test_the_python_examples_read_only_files_they_make(path: Path) -> None:
    blocks = re.findall(r"```python\n(.*?)```", path.read_text(), re.DOTALL)
    for block in blocks:
        read = re.findall(r'open\("([^"]+)", "rb"\)', block)
        made = set(re.findall(r'open\("([^"]+)", "wb"\)', block))
        made |= set(re.findall(r'generate\("[^"]*", "([^"]+)"\)', block))
        assert [name for name in read if name not in made] == [], block
