"""What `sam validate --lint` cannot see in template.yaml and the ASL file: that the REST API
really streams, that each function holds only the KMS right it needs, and that the state
machine, its substitutions and the task handlers agree."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml  # type: ignore[import-untyped,unused-ignore]

from imagegw.errors import TransientJobError
from imagegw.frontends.local import ASL_FILE, BATCH_ASL_FILE, TASKS

ROOT = Path(__file__).resolve().parents[2]
STREAMING_URI = re.compile(
    r"^arn:\$\{AWS::Partition\}:apigateway:\$\{AWS::Region\}:lambda:path/2021-11-15/"
    r"functions/\$\{ApiFunction\.Arn\}/response-streaming-invocations$"
)


class _CfnLoader(yaml.SafeLoader):
    """YAML with CloudFormation's short tags (`!Ref x` -> {"Ref": x}, `!Sub s` -> ...)."""


def _tag(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> dict[str, Any]:
    if isinstance(node, yaml.ScalarNode):
        value: Any = loader.construct_scalar(node)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)  # type: ignore[arg-type]
    if suffix == "Ref":
        return {"Ref": value}
    if suffix == "GetAtt" and isinstance(value, str):
        value = value.split(".", 1)
    return {f"Fn::{suffix}": value}


_CfnLoader.add_multi_constructor("!", _tag)


@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.load((ROOT / "template.yaml").read_text(), _CfnLoader)  # noqa: S506
    return loaded


def resources(template: dict[str, Any], kind: str) -> dict[str, dict[str, Any]]:
    return {k: v for k, v in template["Resources"].items() if v["Type"] == kind}


def statements(function: dict[str, Any]) -> list[dict[str, Any]]:
    """The function's policy statements; a conditional one (`!If [c, statement, NoValue]`)
    as its statement."""
    found: list[dict[str, Any]] = []
    for policy in function["Properties"].get("Policies", []):
        if isinstance(policy, dict) and "Statement" in policy:
            for statement in policy["Statement"]:
                if "Fn::If" in statement:
                    statement = statement["Fn::If"][1]
                found.append(statement)
    return found


def actions(function: dict[str, Any]) -> set[str]:
    found: set[str] = set()
    for statement in statements(function):
        listed = statement["Action"]
        found |= {listed} if isinstance(listed, str) else set(listed)
    return found


def test_every_rest_api_method_streams_from_the_api_function(template: dict[str, Any]) -> None:
    api = template["Resources"]["RestApi"]["Properties"]
    assert api["EndpointConfiguration"]["Type"] == "REGIONAL"
    paths = api["DefinitionBody"]["paths"]
    assert set(paths) == {"/", "/{proxy+}"}
    for path, methods in paths.items():
        assert set(methods) == {"x-amazon-apigateway-any-method", "options"}, path
        for name, method in methods.items():
            integration = method["x-amazon-apigateway-integration"]
            assert integration["type"] == "aws_proxy"
            assert integration["httpMethod"] == "POST"
            assert STREAMING_URI.match(integration["uri"]["Fn::Sub"]), integration["uri"]
            assert integration["responseTransferMode"] == "STREAM"
            if name != "options":  # generations stream for up to 15 minutes
                assert integration["timeoutInMillis"] == 900000
    # SAM events, if any come back, must use SAM's value, not the CloudFormation one
    for function in resources(template, "AWS::Serverless::Function").values():
        for event in function["Properties"].get("Events", {}).values():
            if event["Type"] == "Api":
                assert event["Properties"].get("ResponseTransferMode") == "RESPONSE_STREAM"


def test_api_keys_are_optional_and_preflights_need_none(template: dict[str, Any]) -> None:
    paths = template["Resources"]["RestApi"]["Properties"]["DefinitionBody"]["paths"]
    for methods in paths.values():
        security = methods["x-amazon-apigateway-any-method"]["security"]
        assert security == {"Fn::If": ["ApiKeysRequired", [{"api_key": []}], []]}
        assert methods["options"]["security"] == []
    for name in ("RestApiUsagePlan", "RestApiKey", "RestApiUsagePlanKey"):
        assert template["Resources"][name]["Condition"] == "ApiKeysRequired"
    assert template["Resources"]["RestApiUsagePlan"]["Properties"]["Throttle"]


