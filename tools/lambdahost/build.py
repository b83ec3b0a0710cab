"""A `sam build` output, read the way Lambda would run it on this host, without Docker.

- `Template`: the built template (`<build>/template.yaml`): each function's task root, handler,
  runtime, timeout, memory, layers built with it (their `python/` folders stand where Lambda
  mounts /opt/python) and environment variables as written (intrinsics unresolved).
- `Resolver`: those variables' values, from the parameters and from where the resources are
  (`make run`'s stand-ins, or a deployed stack): `Ref`, `Fn::GetAtt`, `Fn::Sub` and the pseudo
  parameters. A value it cannot decide is an error naming the variable, never a blank.
- `lambda_python`: a clean CPython 3.13 (the runtime's version) whose site-packages holds only
  what the Lambda runtime ships (boto3 and its dependencies, linked from this interpreter's);
  nothing else of the developer's virtualenv is importable, so a dependency missing from the
  layer fails here as it would on Lambda.
- `lambda_variables`: what Lambda itself sets in a function's environment.
"""

from __future__ import annotations

import importlib.util
import os
import platform
import re
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import yaml

#: what the Lambda Python runtime ships besides the standard library (import names)
RUNTIME_PACKAGES: Final = (
    "boto3",
    "botocore",
    "s3transfer",
    "jmespath",
    "dateutil",
    "urllib3",
    "six",
)
FUNCTION_TYPES: Final = frozenset({"AWS::Serverless::Function", "AWS::Lambda::Function"})
LAYER_TYPES: Final = frozenset({"AWS::Serverless::LayerVersion", "AWS::Lambda::LayerVersion"})


class InvokeError(Exception):
    """Something this host cannot run as asked; the message says what to do."""


class _TemplateLoader(yaml.SafeLoader):  # type: ignore[misc]
    """YAML with CloudFormation's short tags (`!Ref X`, `!GetAtt X.Arn`, `!Sub ...`), read as
    the long forms (`{"Ref": "X"}`): the source template.yaml; `sam build` writes long forms."""


def _short_tag(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> dict[str, Any]:
    name = suffix if suffix == "Ref" else f"Fn::{suffix}"
    value: Any
    if isinstance(node, yaml.ScalarNode):
        value = loader.construct_scalar(node)
        if suffix == "GetAtt":
            value = str(value).split(".", 1)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)
    return {name: value}


_TemplateLoader.add_multi_constructor("!", _short_tag)


def load_template(path: Path) -> dict[str, Any]:
    """A CloudFormation/SAM template file, short tags read as long forms."""
    data: dict[str, Any] = yaml.load(path.read_text(), Loader=_TemplateLoader)  # noqa: S506
    return data


@dataclass(frozen=True)
class Function:
    """A function of the built template."""

    logical_id: str
    task_root: Path
    handler: str
    runtime: str
    timeout: int
    memory: int
    #: built layers, in order (each one's `python/` is on the path where /opt/python is)
    layers: tuple[Path, ...]
    #: layers not built here (another account's, such as the Web Adapter's)
    external_layers: int
    #: Environment.Variables as the template writes them
    variables: Mapping[str, Any]

    @property
    def wrapper(self) -> str | None:
        """The AWS_LAMBDA_EXEC_WRAPPER the template sets (the Web Adapter's /opt/bootstrap)."""
        value = self.variables.get("AWS_LAMBDA_EXEC_WRAPPER")
        return str(value) if isinstance(value, str) else None

    @property
    def python_path(self) -> str:
        """PYTHONPATH as Lambda has it: the task root, then the layers' /opt/python."""
        return os.pathsep.join([str(self.task_root), *(str(p / "python") for p in self.layers)])


