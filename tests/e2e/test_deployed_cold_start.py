"""What the `sam build` output does for a cold start (docs/architecture.md "Cold start and memory").

- The layer ships bytecode for python3.13, in unchecked-hash mode: Lambda's /opt is read-only,
  so modules without it would be compiled on every cold start, and timestamp-checked bytecode
  could be judged stale after the zip and unzip of the deployment.
- The layer leaves the runtime's own packages (boto3 and its dependencies) to the runtime.
- Booted the way Lambda boots it (test_deployed_build.py), it serves on uvloop with httptools,
  and listing its models loads neither httpx's client nor another front end's module.
- Booted so, the app imports no boto3 before its readiness check passes; the first generation
  that needs the bucket does; after the first generation, a generation imports nothing (a
  failing import, retried on every request, costs a search of the whole path each time).
- Neither readiness nor a generation loads logging's configurator (`logging.config`, which
  uvicorn's log configuration would go through) or httpx's command line (click).

Imports are seen from outside, with PYTHONPROFILEIMPORTTIME=1 (`python -X importtime`), which
makes the interpreter write a line to stderr for each module it imports, as it does.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

import lambda_runtime
from e2e.test_deployed_build import (
    LAYER,
    _build_dir,
    _check_architecture,
    booted_build,
)
from fakes.modelscope import FakeModelScope
from fakes.server import ServerThread, SwappableApp

pytestmark = pytest.mark.e2e

TOKEN = "ms-test-token"
#: bytecode flags (PEP 552): hash-based, source not checked
UNCHECKED_HASH = 0b01
#: modules whose import means the S3 client is being built
BOTO = ("boto3", "botocore.session", "botocore.client", "s3transfer")


@pytest.fixture(scope="module")
def layer() -> Path:
    python = _build_dir() / LAYER / "python"
    _check_architecture(python)
    return python


def _python313_magic() -> bytes:
    python = lambda_runtime.python313()
    code = "import importlib.util, sys; sys.stdout.write(importlib.util.MAGIC_NUMBER.hex())"
    answer = subprocess.run([str(python), "-c", code], capture_output=True, text=True, check=True)
    return bytes.fromhex(answer.stdout)


def test_every_module_of_the_layer_has_python313_bytecode_used_as_it_is(layer: Path) -> None:
    # Given the built layer / When each of its modules is looked up in __pycache__
    magic = _python313_magic()
    sources = sorted(layer.rglob("*.py"))
    missing, wrong = [], []
    for source in sources:
        compiled = source.parent / "__pycache__" / f"{source.stem}.cpython-313.pyc"
        if not compiled.exists():
            missing.append(str(source.relative_to(layer)))
            continue
        header = compiled.read_bytes()[:8]
        if header[:4] != magic or int.from_bytes(header[4:8], "little") != UNCHECKED_HASH:
            wrong.append(str(compiled.relative_to(layer)))

    # Then every one has bytecode of Python 3.13 that is used without looking at the source
    assert sources, f"no modules in {layer}"
    assert missing == []
    assert wrong == []


def test_the_layer_leaves_the_runtime_packages_to_the_runtime(layer: Path) -> None:
    shipped = sorted(
        p.name
        for name in lambda_runtime.RUNTIME_PACKAGES
        for p in (layer / name, layer / f"{name}.py")
        if p.exists()
    )
    assert shipped == []
    assert (layer / "imagegw").is_dir()


@dataclass(frozen=True)
class Profiled:
    """The booted build and its import profile (stderr) so far."""

    url: str
    stderr: Path

    def imported(self) -> list[str]:
        return [
            line.rsplit("|", 1)[1].strip()
            for line in self.stderr.read_text(errors="replace").splitlines()
            if line.startswith("import time:") and "[us]" not in line
        ]


@pytest.fixture(scope="module")
def profiled_app(
    tmp_path_factory: pytest.TempPathFactory,
    s3_env: dict[str, str],
    _fake_ms_server: tuple[ServerThread, SwappableApp],
) -> Iterator[Profiled]:
    """The build booted as in test_deployed_build.py, writing its import profile to stderr."""
    tmp = tmp_path_factory.mktemp("lambda-imports")
    stderr = tmp / "imports.log"
    extra = {"POLL_INTERVAL": "0.05", "PYTHONPROFILEIMPORTTIME": "1"}
    provider = f"{_fake_ms_server[0].url}/v1"
    with booted_build(tmp, s3_env, provider, extra, stderr=stderr) as (url, _):
        yield Profiled(url=url, stderr=stderr)


def _generate(url: str, prompt: str) -> str:
    """A streamed chat completion through the build (IMAGE_LINKS=stored: copied to S3)."""
    body = {
        "model": "Qwen/Qwen-Image",
        "messages": [{"role": "user", "content": prompt}],
        "stream": True,
    }
    with httpx.stream(
        "POST",
        f"{url}/v1/chat/completions",
        json=body,
        headers={"authorization": f"Bearer {TOKEN}"},
        timeout=30.0,
    ) as response:
        assert response.status_code == 200
        text = "".join(response.iter_text())
    frames = [json.loads(f[6:]) for f in text.split("\n\n") if f.startswith("data: {")]
    content = "".join(
        (c.get("delta") or {}).get("content") or "" for f in frames for c in f.get("choices", [])
    )
    assert "/v1/files/" in content, text[-2000:]
    return content


def test_listing_models_after_readiness_loads_no_http_client_and_no_other_route(
    profiled_app: Profiled,
) -> None:
    # Given the build booted as Lambda boots it, past its readiness check
    # When its models are listed (the bench's readiness request)
    answer = httpx.get(f"{profiled_app.url}/v1/models", timeout=30.0)

    # Then they are, and neither httpx's client nor what the other front ends read requests
    # with (their reader, the pydantic request models) nor uvicorn's command line (click, its
    # reload and worker supervisors) is loaded
    assert answer.status_code == 200
    assert "Qwen/Qwen-Image" in [card["id"] for card in answer.json()["data"]]
    imported = set(profiled_app.imported())
    assert "imagegw.frontends.app" in imported  # the profile is there
    unused = {
        "httpx._client",
        "httpcore",
        "imagegw.frontends.web",
        "imagegw.frontends.schemas",
        "anyio._backends._asyncio",  # (what times a request body's reading)
        "click",
        "uvicorn.main",
        "uvicorn.supervisors",
        "multiprocessing",
        "logging.config",  # (uvicorn's log configuration is applied without it: infra/serving.py)
        "logging.handlers",
        "socketserver",
    }
    assert sorted(imported & (unused | set(BOTO))) == []


def test_the_build_serves_on_uvloop_with_httptools(profiled_app: Profiled) -> None:
    # Given the build booted as Lambda boots it, past its readiness check
    imported = set(profiled_app.imported())
    assert "imagegw.frontends.app" in imported  # the profile is there

    # Then uvicorn runs on the layer's uvloop and parses with httptools (its `auto` choices,
    # infra/serving.py), not on asyncio's own loop with h11: they cost 10-15% more CPU a stream
    assert {"uvloop", "uvicorn.protocols.http.httptools_impl"} <= imported
    assert "uvicorn.protocols.http.h11_impl" not in imported


def test_botocore_is_imported_by_the_first_generation_not_before_readiness_and_boto3_never(
    profiled_app: Profiled, fake_ms: FakeModelScope
) -> None:
    # Given the build booted as Lambda boots it, past its readiness check
    before_ready = set(profiled_app.imported())
    assert "imagegw.frontends.app" in before_ready  # the profile is there

    # When the first generation stores its image in the bucket
    _generate(profiled_app.url, "the first one")

    # Then the SDK was not imported before readiness, but for that generation: botocore's
    # clients (`imagegw.infra.aws`), without boto3's resource layer or s3transfer
    assert sorted(before_ready & set(BOTO)) == []
    imported = set(profiled_app.imported())
    assert "botocore.client" in imported
    assert sorted(imported & {"boto3", "s3transfer"}) == []


def test_the_first_generation_loads_neither_httpxs_command_line_nor_the_log_configurator(
    profiled_app: Profiled, fake_ms: FakeModelScope
) -> None:
    # Given the build booted as Lambda boots it
    # When a generation runs (the first one, when this test runs alone)
    _generate(profiled_app.url, "one more")

    # Then httpx was loaded without its command line (click: `imagegw.infra.lazy`), and
    # logging's configurator (which uvicorn's config module imports) was not loaded at all
    imported = set(profiled_app.imported())
    assert {"httpx._client", "botocore.client"} <= imported  # the generation's modules are there
    assert sorted(imported & {"click", "logging.config", "logging.handlers"}) == []


def test_a_generation_after_the_first_imports_nothing(
    profiled_app: Profiled, fake_ms: FakeModelScope
) -> None:
    # Given the build after its first generation
    _generate(profiled_app.url, "a warm-up")
    known = len(profiled_app.imported())

    # When two more generations run
    _generate(profiled_app.url, "a second one")
    _generate(profiled_app.url, "a third one")

    # Then neither imported (or tried to import) any module
    assert profiled_app.imported()[known:] == []