def test_each_function_holds_only_its_kms_right(template: dict[str, Any]) -> None:
    functions = resources(template, "AWS::Serverless::Function")
    kms = {name: {a for a in actions(f) if a.startswith("kms:")} for name, f in functions.items()}
    assert kms == {
        "ApiFunction": {"kms:Encrypt"},
        "JobSubmitFunction": {"kms:Decrypt"},
        "JobPollFunction": {"kms:Decrypt"},
        "JobStoreFunction": set(),
        "BatchStepFunction": {"kms:Decrypt", "kms:Encrypt"},
        "JobNotifyFunction": set(),
    }
    contexts = {
        # the API seals a job's key, or a batch's (for its items to seal again, each for its job)
        ("ApiFunction", "kms:Encrypt"): ["job-*", "batch_*"],
        ("JobSubmitFunction", "kms:Decrypt"): "job-*",
        ("JobPollFunction", "kms:Decrypt"): "job-*",
        ("BatchStepFunction", "kms:Decrypt"): "batch_*",
        ("BatchStepFunction", "kms:Encrypt"): "job-*",
    }
    for name, function in functions.items():
        for statement in statements(function):
            if str(statement["Action"]).startswith("kms:"):
                condition = statement["Condition"]["StringLike"]
                wanted = contexts[(name, statement["Action"])]
                assert condition == {"kms:EncryptionContext:gateway-job": wanted}


def test_cors_headers_come_from_one_place_per_entry(template: dict[str, Any]) -> None:
    api = template["Resources"]["ApiFunction"]["Properties"]
    env = api["Environment"]["Variables"]
    assert env["CORS_SCOPE"] == "api-gateway" and env["CORS_ALLOW_ORIGINS"]
    cors = api["FunctionUrlConfig"]["Cors"]
    assert {"prefer", "idempotency-key"} <= set(cors["AllowHeaders"])
    assert {"location", "preference-applied"} <= set(cors["ExposeHeaders"])


def test_the_state_machine_and_its_tasks_agree(template: dict[str, Any]) -> None:
    machine = template["Resources"]["ImageJobStateMachine"]["Properties"]
    assert machine["Type"] == "STANDARD"
    assert ROOT / machine["DefinitionUri"] == ASL_FILE
    substitutions = machine["DefinitionSubstitutions"]
    text = ASL_FILE.read_text()
    job_tasks = {name: folder for name, folder in TASKS.items() if name.startswith("Job")}
    assert set(re.findall(r"\$\{(\w+)\}", text)) == set(substitutions) == set(job_tasks)
    for substitution, folder in job_tasks.items():
        logical_id = substitutions[substitution]["Fn::GetAtt"][0]
        function = template["Resources"][logical_id]["Properties"]
        assert function["CodeUri"] == f"functions/{folder}"
        assert function["Handler"] == "app.lambda_handler"
        assert (ROOT / function["CodeUri"] / "app.py").exists()
    # the handlers' error for passing failures is the one the Retry names
    asl = json.loads(text)
    for name in ("Submit", "Poll", "Store"):
        retried = [e for r in asl["States"][name]["Retry"] for e in r["ErrorEquals"]]
        assert TransientJobError.__name__ in retried
    assert asl["States"]["Wait"]["SecondsPath"] == "$.wait_seconds"


def test_listing_the_bucket_is_limited_to_the_prefixes_the_api_uses(
    template: dict[str, Any],
) -> None:
    for name, function in resources(template, "AWS::Serverless::Function").items():
        for statement in statements(function):
            if "s3:ListBucket" in str(statement["Action"]):
                prefixes = statement["Condition"]["StringLike"]["s3:prefix"]
                assert set(prefixes) <= {"batches/*", "images/*", "uploads/*"}, name


def test_an_owner_can_cap_what_a_flood_of_requests_costs(template: dict[str, Any]) -> None:
    parameter = template["Parameters"]["ApiReservedConcurrency"]
    assert parameter["Default"] == ""  # no cap unless the owner sets one
    assert re.match(parameter["AllowedPattern"], "10")
    assert not re.match(parameter["AllowedPattern"], "-1")
    api = template["Resources"]["ApiFunction"]["Properties"]
    assert api["ReservedConcurrentExecutions"] == {
        "Fn::If": ["CapApiConcurrency", {"Ref": "ApiReservedConcurrency"}, {"Ref": "AWS::NoValue"}]
    }