class Template:
    """The template of a `sam build` output folder (or of the source folder: the functions'
    CodeUri folders are then the sources, and no layer is built)."""

    def __init__(self, build: Path) -> None:
        self.build = build = build.resolve()
        path = build / "template.yaml"
        if not path.is_file():
            raise InvokeError(f"{build} has no template.yaml: run `make build-local` first")
        self.data = load_template(path)
        self.resources: dict[str, Any] = self.data.get("Resources") or {}
        self.parameters: dict[str, Any] = self.data.get("Parameters") or {}
        #: the template's Conditions, as written (`Resolver` decides them for `Fn::If`)
        self.conditions: dict[str, Any] = self.data.get("Conditions") or {}

    def parameter_defaults(self) -> dict[str, str]:
        return {
            name: str(spec["Default"])
            for name, spec in self.parameters.items()
            if spec.get("Default") is not None
        }

    def function_ids(self) -> list[str]:
        return sorted(n for n, r in self.resources.items() if r.get("Type") in FUNCTION_TYPES)

    def resource_type(self, logical_id: str) -> str | None:
        resource = self.resources.get(logical_id)
        return str(resource.get("Type")) if resource else None

    def function(self, logical_id: str) -> Function:
        if logical_id not in self.function_ids():
            raise InvokeError(
                f"{logical_id!r} is not a function of the template; its functions: "
                + ", ".join(self.function_ids())
            )
        properties: dict[str, Any] = self.resources[logical_id]["Properties"]
        task_root = self.build / str(properties["CodeUri"])
        if not task_root.is_dir():
            raise InvokeError(f"the build has no {task_root}: run `make build-local`")
        layers: list[Path] = []
        external = 0
        for layer in properties.get("Layers") or []:
            name = layer.get("Ref") if isinstance(layer, dict) else None
            if name is not None and self.resource_type(name) in LAYER_TYPES:
                layers.append(self.build / name)
            else:
                external += 1
        # SAM merges the template's Globals into each function; the function's own win
        shared = ((self.data.get("Globals") or {}).get("Function") or {}).get("Environment")
        variables = {
            **((shared or {}).get("Variables") or {}),
            **((properties.get("Environment") or {}).get("Variables") or {}),
        }
        return Function(
            logical_id=logical_id,
            task_root=task_root,
            handler=str(properties["Handler"]),
            runtime=str(properties.get("Runtime", "")),
            timeout=self._number(properties.get("Timeout"), 3),
            memory=self._number(properties.get("MemorySize"), 128),
            layers=tuple(layers),
            external_layers=external,
            variables=variables,
        )

    def _number(self, value: Any, default: int) -> int:
        """A number property: as written, or its parameter's default (`Ref`)."""
        if isinstance(value, dict) and "Ref" in value:
            value = self.parameter_defaults().get(str(value["Ref"]))
        return int(value) if value is not None else default


# ------------------------------------------------------------------------------ intrinsics


@dataclass(frozen=True)
class Resolver:
    """Decides intrinsic values: parameters by name; resources by logical id (`Ref`) and by
    (logical id, attribute) (`Fn::GetAtt`); the pseudo parameters; `Fn::If` by the template's
    `conditions` (Fn::Equals, Fn::Not, Fn::And, Fn::Or, Condition)."""

    parameters: Mapping[str, str]
    refs: Mapping[str, str]
    attributes: Mapping[tuple[str, str], str] = field(default_factory=dict)
    region: str = "us-east-1"
    account: str = "123456789012"
    partition: str = "aws"
    stack_name: str = "local"
    conditions: Mapping[str, Any] = field(default_factory=dict)

    def pseudo(self) -> dict[str, str]:
        return {
            "AWS::Region": self.region,
            "AWS::AccountId": self.account,
            "AWS::Partition": self.partition,
            "AWS::StackName": self.stack_name,
            "AWS::URLSuffix": "amazonaws.com.cn" if self.partition == "aws-cn" else "amazonaws.com",
        }

    def value(self, expression: Any) -> str:
        """The string `expression` stands for; raises LookupError naming what is unknown."""
        if isinstance(expression, bool):
            return "true" if expression else "false"
        if isinstance(expression, str | int | float):
            return str(expression)
        if isinstance(expression, dict) and len(expression) == 1:
            ((function, argument),) = expression.items()
            if function == "Ref":
                return self._ref(str(argument))
            if function == "Fn::GetAtt":
                name, attribute = argument.split(".", 1) if isinstance(argument, str) else argument
                return self._attribute(str(name), str(attribute))
            if function == "Fn::Sub" and isinstance(argument, str):
                return re.sub(r"\$\{([^}!]+)\}", lambda m: self._sub(m.group(1)), argument)
            if function == "Fn::If" and isinstance(argument, list) and len(argument) == 3:
                name, when_true, when_false = argument
                return self.value(when_true if self.condition(str(name)) else when_false)
        raise LookupError(f"no local value for {expression!r}")

    def condition(self, name: str) -> bool:
        """Whether the template's condition `name` holds here."""
        if name not in self.conditions:
            raise LookupError(f"no condition {name}")
        return self._holds(self.conditions[name])

    def _holds(self, expression: Any) -> bool:
        if isinstance(expression, dict) and len(expression) == 1:
            ((function, argument),) = expression.items()
            if function == "Condition":
                return self.condition(str(argument))
            if function == "Fn::Equals" and isinstance(argument, list) and len(argument) == 2:
                return self.value(argument[0]) == self.value(argument[1])
            if function == "Fn::Not" and isinstance(argument, list) and len(argument) == 1:
                return not self._holds(argument[0])
            if function == "Fn::And" and isinstance(argument, list):
                return all(self._holds(item) for item in argument)
            if function == "Fn::Or" and isinstance(argument, list):
                return any(self._holds(item) for item in argument)
        raise LookupError(f"no local value for the condition {expression!r}")

    def _ref(self, name: str) -> str:
        for table in (self.parameters, self.refs, self.pseudo()):
            if name in table:
                return table[name]
        raise LookupError(f"no local value for Ref {name}")

    def _attribute(self, name: str, attribute: str) -> str:
        if (name, attribute) in self.attributes:
            return self.attributes[(name, attribute)]
        raise LookupError(f"no local value for Fn::GetAtt {name}.{attribute}")

    def _sub(self, name: str) -> str:
        if "." in name:
            resource, attribute = name.split(".", 1)
            return self._attribute(resource, attribute)
        return self._ref(name)


