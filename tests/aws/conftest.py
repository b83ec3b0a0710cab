"""Fixtures of the emulator level (`make test-aws`; harness in `aws/emulator.py`).

Without AWS_EMULATOR_PYTHON (the emulator's virtualenv) the level is skipped, except on CI
(CI=true) where it fails; SAM_LOCAL_BUILD_DIR names the `sam build` output for this machine.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from aws.emulator import Emulator, Stack, deploy_stack, emulator_python, start_emulator
from e2e.test_deployed_build import _build_dir, _lambda_python
from fakes.modelscope import FakeModelScope
from fakes.server import ServerThread


@pytest.fixture(scope="session")
def emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Emulator]:
    """The emulator, ready, with its functions run by a clean Python 3.13 (the runtime's
    packages only); stopped with all it started when the session ends."""
    emulator_python()  # skip or fail before building anything
    runtime = _lambda_python(tmp_path_factory.mktemp("aws-runtime")) / "python"
    with start_emulator(runtime) as running:
        yield running


@pytest.fixture(scope="session")
def provider() -> Iterator[FakeModelScope]:
    """The fake ModelScope the stack is deployed against (`provider.base_url`); tests steer
    it through its attributes."""
    fake = FakeModelScope()
    with ServerThread(fake) as server:
        fake.base_url = f"{server.url}/v1"  # type: ignore[attr-defined]
        yield fake


@pytest.fixture(scope="session")
def stack(emulator: Emulator, provider: FakeModelScope) -> Stack:
    """The stack, deployed."""
    return deploy_stack(emulator, _build_dir(), provider.base_url)  # type: ignore[attr-defined]