def test_uploads_expire_within_a_day_by_default(template: dict[str, Any]) -> None:
    assert template["Parameters"]["UploadRetentionDays"]["Default"] == 1
    rules = template["Resources"]["UploadsBucket"]["Properties"]["LifecycleConfiguration"]["Rules"]
    expiring = [r for r in rules if r.get("Prefix") == "uploads/"]
    assert expiring[0]["ExpirationInDays"] == {"Ref": "UploadRetentionDays"}


def test_no_function_may_fetch_private_addresses(template: dict[str, Any]) -> None:
    # ALLOW_PRIVATE_URLS exists only for tests against fakes on loopback
    assert "ALLOW_PRIVATE_URLS" not in json.dumps(template)


def test_provider_settings_are_one_shared_parameter(template: dict[str, Any]) -> None:
    # the providers declare their own settings; the template lists none of them
    from imagegw.infra.config import declared

    shared = template["Globals"]["Function"]["Environment"]["Variables"]
    assert shared["PROVIDER_SETTINGS"] == {"Ref": "ProviderSettings"}
    for name, resource in template["Resources"].items():
        variables = resource.get("Properties", {}).get("Environment", {}).get("Variables", {})
        assert not set(variables) & set(declared()), name
    assert not any("BaseUrl" in name for name in template["Parameters"])


def _dashboard(template: dict[str, Any]) -> dict[str, Any]:
    """The dashboard's body as CloudFormation makes it (its `${...}` filled in), parsed."""
    (dashboard,) = resources(template, "AWS::CloudWatch::Dashboard").values()
    body, variables = dashboard["Properties"]["DashboardBody"]["Fn::Sub"]
    assert set(variables) == {"Namespace"}
    filled = re.sub(r"\$\{([A-Za-z0-9:]+)\}", lambda m: f"<{m.group(1)}>", body)
    parsed: dict[str, Any] = json.loads(filled)
    return parsed


def _metric_names(widget: dict[str, Any]) -> set[str]:
    names: set[str] = set()
    for line in widget["properties"]["metrics"]:
        if isinstance(line[0], dict):
            names.add(line[0]["expression"])
        else:
            names.add(line[1])
    return names


def test_the_dashboard_shows_requests_errors_by_code_generation_time_jobs_throttles(
    template: dict[str, Any],
) -> None:
    widgets = {w["properties"]["title"]: w for w in _dashboard(template)["widgets"]}
    shown = {title: _metric_names(widget) for title, widget in widgets.items()}
    every = set().union(*shown.values())
    assert {"Requests", "Errors", "Generations", "ImagesGenerated", "ColdStart"} <= every
    assert {"JobsSubmitted", "JobsSucceeded", "JobsFailed", "Throttles"} <= every
    (by_code,) = [e for e in every if e.startswith("SEARCH(")]
    assert "ErrorCode" in by_code and 'MetricName="Failures"' in by_code
    timing = next(w for t, w in widgets.items() if "Generation time" in t)
    stats = {line[-1]["stat"] for line in timing["properties"]["metrics"]}
    assert {"p50", "p95"} <= stats
    # every metric of the gateway's own is read from the namespace the functions write to
    namespace = {"Fn::Sub": "ImageGateway/${AWS::StackName}"}
    (dashboard,) = resources(template, "AWS::CloudWatch::Dashboard").values()
    assert dashboard["Properties"]["DashboardBody"]["Fn::Sub"][1]["Namespace"] == namespace
    for function in resources(template, "AWS::Serverless::Function").values():
        variables = function["Properties"]["Environment"]["Variables"]
        assert variables["POWERTOOLS_METRICS_NAMESPACE"] == namespace
        assert variables["POWERTOOLS_SERVICE_NAME"] == "image-gateway"