def resolve_variables(function: Function, resolver: Resolver) -> dict[str, str]:
    """The function's environment variables with their values decided; raises InvokeError
    naming every variable that could not be."""
    values: dict[str, str] = {}
    unknown: list[str] = []
    for name, expression in function.variables.items():
        try:
            values[str(name)] = resolver.value(expression)
        except LookupError as exc:
            unknown.append(f"{name} ({exc})")
    if unknown:
        raise InvokeError(f"{function.logical_id}: cannot decide " + "; ".join(unknown))
    return values


# ------------------------------------------------------------------------------ the runtime


def check_architecture(layer_python: Path) -> None:
    """Raise InvokeError when the layer's compiled wheels are for another machine."""
    machine = {"amd64": "x86_64", "arm64": "aarch64"}.get(platform.machine().lower())
    machine = machine or platform.machine().lower()
    compiled = sorted(layer_python.glob("pydantic_core/_pydantic_core*.so"))
    wrong = [p.name for p in compiled if machine not in p.name]
    if wrong:
        arch = "arm64" if machine == "aarch64" else machine
        raise InvokeError(
            f"the layer in {layer_python} was built for another architecture ({wrong[0]}); "
            f"build with `--parameter-overrides Architecture={arch}` (`make build-local`) to "
            "run it here"
        )


def _version_key(path: Path) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", path.parent.parent.name))


def python313() -> Path:
    """A CPython 3.13 interpreter: pyenv's newest 3.13.x, else python3.13 on PATH."""
    root = os.environ.get("PYENV_ROOT")
    if not root and shutil.which("pyenv"):
        root = subprocess.run(
            ["pyenv", "root"],  # noqa: S607 (pyenv from PATH, as the Makefile finds it)
            capture_output=True,
            text=True,
            check=False,
        ).stdout.strip()
    candidates: list[Path] = []
    if root:
        candidates = sorted(
            (
                p
                for p in Path(root, "versions").glob("3.13.*/bin/python3.13")
                if re.fullmatch(r"3\.13\.\d+", p.parent.parent.name)
            ),
            key=_version_key,
        )
    if candidates:
        return candidates[-1]
    on_path = shutil.which("python3.13")
    if on_path:
        return Path(on_path)
    raise InvokeError(
        "no Python 3.13 found (the Lambda runtime is python3.13): install one with "
        "`pyenv install 3.13` or put python3.13 on PATH"
    )


def lambda_python(folder: Path) -> Path:
    """The `python` of a clean 3.13 virtualenv in `folder` whose site-packages holds only the
    Lambda runtime's packages (made once; made again when it no longer runs)."""
    folder = folder.resolve()
    python = folder / "bin" / "python"
    if python.exists():
        probe = subprocess.run(
            [str(python), "-c", "import boto3"], capture_output=True, check=False
        )
        if probe.returncode == 0:
            return python
    shutil.rmtree(folder, ignore_errors=True)
    subprocess.run(
        [str(python313()), "-m", "venv", "--without-pip", str(folder)],
        check=True,
        capture_output=True,
    )
    site = next((folder / "lib").glob("python3.13/site-packages"))
    for name in RUNTIME_PACKAGES:
        spec = importlib.util.find_spec(name)
        if spec is None:
            raise InvokeError(f"{name} (part of the Lambda runtime) is not installed here")
        if spec.submodule_search_locations:
            source = Path(next(iter(spec.submodule_search_locations)))
        else:
            assert spec.origin is not None
            source = Path(spec.origin)
        (site / source.name).symlink_to(source)
    return python


def lambda_variables(
    function: Function,
    python: Path,
    runtime_dir: Path,
    region: str,
    credentials: Mapping[str, str],
    name: str | None = None,
) -> dict[str, str]:
    """What Lambda sets in `function`'s environment on this host (`credentials`: the AWS_*
    key variables of its role)."""
    name = name or function.logical_id
    return {
        "AWS_REGION": region,
        "AWS_DEFAULT_REGION": region,
        **credentials,
        "AWS_EXECUTION_ENV": f"AWS_Lambda_{function.runtime}",
        "AWS_LAMBDA_FUNCTION_NAME": name,
        "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
        "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(function.memory),
        "AWS_LAMBDA_FUNCTION_TIMEOUT": str(function.timeout),
        "AWS_LAMBDA_LOG_GROUP_NAME": f"/aws/lambda/{name}",
        "AWS_LAMBDA_LOG_STREAM_NAME": "$LATEST",
        "AWS_LAMBDA_INITIALIZATION_TYPE": "on-demand",
        "_HANDLER": function.handler,
        "LAMBDA_TASK_ROOT": str(function.task_root),
        "LAMBDA_RUNTIME_DIR": str(runtime_dir),
        "LANG": "en_US.UTF-8",
        "TZ": ":UTC",
        "PATH": f"{python.parent}:/usr/local/bin:/usr/bin:/bin",
        "PYTHONPATH": function.python_path,
        "PYTHONNOUSERSITE": "1",
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONUNBUFFERED": "1",
    }
