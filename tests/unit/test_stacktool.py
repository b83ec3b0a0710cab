"""`make deploy`, `make logs`, `make delete`'s helper (tools/stacktool): what it tells a user
without AWS credentials, after a deploy, and before a delete."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import boto3
import pytest

from fakes.aws import mocked_account
from stacktool.__main__ import (
    StackError,
    architecture_mismatch,
    check_credentials,
    describe,
    log_groups,
    main,
    no_credentials,
    parameter_problems,
    retained_bucket,
    saved_architecture,
    saved_settings,
    template_defaults,
    template_parameters,
)

OUTPUTS = {
    "FunctionUrl": "https://abc123.lambda-url.ap-east-1.on.aws/",
    "OpenAIBaseUrl": "https://abc123.lambda-url.ap-east-1.on.aws/v1",
    "DashboardUrl": "https://console.aws.amazon.com/cloudwatch/home?region=ap-east-1#dashboards:name=gw",
    "UploadsBucketName": "gw-uploadsbucket-1x2y3z",
    "JobStateMachineArn": "arn:aws:states:ap-east-1:123456789012:stateMachine:gw-image-jobs",
}


@pytest.fixture
def no_credentials_here(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A machine with no AWS credentials anywhere boto3 looks."""
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


@pytest.mark.parametrize(
    ("command", "told"),
    [
        (["credentials", "--for", "deploy"], "nothing was built or deployed"),
        (["credentials", "--for", "delete"], "nothing was deleted"),
        (["logs"], "no logs were read"),
    ],
)
@pytest.mark.usefixtures("no_credentials_here")
def test_without_credentials_each_command_stops_with_a_how_to_saying_what_it_did_not_do(
    command: list[str], told: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # Then the check fails with the message that says how to give them, and nothing else:
    # no "the build is ready" (nothing was built), no raw botocore message
    assert main([*command, "--region", "us-east-1"]) == 1
    err = capsys.readouterr().err
    assert err.strip() == no_credentials(command[-1] if "--for" in command else "logs")
    assert f"No AWS credentials found, so {told}." in err
    assert "AWS_PROFILE" in err and "AWS_ACCESS_KEY_ID" in err
    assert "Traceback" not in err and "Unable to locate credentials" not in err


def test_the_deploy_checks_credentials_before_the_build() -> None:
    # `make deploy`'s recipe: the credentials check is its first step, the build comes after
    makefile = (Path(__file__).resolve().parents[2] / "Makefile").read_text()
    recipe = makefile.split("\ndeploy:", 1)[1].split("\n\n", 1)[0]
    steps = [line.strip() for line in recipe.splitlines()[1:]]
    assert steps[0] == "@$(STACKTOOL) credentials --for deploy"
    assert "build" in steps[1] and "build" not in recipe.splitlines()[0]
    delete = makefile.split("\ndelete:", 1)[1].split("\n\n", 1)[0].splitlines()
    assert delete[1].strip() == "@$(STACKTOOL) credentials --for delete"


def test_an_unreachable_aws_is_told_as_a_network_failure_not_as_refused_credentials(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given credentials, and an AWS endpoint nothing listens on (a network failure)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAEXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret-example")
    monkeypatch.setenv("AWS_ENDPOINT_URL_STS", "http://127.0.0.1:9")
    monkeypatch.setattr("stacktool.__main__.CHECK_TIMEOUT", 1)
    # Then the check says AWS could not be reached, and that nothing was built or deployed
    assert main(["credentials", "--for", "deploy", "--region", "us-east-1"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("AWS could not be reached (EndpointConnectionError)")
    assert "nothing was built or deployed" in err and "credentials were not checked" in err
    assert "refused" not in err and "Traceback" not in err


def test_refused_credentials_are_told_as_refused(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given credentials that AWS refuses
    class Refusing:
        region_name = "us-east-1"

        def get_credentials(self) -> object:
            return object()

        def client(self, name: str, config: Any = None) -> Any:
            from botocore.exceptions import ClientError

            error = {"Error": {"Code": "InvalidClientTokenId", "Message": "bad"}}
            raise ClientError(error, "GetCallerIdentity")  # type: ignore[arg-type]

    with pytest.raises(StackError) as refused:
        check_credentials(Refusing(), "logs")
    assert str(refused.value).startswith("AWS refused the credentials found (InvalidClientTokenId)")
    assert "no logs were read" in str(refused.value)


def test_with_credentials_the_check_names_the_account() -> None:
    with mocked_account():
        session = boto3.session.Session(
            region_name="us-east-1", aws_access_key_id="a", aws_secret_access_key="b"
        )
        assert check_credentials(session).isdigit()


def test_after_a_deploy_the_addresses_to_paste_are_printed() -> None:
    text = describe(OUTPUTS).splitlines()
    assert text[0].startswith("API address for Cherry Studio, Open WebUI, LobeChat:")
    assert text[0].endswith(" https://abc123.lambda-url.ap-east-1.on.aws")  # no trailing /
    assert any(line.endswith(OUTPUTS["DashboardUrl"]) for line in text)
    assert any("kept by `make delete`" in line and "gw-uploadsbucket" in line for line in text)
    assert not any("stateMachine" in line for line in text)  # only what a user needs


def test_the_stack_name_and_region_are_what_sam_deploy_saved(tmp_path: Path) -> None:
    config = tmp_path / "samconfig.toml"
    config.write_text(
        'version = 0.1\n[default.global.parameters]\nstack_name = "lambda-image-gateway"\n'
        '[default.deploy.parameters]\nstack_name = "my-gw"\nregion = "ap-east-1"\n'
    )
    assert saved_settings(config) == ("my-gw", "ap-east-1")
    assert saved_settings(tmp_path / "missing.toml") == ("lambda-image-gateway", None)
    assert log_groups("my-gw") == ["/aws/lambda/my-gw-api", "/aws/lambda/my-gw-jobs"]


class _Stacks:
    """CloudFormation's answers about one stack (`status`, its outputs and resources)."""

    def __init__(self, status: str, outputs: dict[str, str], bucket: str | None) -> None:
        self.status, self.outputs, self.bucket = status, outputs, bucket

    def client(self, name: str) -> Any:
        assert name == "cloudformation"
        return self

    def describe_stacks(self, StackName: str) -> dict[str, Any]:
        outputs = [{"OutputKey": k, "OutputValue": v} for k, v in self.outputs.items()]
        stack = {"StackName": StackName, "StackStatus": self.status}
        return {"Stacks": [{**stack, "Outputs": outputs} if outputs else stack]}

    def describe_stack_resources(self, StackName: str) -> dict[str, Any]:
        made = [{"LogicalResourceId": "ApiFunction", "PhysicalResourceId": "gw-api"}]
        if self.bucket:
            made.append({"LogicalResourceId": "UploadsBucket", "PhysicalResourceId": self.bucket})
        return {"StackResources": made}


def test_before_a_delete_the_kept_bucket_and_how_to_empty_it_are_named() -> None:
    text = retained_bucket(_Stacks("CREATE_COMPLETE", OUTPUTS, None), "gw")
    assert "gw-uploadsbucket-1x2y3z" in text
    assert "Bucket('gw-uploadsbucket-1x2y3z'); b.objects.all().delete(); b.delete()" in text
    assert "failed" not in text


@pytest.mark.parametrize("bucket", ["gw-uploadsbucket-kept", None])
def test_a_stack_whose_first_deploy_failed_is_deleted_all_the_same(
    bucket: str | None, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given a first deploy that rolled back (no outputs), its bucket kept or never made
    stacks = _Stacks("ROLLBACK_COMPLETE", {}, bucket)
    monkeypatch.setattr("stacktool.__main__.session", lambda region: stacks)

    # When `make delete` runs its step before `sam delete`
    status = main(["bucket", "--stack", "gw", "--region", "us-east-1"])

    # Then it succeeds (so `sam delete` runs), saying what state the stack is in
    assert status == 0
    out = capsys.readouterr().out
    assert "ROLLBACK_COMPLETE" in out and "`sam delete` removes it" in out
    # and names the kept bucket, found among the stack's resources, or that there is none
    if bucket:
        assert f"Bucket('{bucket}')" in out
    else:
        assert "made no image bucket" in out


def test_a_missing_stack_is_one_clear_line() -> None:
    with mocked_account():
        session = boto3.session.Session(
            region_name="us-east-1", aws_access_key_id="a", aws_secret_access_key="b"
        )
        with pytest.raises(StackError, match="There is no stack 'nope' in this region"):
            retained_bucket(session, "nope")


def test_build_and_deploy_agree_on_the_architecture_the_guided_deploy_saved(
    tmp_path: Path,
) -> None:
    config = tmp_path / "samconfig.toml"
    # Given no saved answers, the template's default
    assert saved_architecture(tmp_path / "missing.toml") == "arm64"
    # Given the answers `sam deploy --guided` saves (deploy parameters only, one string)
    config.write_text(
        'version = 0.1\n[default.global.parameters]\nstack_name = "gw"\n'
        "[default.build.parameters]\ncached = true\n"
        "[default.deploy.parameters]\n"
        'parameter_overrides = "Architecture=\\"x86_64\\" WebAdapterLayerArn=\\"\\" '
        'AccessMode=\\"keys\\""\n'
    )
    # Then `make build` builds for x86_64 too
    assert saved_architecture(config) == "x86_64"
    # and a build made before the guided answers changed it is found out, and redone
    told = architecture_mismatch("arm64", "x86_64")
    assert told is not None and "building for x86_64 before the deploy" in told
    assert architecture_mismatch("x86_64", "x86_64") is None
    # The list form of parameter_overrides is read as well
    config.write_text(
        '[default.deploy.parameters]\nparameter_overrides = ["Architecture=x86_64", "A=b"]\n'
    )
    assert saved_architecture(config) == "x86_64"


def test_the_template_defaults_work_together_and_a_bad_pair_is_refused_before_the_deploy() -> None:
    defaults = template_defaults()
    assert parameter_problems(defaults) == ([], [])
    # the worst pair the parameters' own bounds let through: refused, saying what to set
    params = template_parameters()
    worst = {
        **defaults,
        "FunctionTimeout": str(params["FunctionTimeout"]["MinValue"]),
        "GenerationTimeout": str(params["GenerationTimeout"]["MaxValue"]),
    }
    (problem,), _ = parameter_problems(worst)
    assert problem.startswith("GenerationTimeout 890 does not fit FunctionTimeout 30")
    assert "Set GenerationTimeout to 22 or less" in problem
    # a GenerationTimeout inside the 30 s margin is refused too; one below it is not
    near = {**defaults, "FunctionTimeout": "900", "GenerationTimeout": "880"}
    assert "Set GenerationTimeout to 870 or less" in parameter_problems(near)[0][0]
    assert parameter_problems({**near, "GenerationTimeout": "870"}) == ([], [])


def test_a_saved_value_that_is_no_number_is_one_clear_problem_not_a_traceback() -> None:
    (problem,), notes = parameter_problems({**template_defaults(), "FunctionTimeout": "abc"})
    assert problem.startswith("The saved parameters are not numbers")
    assert "FUNCTION_TIMEOUT" in problem and notes == []


def test_a_job_timeout_too_long_for_its_poll_interval_is_told_not_refused() -> None:
    # 86,400 s at 5 s would be 17,280 polls: the history holds 2,400 of them
    values = {**template_defaults(), "JobTimeout": "86400", "JobPollInterval": "5"}
    problems, (note,) = parameter_problems(values)
    assert problems == []
    assert "jobs poll every 36 s instead" in note


def test_make_deploy_checks_the_saved_parameters_in_the_stack_s_template(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "samconfig.toml"
    config.write_text(
        '[default.deploy.parameters]\nparameter_overrides = "FunctionTimeout=\\"120\\""\n'
    )
    monkeypatch.setattr("stacktool.__main__.SAMCONFIG", config)
    # the template's GenerationTimeout (840) does not fit a FunctionTimeout of 120
    assert main(["parameters"]) == 1
    assert "GenerationTimeout 840 does not fit FunctionTimeout 120" in capsys.readouterr().err