def test_alarms_watch_error_rate_throttles_and_failed_jobs_and_mail_only_when_asked(
    template: dict[str, Any],
) -> None:
    alarms = resources(template, "AWS::CloudWatch::Alarm")
    watched = {
        name: {
            m["MetricStat"]["Metric"]["MetricName"]
            for m in alarm["Properties"]["Metrics"]
            if "MetricStat" in m
        }
        for name, alarm in alarms.items()
    }
    assert {"Requests", "Errors"} in watched.values()
    assert {"Throttles"} in watched.values()
    assert {"JobsFailed", "ExecutionsFailed", "ExecutionsTimedOut"} in watched.values()
    # notifications: a topic and an e-mail subscription exist only with an AlarmEmail
    assert template["Parameters"]["AlarmEmail"]["Default"] == ""
    assert template["Conditions"]["NotifyByEmail"] == {
        "Fn::Not": [{"Fn::Equals": [{"Ref": "AlarmEmail"}, ""]}]
    }
    (topic,) = resources(template, "AWS::SNS::Topic").values()
    (subscription,) = resources(template, "AWS::SNS::Subscription").values()
    assert topic["Condition"] == subscription["Condition"] == "NotifyByEmail"
    assert subscription["Properties"]["Endpoint"] == {"Ref": "AlarmEmail"}
    for alarm in alarms.values():
        for actions in ("AlarmActions", "OKActions"):
            assert alarm["Properties"][actions] == {
                "Fn::If": ["NotifyByEmail", [{"Ref": "AlarmTopic"}], {"Ref": "AWS::NoValue"}]
            }


def test_the_stack_outputs_the_dashboards_address(template: dict[str, Any]) -> None:
    url = template["Outputs"]["DashboardUrl"]["Value"]["Fn::Sub"]
    assert url.startswith("https://console.aws.amazon.com/cloudwatch/")
    assert "region=${AWS::Region}" in url and url.endswith("#dashboards:name=${Dashboard}")


def test_gateway_keys_live_in_an_on_demand_table_and_one_secret_unless_open(
    template: dict[str, Any],
) -> None:
    assert template["Parameters"]["AccessMode"]["Default"] == "mixed"
    assert template["Parameters"]["AccessMode"]["AllowedValues"] == ["open", "mixed", "keys"]
    table = template["Resources"]["AccessTable"]
    secret = template["Resources"]["AccessSecret"]
    assert table["Condition"] == secret["Condition"] == "AccessEnabled"
    assert template["Conditions"]["AccessEnabled"] == {
        "Fn::Not": [{"Fn::Equals": [{"Ref": "AccessMode"}, "open"]}]
    }
    props = table["Properties"]
    assert props["BillingMode"] == "PAY_PER_REQUEST"
    assert props["PointInTimeRecoverySpecification"] == {"PointInTimeRecoveryEnabled": True}
    assert props["TimeToLiveSpecification"] == {"AttributeName": "expires_at", "Enabled": True}
    # the secret is generated with a pepper and an empty pool: no token in the template
    generated = secret["Properties"]["GenerateSecretString"]
    assert generated["GenerateStringKey"] == "pepper"
    assert json.loads(generated["SecretStringTemplate"]) == {"tokens": {}}


def test_functions_may_only_read_the_secret_and_get_or_update_table_items(
    template: dict[str, Any],
) -> None:
    functions = resources(template, "AWS::Serverless::Function")
    rights = {
        name: {a for a in actions(f) if a.startswith(("dynamodb:", "secretsmanager:"))}
        for name, f in functions.items()
    }
    assert rights == {
        "ApiFunction": {"dynamodb:GetItem", "dynamodb:UpdateItem", "secretsmanager:GetSecretValue"},
        "JobSubmitFunction": {
            "dynamodb:GetItem",
            "dynamodb:UpdateItem",
            "secretsmanager:GetSecretValue",
        },
        "JobPollFunction": {
            "dynamodb:GetItem",
            "dynamodb:UpdateItem",
            "secretsmanager:GetSecretValue",
        },
        "JobStoreFunction": {"dynamodb:GetItem", "dynamodb:UpdateItem"},
        # an item's Submit: the job's (a gateway key's item uses a server-held token)
        "BatchStepFunction": {
            "dynamodb:GetItem",
            "dynamodb:UpdateItem",
            "secretsmanager:GetSecretValue",
        },
        # one attempt at a job's webhook: reads the webhook secret, nothing else
        "JobNotifyFunction": {"secretsmanager:GetSecretValue"},
    }


