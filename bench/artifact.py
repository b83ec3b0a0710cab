"""The `sam build` output booted as Lambda boots it, and the fixed references measured beside it.

- The artifact: `make build-local`'s output (`.aws-sam/build-local`, or `SAM_LOCAL_BUILD_DIR`),
  started by the function's own start script (`ApiFunction/run.sh`) under a clean Python 3.13
  that holds only the Lambda runtime's packages, with the layer's `python/` where /opt/python
  would be, `BUCKET` set, and bytecode writing off: the only bytecode is what the build ships
  (tests/lambda_runtime.py, shared with the deployed-build tests).
- The references, which do not change with the project: the same interpreter running
  `python -c pass`, and a plain Starlette hello-world app (bench/reference/hello.py) under the
  same uvicorn command line, with starlette and uvicorn from the dev venv (bytecode included).
  Figures are printed beside them, so ratios survive a noisy machine.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import lambda_runtime
from bench.common import ROOT, free_port, stop_process, wait_until_ready

BUILD_DIR_ENV = "SAM_LOCAL_BUILD_DIR"
DEFAULT_BUILD = ROOT / ".aws-sam" / "build-local"
REFERENCE_APP_DIR = ROOT / "bench" / "reference"
#: what the hello-world reference imports (and what they import), from the dev venv
REFERENCE_PACKAGES = (
    "starlette",
    "uvicorn",
    "anyio",
    "sniffio",
    "idna",
    "h11",
    "click",
    "typing_extensions",
)


def build_dir() -> Path:
    value = os.environ.get(BUILD_DIR_ENV)
    build = Path(value) if value else DEFAULT_BUILD
    build = build if build.is_absolute() else ROOT / build
    if not (build / lambda_runtime.FUNCTION / "run.sh").exists():
        raise RuntimeError(f"no sam build output in {build}: run `make build-local` first")
    return build


def _link_packages(names: tuple[str, ...], into: Path) -> None:
    into.mkdir(parents=True, exist_ok=True)
    for name in names:
        spec = importlib.util.find_spec(name)
        if spec is None:
            raise RuntimeError(f"{name} is not installed in the dev venv")
        if spec.submodule_search_locations:
            source = Path(next(iter(spec.submodule_search_locations)))
        else:
            assert spec.origin is not None
            source = Path(spec.origin)
        (into / source.name).symlink_to(source)


@dataclass(frozen=True)
class Lambda:
    """A Lambda-like runtime for the artifact and the references (temporary files in `tmp`)."""

    build: Path
    python_bin: Path
    runtime_dir: Path
    reference_site: Path

    @property
    def python(self) -> Path:
        return self.python_bin / "python"

    def artifact_env(self, port: int, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        """The API function's environment on Lambda (stand-ins for the world), plus `extra`."""
        env = lambda_runtime.lambda_environment(self.build, self.python_bin, self.runtime_dir, port)
        env.update(extra or {})
        return env

    def artifact_argv(self) -> list[str]:
        return [str(self.build / lambda_runtime.FUNCTION / "run.sh")]

    def hello_env(self, port: int) -> dict[str, str]:
        return {
            "PATH": f"{self.python_bin}:/usr/bin:/bin",
            "PYTHONPATH": str(self.reference_site),
            "PYTHONNOUSERSITE": "1",
            "PYTHONDONTWRITEBYTECODE": "1",
            "PORT": str(port),
        }

    def hello_argv(self, port: int) -> list[str]:
        """functions/api/run.sh's uvicorn command line, serving the hello-world app."""
        return [
            str(self.python),
            "-m",
            "uvicorn",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--no-access-log",
            "--timeout-graceful-shutdown",
            "2",
            "--app-dir",
            str(REFERENCE_APP_DIR),
            "hello:app",
        ]


@contextlib.contextmanager
def lambda_runtime_here() -> Iterator[Lambda]:
    """The runtime for as long as the context lasts."""
    build = build_dir()
    with tempfile.TemporaryDirectory(prefix="bench-lambda-") as tmp:
        where = Path(tmp)
        runtime_dir = where / "var-runtime"
        runtime_dir.mkdir()
        reference_site = where / "reference-site"
        _link_packages(REFERENCE_PACKAGES, reference_site)
        yield Lambda(
            build=build,
            python_bin=lambda_runtime.runtime_python(where),
            runtime_dir=runtime_dir,
            reference_site=reference_site,
        )


@dataclass
class Booted:
    """A process started by `boot`: it, its URL, and when it was started (perf_counter)."""

    process: subprocess.Popen[bytes]
    url: str
    began: float
    ready: float = 0.0


@contextlib.contextmanager
def boot(
    argv: list[str],
    env: dict[str, str],
    port: int,
    cwd: Path | None = None,
    ready_path: str = "/healthz",
    timeout: float = 30.0,
) -> Iterator[Booted]:
    """Start `argv`, wait until GET `ready_path` answers 200 (within `timeout` seconds), stop it
    afterwards. stdout (one log line a request) goes to /dev/null; stderr is shown when it does
    not become ready."""
    url = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryFile() as errors:
        began = time.perf_counter()
        process = subprocess.Popen(
            argv,
            cwd=cwd or ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=errors,
        )
        try:
            try:
                ready = wait_until_ready(url, process, timeout, path=ready_path)
            except (RuntimeError, TimeoutError) as exc:
                errors.seek(0)
                tail = errors.read().decode(errors="replace")[-4000:]
                raise RuntimeError(f"{exc}; its stderr:\n{tail}") from None
            yield Booted(process=process, url=url, began=began, ready=ready)
        finally:
            stop_process(process)


@contextlib.contextmanager
def artifact(runtime: Lambda, extra: Mapping[str, str] | None = None) -> Iterator[Booted]:
    """The artifact booted as Lambda boots it, ready."""
    port = free_port()
    with boot(
        runtime.artifact_argv(),
        runtime.artifact_env(port, extra),
        port,
        cwd=runtime.build / lambda_runtime.FUNCTION,
    ) as booted:
        yield booted


@contextlib.contextmanager
def hello(runtime: Lambda) -> Iterator[Booted]:
    """The hello-world reference, ready."""
    port = free_port()
    with boot(runtime.hello_argv(port), runtime.hello_env(port), port) as booted:
        yield booted
