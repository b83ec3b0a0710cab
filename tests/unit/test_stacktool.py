"""`make deploy`, `make logs`, `make delete`'s helper (tools/stacktool): what it tells a user
without AWS credentials, after a deploy, and before a delete."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import boto3
import pytest

from fakes.aws import mocked_account
from stacktool.__main__ import (
    NO_CREDENTIALS,
    StackError,
    check_credentials,
    describe,
    log_groups,
    main,
    retained_bucket,
    saved_settings,
)

OUTPUTS = {
    "FunctionUrl": "https://abc123.lambda-url.ap-east-1.on.aws/",
    "OpenAIBaseUrl": "https://abc123.lambda-url.ap-east-1.on.aws/v1",
    "DashboardUrl": "https://console.aws.amazon.com/cloudwatch/home?region=ap-east-1#dashboards:name=gw",
    "UploadsBucketName": "gw-uploadsbucket-1x2y3z",
    "JobStateMachineArn": "arn:aws:states:ap-east-1:123456789012:stateMachine:gw-image-jobs",
}


def test_without_credentials_deploy_stops_with_a_how_to(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given a machine with no AWS credentials anywhere boto3 looks
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    # Then the check fails with the message that says how to give them, and nothing else
    assert main(["credentials", "--region", "us-east-1"]) == 1
    err = capsys.readouterr().err
    assert err.strip() == NO_CREDENTIALS
    assert "AWS_PROFILE" in err and "AWS_ACCESS_KEY_ID" in err and "Traceback" not in err


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


def test_before_a_delete_the_kept_bucket_and_how_to_empty_it_are_named() -> None:
    class Stacks:
        def client(self, name: str) -> Any:
            assert name == "cloudformation"
            return self

        def describe_stacks(self, StackName: str) -> dict[str, Any]:
            outputs = [{"OutputKey": k, "OutputValue": v} for k, v in OUTPUTS.items()]
            return {"Stacks": [{"StackName": StackName, "Outputs": outputs}]}

    text = retained_bucket(Stacks(), "gw")
    assert "gw-uploadsbucket-1x2y3z" in text
    assert "Bucket('gw-uploadsbucket-1x2y3z'); b.objects.all().delete(); b.delete()" in text


def test_a_missing_stack_is_one_clear_line() -> None:
    with mocked_account():
        session = boto3.session.Session(
            region_name="us-east-1", aws_access_key_id="a", aws_secret_access_key="b"
        )
        with pytest.raises(StackError, match="cannot read the stack 'nope'"):
            retained_bucket(session, "nope")