def test_the_webhook_secret_is_generated_and_read_only_where_signing_happens(
    template: dict[str, Any],
) -> None:
    secret = template["Resources"]["WebhookSecret"]
    assert secret["Type"] == "AWS::SecretsManager::Secret"
    assert "SecretString" not in secret["Properties"]  # generated at deploy, in no file
    assert secret["Properties"]["GenerateSecretString"]["PasswordLength"] >= 32
    functions = resources(template, "AWS::Serverless::Function")
    readers = {
        name
        for name, f in functions.items()
        for statement in f["Properties"].get("Policies", [{}])[0].get("Statement", [])
        if isinstance(statement, dict) and statement.get("Resource") == {"Ref": "WebhookSecret"}
    }
    assert readers == {"ApiFunction", "JobNotifyFunction"}
    assert template["Outputs"]["WebhookSecretArn"]["Value"] == {"Ref": "WebhookSecret"}


def test_no_token_is_a_parameter_or_an_output(template: dict[str, Any]) -> None:
    for name in [*template["Parameters"], *template["Outputs"]]:
        assert "token" not in name.lower() and "pepper" not in name.lower()
    outputs = template["Outputs"]
    assert outputs["AccessSecretArn"]["Value"] == {"Ref": "AccessSecret"}  # its ARN only


def test_the_batch_machine_runs_the_job_machines_states_for_each_item(
    template: dict[str, Any],
) -> None:
    machine = template["Resources"]["ImageBatchStateMachine"]["Properties"]
    assert ROOT / machine["DefinitionUri"] == BATCH_ASL_FILE
    text = BATCH_ASL_FILE.read_text()
    assert set(re.findall(r"\$\{(\w+)\}", text)) == set(machine["DefinitionSubstitutions"])
    # an item's Polls on the job's Poll function; a batch's batch.* event on its Notify one
    assert set(machine["DefinitionSubstitutions"]) == {
        "JobPollFunctionArn",
        "JobNotifyFunctionArn",
        "BatchStepFunctionArn",
        "BatchBucket",
    }
    # the file is what tools/batchasl makes of the job machine today (`make asl` checks it too)
    check = subprocess.run([sys.executable, str(ROOT / "tools" / "batchasl"), "--check"])
    assert check.returncode == 0, (
        "statemachine/image_batch.asl.json is stale: python tools/batchasl"
    )
    batch = json.loads(text)
    job = json.loads(ASL_FILE.read_text())
    items = batch["States"]["Items"]
    assert items["MaxConcurrencyPath"] == "$.concurrency"
    processor = items["ItemProcessor"]
    assert processor["ProcessorConfig"] == {"Mode": "DISTRIBUTED", "ExecutionType": "STANDARD"}
    states = processor["States"]
    assert processor["StartAt"] == job["StartAt"] == "Submit"
    recorded = {"ErrorEquals": ["States.ALL"], "ResultPath": "$.failure", "Next": "Record"}
    # the job's lifecycle steps: the waits and Poll unchanged but for a step that failed
    # beyond its retries, which is the item's failure
    for name in ("Predicted", "Wait", "Backoff", "Poll"):
        state = dict(states[name])
        if state["Type"] == "Task":
            *catches, last = state.pop("Catch")
            assert last == recorded
            if catches:
                state["Catch"] = catches
        assert state == job["States"][name], name
    # Submit and Store are the job's, run by the batch step (which wraps the job's own), with
    # the job's Retry: a submission is retried only where nothing started
    for name in ("Submit", "Store"):
        assert states[name]["Resource"] == "${BatchStepFunctionArn}"
        assert states[name]["Parameters"]["step"] == name.lower()
        assert states[name]["Retry"] == job["States"][name]["Retry"]
        assert states[name]["Catch"][-1] == recorded
    # Check is the job's, less its webhook branches (items have none); where a job fails, or
    # an item was not submitted, the item is recorded
    job_rules = [
        rule
        for rule in job["States"]["Check"]["Choices"]
        if "$.job.webhook" not in json.dumps(rule)
    ]
    first, *rules = states["Check"]["Choices"]
    assert first == {"Variable": "$.progress", "IsPresent": False, "Next": "Record"}
    assert [r["Next"] for r in rules] == [
        "Record" if r["Next"] == "Failed" else r["Next"] for r in job_rules
    ]
    # an item ends in Store (images) or Record (none): never a failed child workflow
    assert sorted(name for name, s in states.items() if s.get("End")) == ["Record", "Store"]
    assert not [s for s in states.values() if s["Type"] in ("Fail", "Succeed")]
    # no state is left that no item enters (the job's webhook and Release paths)
    assert set(states) == {
        "Submit",
        "Check",
        "Predicted",
        "Wait",
        "Backoff",
        "Poll",
        "Store",
        "TimedOut",
        "Record",
    }
    env = template["Resources"]["ApiFunction"]["Properties"]["Environment"]["Variables"]
    assert env["BATCH_STATE_MACHINE_ARN"] == {"Ref": "ImageBatchStateMachine"}


