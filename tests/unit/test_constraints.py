"""The shared layer's packages are the same releases in the dev virtualenv (where the tests run)
and in the layer's build (what is deployed): both install with `-c layers/common/constraints.txt`.
"""

from __future__ import annotations

import os
import re
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
LAYER = ROOT / "layers" / "common"
#: left out of the layer: the Lambda runtime's own copies are used (layers/common/Makefile)
RUNTIME = {"boto3", "botocore", "s3transfer", "jmespath", "python-dateutil", "six", "urllib3"}


def lines(path: Path) -> list[str]:
    found = (line.split("#", 1)[0].strip() for line in path.read_text().splitlines())
    return [line for line in found if line]


def pins() -> dict[str, str]:
    pinned: dict[str, str] = {}
    for line in lines(LAYER / "constraints.txt"):
        name, _, version = line.partition("==")
        assert re.fullmatch(r"[A-Za-z0-9._-]+", name) and version, f"not an exact pin: {line}"
        pinned[canonicalize_name(name)] = version
    return pinned


def test_every_layer_requirement_has_a_pin_it_allows() -> None:
    pinned = pins()
    for line in lines(LAYER / "requirements.txt"):
        requirement = Requirement(line)
        name = canonicalize_name(requirement.name)
        assert name in pinned, f"{name} has no version in constraints.txt"
        assert requirement.specifier.contains(pinned[name]), (line, pinned[name])


def test_the_dev_virtualenv_has_the_pinned_releases() -> None:
    installed = {name: metadata.version(name) for name in pins()}
    assert installed == pins()


def test_the_layer_build_has_the_pinned_releases() -> None:
    built = os.environ.get("SAM_LOCAL_BUILD_DIR")
    site = ROOT / built / "CommonLayer" / "python" if built else None
    if site is None or not site.is_dir():
        pytest.skip("no layer build (make build-local; SAM_LOCAL_BUILD_DIR)")
    found = {}
    for info in site.glob("*.dist-info"):
        name, _, version = info.name.removesuffix(".dist-info").partition("-")
        found[canonicalize_name(name)] = version
    assert found == {name: v for name, v in pins().items() if name not in RUNTIME}
