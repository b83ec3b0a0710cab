"""The environment `make invoke` gives a function, and what `make env-json` writes, built from the
repo's template (`lambdahost`): the template's variables decided from the stand-ins or from a
deployed stack, then a shell and an env-vars file applied as `sam local invoke` applies them.

The stack is a stub of CloudFormation's two read calls (the shapes boto3 returns); the real
calls are made against the deployed stack on the emulator (tests/aws, `make test-aws`).
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from lambdahost.__main__ import EVENTS, main
from lambdahost.build import InvokeError, Resolver, Template, load_template, resolve_variables
from lambdahost.invoke import Target, env_vars_overrides, function_environment, stand_in_target
from lambdahost.stack import env_vars_file, job_key_arn, stack_resolver, stack_target
from lambdahost.standins import StandIns

REPO_ROOT = Path(__file__).resolve().parents[2]
STAND_INS = StandIns(
    endpoint="http://127.0.0.1:4566",
    bucket="invoke-bucket",
    key_arn="arn:aws:kms:us-east-1:123456789012:key/00000000-0000-4000-8000-00000000c0de",
    state_machine_arn="arn:aws:states:us-east-1:123456789012:stateMachine:jobs",
    webhook_secret_arn="arn:aws:secretsmanager:us-east-1:123456789012:secret:webhooks-Ab12",
)
STACK_ID = (
    "arn:aws:cloudformation:eu-west-1:111122223333:stack/gw/0a1b2c3d-4e5f-6789-abcd-ef0123456789"
)
KEY_ID = "1234abcd-12ab-34cd-56ef-1234567890ab"


@pytest.fixture(scope="module")
def template() -> Template:
    """The source template (its short tags read as long forms)."""
    return Template(REPO_ROOT)


def environment(
    template: Template,
    function: str,
    env_vars: dict[str, Any] | None = None,
    variables: dict[str, str] | None = None,
    target: Target | None = None,
) -> tuple[dict[str, str], list[str]]:
    built = function_environment(
        template.function(function),
        target or stand_in_target(template, STAND_INS),
        Path("/runtime/bin/python"),
        Path("/var/runtime"),
        env_vars,
        variables,
    )
    return built.values, built.notes


def test_the_template_is_read_with_its_short_tags() -> None:
    # Given the source template / When it is read
    data = load_template(REPO_ROOT / "template.yaml")

    # Then short tags are the long forms
    variables = data["Resources"]["JobSubmitFunction"]["Properties"]["Environment"]["Variables"]
    assert variables["JOB_KEY_ID"] == {"Fn::GetAtt": ["JobKey", "Arn"]}
    assert variables["BUCKET"] == {"Ref": "UploadsBucket"}


def test_job_function_against_the_stand_ins(template: Template) -> None:
    # Given the Submit function / When its environment is made against the stand-ins
    env, notes = environment(template, "JobSubmitFunction")

    # Then the resources are the stand-ins', the parameters their defaults
    assert env["BUCKET"] == "invoke-bucket"
    assert env["JOB_KEY_ID"] == STAND_INS.key_arn
    assert env["PROVIDER_SETTINGS"] == ""  # from the template's Globals: the providers' defaults
    assert env["GENERATION_TIMEOUT"] == "840"
    # and the function reaches the stand-ins, with what Lambda itself sets
    assert env["S3_ENDPOINT_URL"] == env["AWS_ENDPOINT_URL_KMS"] == "http://127.0.0.1:4566"
    assert env["AWS_ACCESS_KEY_ID"] == "local"
    assert env["_HANDLER"] == "app.lambda_handler"
    assert env["LAMBDA_TASK_ROOT"] == str(template.build / "functions/job_submit")
    assert env["AWS_LAMBDA_FUNCTION_TIMEOUT"] == "900"
    assert env["PATH"].startswith("/runtime/bin:")
    assert env["AWS_SAM_LOCAL"] == "true"
    assert "ALLOW_PRIVATE_URLS" not in env
    assert notes == []


def test_notify_function_signs_with_the_stand_ins_webhook_secret(template: Template) -> None:
    # Given the Notify function / When its environment is made against the stand-ins
    env, _ = environment(template, "JobNotifyFunction")

    # Then its webhook secret is the one the stand-ins hold, read from them, not from AWS
    assert env["WEBHOOK_SECRET"] == STAND_INS.webhook_secret_arn
    assert env["AWS_ENDPOINT_URL_SECRETS_MANAGER"] == "http://127.0.0.1:4566"
    assert env["AWS_ENDPOINT_URL_DYNAMODB"] == "http://127.0.0.1:4566"


def test_api_function_against_the_stand_ins(template: Template) -> None:
    # Given the API function / When its environment is made against the stand-ins
    env, _ = environment(template, "ApiFunction")

    # Then durable jobs go to the stand-in state machine, and the Web Adapter's settings stay
    assert env["JOB_STATE_MACHINE_ARN"] == STAND_INS.state_machine_arn
    assert env["AWS_ENDPOINT_URL_SFN"] == "http://127.0.0.1:4566"
    assert env["AWS_LAMBDA_EXEC_WRAPPER"] == "/opt/bootstrap"
    assert env["AWS_LWA_INVOKE_MODE"] == "response_stream"
    assert template.function("ApiFunction").external_layers == 1  # the Web Adapter's layer


def test_env_vars_file_overrides_like_sam(template: Template) -> None:
    # Given an env-vars file with values for every function and for the Submit function
    env_vars = {
        "Parameters": {"PROVIDER_SETTINGS": "MODELSCOPE_BASE_URL=http://p/v1", "PRESIGN_TTL": 60},
        "JobSubmitFunction": {
            "PROVIDER_SETTINGS": "MODELSCOPE_BASE_URL=http://f/v1",
            "ALLOW_PRIVATE_URLS": True,
        },
        "JobPollFunction": {"PRESIGN_TTL": "1"},
    }

    # When the Submit function's environment is made, a shell setting a declared variable too
    env, notes = environment(
        template,
        "JobSubmitFunction",
        env_vars,
        variables={
            "PROVIDER_SETTINGS": "MODELSCOPE_BASE_URL=http://shell/v1",
            "GENERATION_TIMEOUT": "120",
        },
    )

    # Then the function's own entry wins over Parameters, both over the shell, the shell over
    # the template; another function's entry does not apply
    assert env["PROVIDER_SETTINGS"] == "MODELSCOPE_BASE_URL=http://f/v1"
    assert env["PRESIGN_TTL"] == "60"
    assert env["GENERATION_TIMEOUT"] == "120"
    # and a variable the template does not declare is ignored, and said so
    assert "ALLOW_PRIVATE_URLS" not in env
    assert any("ALLOW_PRIVATE_URLS" in n and "ignored" in n for n in notes)
    assert any("your shell" in n and "GENERATION_TIMEOUT" in n for n in notes)


def test_a_provider_setting_of_the_shell_or_the_file_reaches_the_function(
    template: Template,
) -> None:
    # Given the docs' advice: point MODELSCOPE_BASE_URL at a test server, in the shell, and a
    # SiliconFlow one in the env-vars file, over a PROVIDER_SETTINGS naming ModelScope too
    env_vars = {"Parameters": {"SILICONFLOW_BASE_URL": "http://sf.test/v1"}}
    shell = {
        "MODELSCOPE_BASE_URL": "http://127.0.0.1:9000/v1",
        "PROVIDER_SETTINGS": "MODELSCOPE_BASE_URL=http://old/v1;OPENAI_IMAGE_MODELS=a,b",
    }

    # When the Submit and the API functions' environments are made
    for function in ("JobSubmitFunction", "ApiFunction"):
        env, notes = environment(template, function, env_vars, variables=shell)

        # Then both settings reach the function the way the template passes provider
        # settings (its PROVIDER_SETTINGS), the shell's own variable winning, the rest kept
        assert env["PROVIDER_SETTINGS"] == (
            "OPENAI_IMAGE_MODELS=a,b;MODELSCOPE_BASE_URL=http://127.0.0.1:9000/v1;"
            "SILICONFLOW_BASE_URL=http://sf.test/v1"
        )
        # and the function reads them as its settings, and is told so, not that they are ignored
        from imagegw.infra.config import Settings

        settings = Settings.from_env({"PROVIDER_SETTINGS": env["PROVIDER_SETTINGS"]})
        assert settings.provider_settings["MODELSCOPE_BASE_URL"] == "http://127.0.0.1:9000/v1"
        assert any("MODELSCOPE_BASE_URL, SILICONFLOW_BASE_URL" in n for n in notes)
        assert not any("ignored" in n for n in notes)


def test_env_vars_file_values_are_stringified_like_sam() -> None:
    # Given values of every JSON kind / Then they reach the function as SAM passes them
    overrides = env_vars_overrides(
        {"Parameters": {"A": True, "B": False, "C": 5, "D": None, "E": [1], "F": {"x": 1}}}, "X"
    )
    assert overrides == {"A": "true", "B": "false", "C": "5", "D": "", "E": "", "F": ""}


def test_a_malformed_env_vars_file_is_refused() -> None:
    # Given an env-vars file whose entry is not an object / Then it is refused, as SAM does
    with pytest.raises(InvokeError, match="SAM's format"):
        env_vars_overrides({"Parameters": "PROVIDER_SETTINGS=x"}, "JobSubmitFunction")


def test_intrinsics_resolve_or_name_the_variable(template: Template) -> None:
    # Given a resolver with a parameter, a resource and an attribute
    resolver = Resolver({"P": "p"}, {"R": "r"}, {("K", "Arn"): "arn:k"}, region="eu-west-1")

    # Then Ref, both forms of GetAtt and Sub resolve
    assert resolver.value({"Ref": "P"}) == "p"
    assert resolver.value({"Ref": "AWS::Region"}) == "eu-west-1"
    assert resolver.value({"Fn::GetAtt": "K.Arn"}) == "arn:k"
    assert resolver.value({"Fn::Sub": "${R}/${K.Arn}@${AWS::Region}"}) == "r/arn:k@eu-west-1"
    # and Fn::If by the template's conditions, as CloudFormation decides them
    conditions = {"On": {"Fn::Not": [{"Fn::Equals": [{"Ref": "P"}, "open"]}]}}
    chosen = {"Fn::If": ["On", {"Ref": "R"}, ""]}
    assert Resolver({"P": "mixed"}, {"R": "r"}, conditions=conditions).value(chosen) == "r"
    assert Resolver({"P": "open"}, {}, conditions=conditions).value(chosen) == ""
    # and a function whose variables name what is not known fails naming each variable
    with pytest.raises(InvokeError, match=r"BUCKET .*Ref UploadsBucket.*JOB_KEY_ID"):
        resolve_variables(template.function("JobSubmitFunction"), resolver)


class StubCloudFormation:
    """DescribeStacks and ListStackResources of one stack, shaped as boto3 answers them."""

    def __init__(self, resources: list[tuple[str, str, str]]) -> None:
        self.resources = resources

    def describe_stacks(self, StackName: str) -> dict[str, Any]:
        if StackName != "gw":
            raise RuntimeError(f"Stack with id {StackName} does not exist")
        parameters = [
            {
                "ParameterKey": "ProviderSettings",
                "ParameterValue": "MODELSCOPE_BASE_URL=https://ms.example/v1",
            },
            {"ParameterKey": "GenerationTimeout", "ParameterValue": "600"},
        ]
        return {"Stacks": [{"StackId": STACK_ID, "StackName": "gw", "Parameters": parameters}]}

    def get_paginator(self, name: str) -> Any:
        assert name == "list_stack_resources"
        summaries = [
            {"LogicalResourceId": logical, "PhysicalResourceId": physical, "ResourceType": kind}
            for logical, kind, physical in self.resources
        ]
        return SimpleNamespace(paginate=lambda StackName: [{"StackResourceSummaries": summaries}])


ACCESS_SECRET_ARN = "arn:aws:secretsmanager:eu-west-1:111122223333:secret:gw-access-Ab12"
WEBHOOK_SECRET_ARN = "arn:aws:secretsmanager:eu-west-1:111122223333:secret:gw-webhook-Cd34"
STACK_RESOURCES = [
    ("UploadsBucket", "AWS::S3::Bucket", "gw-uploadsbucket-1a2b3c"),
    ("JobKey", "AWS::KMS::Key", KEY_ID),
    (
        "ImageJobStateMachine",
        "AWS::StepFunctions::StateMachine",
        "arn:aws:states:eu-west-1:111122223333:stateMachine:gw-image-jobs",
    ),
    (
        "ImageBatchStateMachine",
        "AWS::StepFunctions::StateMachine",
        "arn:aws:states:eu-west-1:111122223333:stateMachine:gw-image-batches",
    ),
    ("ApiFunction", "AWS::Lambda::Function", "gw-ApiFunction-AbC"),
    # gateway keys (AccessMode mixed, the default)
    ("AccessTable", "AWS::DynamoDB::Table", "gw-AccessTable-XyZ"),
    ("AccessSecret", "AWS::SecretsManager::Secret", ACCESS_SECRET_ARN),
    # the webhook signing secret callers' secrets derive from
    ("WebhookSecret", "AWS::SecretsManager::Secret", WEBHOOK_SECRET_ARN),
]


def test_stack_values_for_sam_local_invoke(template: Template) -> None:
    # Given a deployed stack / When make env-json reads it
    resolver = stack_resolver("gw", template, StubCloudFormation(STACK_RESOURCES))
    entries = env_vars_file(template, resolver)

    # Then the file has the job functions (sam local invoke cannot run the streaming API
    # function), each declared variable with the stack's value
    assert sorted(entries) == [
        "BatchStepFunction",
        "JobNotifyFunction",
        "JobPollFunction",
        "JobStoreFunction",
        "JobSubmitFunction",
    ]
    assert entries["JobNotifyFunction"]["WEBHOOK_SECRET"] == WEBHOOK_SECRET_ARN
    submit = entries["JobSubmitFunction"]
    assert submit["BUCKET"] == "gw-uploadsbucket-1a2b3c"
    assert submit["JOB_KEY_ID"] == f"arn:aws:kms:eu-west-1:111122223333:key/{KEY_ID}"
    # the stack's parameter
    assert submit["PROVIDER_SETTINGS"] == "MODELSCOPE_BASE_URL=https://ms.example/v1"
    assert submit["GENERATION_TIMEOUT"] == "600"
    assert submit["PRESIGN_TTL"] == "900"  # its default
    assert set(submit) == set(template.function("JobSubmitFunction").variables)
    assert job_key_arn(template, resolver) == submit["JOB_KEY_ID"]
    # a variable behind a condition (Fn::If AccessEnabled): the stack's secret
    assert submit["ACCESS_SECRET"] == ACCESS_SECRET_ARN


def test_stack_target_uses_your_credentials_and_endpoint(template: Template) -> None:
    # Given a session with temporary credentials, and a shell naming an AWS endpoint
    frozen = SimpleNamespace(access_key="AKIAEXAMPLE", secret_key="secret", token="session")
    session = SimpleNamespace(
        client=lambda service: StubCloudFormation(STACK_RESOURCES),
        get_credentials=lambda: SimpleNamespace(get_frozen_credentials=lambda: frozen),
    )
    shell = {"AWS_ENDPOINT_URL": "http://127.0.0.1:4566", "HOME": "/root"}

    # When the API function's environment is made against the stack
    target = stack_target("gw", template, session, shell)
    env, _ = environment(template, "ApiFunction", target=target)

    # Then it is the stack's region and resources, reached with those credentials there
    assert env["AWS_REGION"] == "eu-west-1"
    assert env["AWS_SESSION_TOKEN"] == "session"
    assert env["AWS_ENDPOINT_URL"] == "http://127.0.0.1:4566"
    assert env["JOB_STATE_MACHINE_ARN"].endswith(":stateMachine:gw-image-jobs")
    assert "HOME" not in env


def test_a_missing_stack_is_a_clear_error(template: Template) -> None:
    with pytest.raises(InvokeError, match="cannot read the stack 'nope'"):
        stack_resolver("nope", template, StubCloudFormation([]))


def test_a_real_key_is_never_sealed_into_events(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given your own provider key / When make events is told to write into events/
    monkeypatch.setenv("PROVIDER_KEY", "ms-my-own-key")
    before = {p.name: p.read_text() for p in EVENTS.glob("*.json")}
    status = main(["events", "--out", str(EVENTS)])

    # Then it refuses, and events/ is as it was
    assert status == 2
    assert "never written into events/" in capsys.readouterr().err
    assert {p.name: p.read_text() for p in EVENTS.glob("*.json")} == before


def test_every_function_starts_with_pydantics_plugin_search_off(template: Template) -> None:
    # Given each function of the template / When its environment is made
    for function in template.function_ids():
        env, _notes = environment(template, function)
        # Then pydantic's search of the installed packages for plugins (none in the layer) is
        # off from its first validator on, for the job functions as for the API function
        assert env.get("PYDANTIC_DISABLE_PLUGINS") == "__all__", function