# ----------------------------------------------------------------- limits of the real services

#: history events each state type writes when it runs once (Step Functions' event types:
#: Entered and Exited for every state; a Lambda task also Scheduled, Started and Succeeded)
EVENTS: dict[str, int] = {"Choice": 2, "Wait": 2, "Pass": 2, "Task": 5}
#: an execution's history holds at most this many events (Step Functions' quota)
HISTORY_LIMIT = 25_000


def poll_loop_events(asl: dict[str, Any]) -> int:
    """The most history events one round of the poll loop writes: Check, the longest of its
    waits, and the Poll task (retries of the task aside: see the headroom)."""
    states = asl["States"]
    waits = [c["Next"] for c in states["Check"]["Choices"] if states[c["Next"]]["Type"] == "Wait"]
    waits.append(states["Check"]["Default"])
    assert all(states[w]["Next"] == "Poll" for w in waits)
    assert states["Poll"]["Next"] == "Check"
    return (
        EVENTS[states["Check"]["Type"]]
        + max(EVENTS[states[w]["Type"]] for w in waits)
        + EVENTS[states["Poll"]["Type"]]
    )


@pytest.mark.parametrize("timeout", [60, 3600, 86400])
@pytest.mark.parametrize("interval", [1, 5, 300])
def test_a_jobs_history_stays_under_25000_events_at_any_timeout_and_interval(
    template: dict[str, Any], timeout: int, interval: int
) -> None:
    from imagegw.infra.config import Settings
    from imagegw.runners.stepfunctions.service import MAX_POLLS, max_polls, poll_wait

    params = template["Parameters"]
    assert params["JobTimeout"]["MinValue"] <= timeout <= params["JobTimeout"]["MaxValue"]
    assert params["JobPollInterval"]["MinValue"] <= interval
    assert interval <= params["JobPollInterval"]["MaxValue"]
    asl = json.loads(ASL_FILE.read_text())
    per_poll = poll_loop_events(asl)
    assert per_poll == 9
    settings = Settings(job_timeout=timeout, job_poll_interval=interval)

    polls = max_polls(settings)

    # the polls a job may make, and what they write, with room left for Submit, Store, the
    # tasks' own retries and the execution's start and end (a few hundred events at most)
    assert polls <= MAX_POLLS
    assert polls * per_poll <= HISTORY_LIMIT - 3000
    # and the job still gets its whole JOB_TIMEOUT: fewer polls, each wait longer
    assert polls * poll_wait(settings) >= timeout
    assert poll_wait(settings) >= interval


def test_the_rest_api_has_no_implicit_stage_and_its_own_errors_carry_cors(
    template: dict[str, Any],
) -> None:
    api = template["Resources"]["RestApi"]["Properties"]
    # any OpenApiVersion: SAM makes no `Stage` stage beside Prod (which has the throttling)
    assert api["OpenApiVersion"]
    assert api["StageName"] == "Prod" and api["MethodSettings"][0]["ThrottlingRateLimit"]
    for kind in ("DEFAULT_4XX", "DEFAULT_5XX"):
        headers = api["GatewayResponses"][kind]["ResponseParameters"]["Headers"]
        assert headers["Access-Control-Allow-Origin"] == "'*'"
        assert "retry-after" in headers["Access-Control-Expose-Headers"]


def test_reserved_concurrency_says_where_it_cannot_be_set(template: dict[str, Any]) -> None:
    described = template["Parameters"]["ApiReservedConcurrency"]["Description"]
    assert "small concurrency quota" in described and "100" in described


def test_the_state_machines_name_fits_any_stack_name(template: dict[str, Any]) -> None:
    # Step Functions takes 80 characters, CloudFormation stack names 128: a name made from
    # the stack's would not fit; CloudFormation names it when the template does not
    machine = template["Resources"]["ImageJobStateMachine"]["Properties"]
    assert "Name" not in machine
    reads = [
        s["Resource"]["Fn::Sub"]
        for s in statements(template["Resources"]["ApiFunction"])
        if s.get("Sid") == "ReadJobs"
    ]
    assert reads and "${ImageJobStateMachine.Name}" in reads[0]


def test_the_key_table_is_encrypted_with_an_aws_owned_key(template: dict[str, Any]) -> None:
    props = template["Resources"]["AccessTable"]["Properties"]
    # SSEEnabled true would mean the AWS managed KMS key, and a KMS request per read
    assert props.get("SSESpecification", {}).get("SSEEnabled") in (None, False)


def test_a_generation_ends_before_the_function_that_answers_it(
    template: dict[str, Any],
) -> None:
    from imagegw.infra.config import FUNCTION_MARGIN, Settings

    params = template["Parameters"]
    env = template["Resources"]["ApiFunction"]["Properties"]["Environment"]["Variables"]
    assert env["FUNCTION_TIMEOUT"] == {"Ref": "FunctionTimeout"}
    assert env["GENERATION_TIMEOUT"] == {"Ref": "GenerationTimeout"}
    # at the defaults, and at the worst pair the parameters allow
    for function, generation in (
        (params["FunctionTimeout"]["Default"], params["GenerationTimeout"]["Default"]),
        (params["FunctionTimeout"]["MinValue"], params["GenerationTimeout"]["MaxValue"]),
    ):
        settings = Settings.from_env(
            {"FUNCTION_TIMEOUT": str(function), "GENERATION_TIMEOUT": str(generation)}
        )
        margin = min(FUNCTION_MARGIN, function / 4)
        assert 0 < settings.generation_timeout <= function - margin
    # a generation timeout already below is kept as it is
    kept = Settings.from_env({"FUNCTION_TIMEOUT": "900", "GENERATION_TIMEOUT": "600"})
    assert kept.generation_timeout == 600


def test_the_demo_provider_is_off_unless_its_parameter_turns_it_on(
    template: dict[str, Any],
) -> None:
    parameter = template["Parameters"]["DemoProvider"]
    assert parameter["Default"] == "disabled"
    assert set(parameter["AllowedValues"]) == {"disabled", "enabled"}
    # every function that resolves a provider reads the same switch (a demo job's Submit, Poll
    # and Store refused the provider the API had accepted when only the API had it)
    shared = template["Globals"]["Function"]["Environment"]["Variables"]
    assert shared["DEMO_PROVIDER"] == {"Ref": "DemoProvider"}
    for name, resource in template["Resources"].items():
        if resource["Type"] == "AWS::Serverless::Function":
            own = resource["Properties"].get("Environment", {}).get("Variables", {})
            assert "DEMO_PROVIDER" not in own, name
    # the app reads the same words: only "enabled" turns it on
    from imagegw.infra.config import Settings
    from imagegw.providers.demo import enabled

    assert not enabled(Settings(demo_provider=parameter["Default"]))
    assert enabled(Settings(demo_provider="enabled"))


def test_browsers_may_read_stored_images_from_the_bucket_and_nothing_more(
    template: dict[str, Any],
) -> None:
    bucket = template["Resources"]["UploadsBucket"]["Properties"]
    (rule,) = bucket["CorsConfiguration"]["CorsRules"]
    assert set(rule["AllowedMethods"]) == {"GET", "HEAD"}  # no writes from a browser
    assert rule["AllowedOrigins"] == ["*"]
    assert "content-type" in rule["ExposedHeaders"]
    # still private: CORS lets a page read what a presigned URL already grants
    assert all(bucket["PublicAccessBlockConfiguration"].values())


def test_the_job_steps_that_open_a_jobs_inputs_may_read_them(template: dict[str, Any]) -> None:
    """Submit gives the provider the job's input images; Poll does too, for a provider whose
    check needs them (`Provider.checks_with_inputs`: the demo's edit)."""
    functions = resources(template, "AWS::Serverless::Function")
    for name in ("JobSubmitFunction", "JobPollFunction"):
        (reads,) = [s for s in statements(functions[name]) if s.get("Sid") == "ReadInputs"]
        assert reads["Action"] == "s3:GetObject"
        resources_read = {part["Fn::Sub"] for part in reads["Resource"]}
        assert resources_read == {
            "${UploadsBucket.Arn}/uploads/*",
            "${UploadsBucket.Arn}/images/*",
        }, name
