"""A deployed stack as a `make invoke` target, and `make env-json`'s file for `sam local invoke`.

`stack_target` reads the stack with boto3 (`DescribeStacks`: its parameter values, region and
account; `ListStackResources`: each logical id's physical id), so the template's references
resolve to the deployed resources: `Ref` to the physical id, `Fn::GetAtt X.Arn` to the ARN built
from it. The function then runs here with your credentials (the default boto3 session: profile,
environment or SSO), not the function's role: what the role may do is not checked. Your shell's
AWS_ENDPOINT_URL* variables, if any, are passed on (an emulator's endpoint).

`env_vars_file` writes SAM's `--env-vars` JSON for the functions `sam local invoke` can run (those
not run by the Web Adapter): every declared variable with the stack's value, because SAM itself
leaves references to resources blank and takes parameters' defaults, not the stack's values.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from lambdahost.build import InvokeError, Resolver, Template, resolve_variables
from lambdahost.invoke import Target


def _arn_parts(stack_id: str) -> tuple[str, str, str]:
    """(partition, region, account) of a stack ARN."""
    parts = stack_id.split(":")
    if len(parts) < 6 or parts[0] != "arn":
        raise InvokeError(f"unexpected stack id {stack_id!r}")
    return parts[1], parts[3], parts[4]


def _attributes(
    logical_id: str, kind: str, physical: str, partition: str, region: str, account: str
) -> dict[tuple[str, str], str]:
    """The `Fn::GetAtt` values a resource's physical id gives away."""
    if kind == "AWS::KMS::Key":
        arn = f"arn:{partition}:kms:{region}:{account}:key/{physical}"
        return {(logical_id, "Arn"): arn, (logical_id, "KeyId"): physical}
    if kind == "AWS::S3::Bucket":
        return {(logical_id, "Arn"): f"arn:{partition}:s3:::{physical}"}
    if kind == "AWS::StepFunctions::StateMachine":
        return {(logical_id, "Arn"): physical, (logical_id, "Name"): physical.rsplit(":", 1)[-1]}
    if kind == "AWS::Lambda::Function":
        arn = f"arn:{partition}:lambda:{region}:{account}:function:{physical}"
        return {(logical_id, "Arn"): arn}
    return {}


def stack_resolver(stack_name: str, template: Template, cloudformation: Any) -> Resolver:
    """The template's references resolved in the deployed stack `stack_name`."""
    try:
        (stack,) = cloudformation.describe_stacks(StackName=stack_name)["Stacks"]
    except Exception as exc:  # botocore's errors: no such stack, no credentials, no region
        raise InvokeError(f"cannot read the stack {stack_name!r}: {exc}") from None
    partition, region, account = _arn_parts(str(stack["StackId"]))
    parameters = template.parameter_defaults()
    parameters.update(
        {str(p["ParameterKey"]): str(p.get("ParameterValue", "")) for p in stack["Parameters"]}
        if stack.get("Parameters")
        else {}
    )
    refs: dict[str, str] = {}
    attributes: dict[tuple[str, str], str] = {}
    pages = cloudformation.get_paginator("list_stack_resources").paginate(StackName=stack_name)
    for page in pages:
        for resource in page["StackResourceSummaries"]:
            logical_id = str(resource["LogicalResourceId"])
            physical = str(resource.get("PhysicalResourceId") or "")
            if not physical:
                continue
            refs[logical_id] = physical
            attributes.update(
                _attributes(
                    logical_id, str(resource["ResourceType"]), physical, partition, region, account
                )
            )
    return Resolver(
        parameters, refs, attributes, region, account, partition, stack_name, template.conditions
    )


def stack_target(
    stack_name: str, template: Template, session: Any, shell: Mapping[str, str]
) -> Target:
    """The deployed stack as where the function's resources are, reached with `session`'s
    credentials (a boto3 Session)."""
    resolver = stack_resolver(stack_name, template, session.client("cloudformation"))
    credentials = session.get_credentials()
    if credentials is None:
        raise InvokeError("no AWS credentials found (a profile, the environment or SSO)")
    frozen = credentials.get_frozen_credentials()
    aws = {
        "AWS_REGION": resolver.region,
        "AWS_DEFAULT_REGION": resolver.region,
        "AWS_ACCESS_KEY_ID": frozen.access_key,
        "AWS_SECRET_ACCESS_KEY": frozen.secret_key,
    }
    if frozen.token:
        aws["AWS_SESSION_TOKEN"] = frozen.token
    aws.update({k: v for k, v in shell.items() if k.startswith("AWS_ENDPOINT_URL")})
    return Target(
        resolver=resolver,
        aws=aws,
        description=f"the deployed stack {stack_name} ({resolver.region}), with your credentials",
    )


def env_vars_file(template: Template, resolver: Resolver) -> dict[str, dict[str, str]]:
    """SAM's --env-vars JSON for the functions `sam local invoke` can run: those not run by an
    exec wrapper (the Web Adapter's streaming API function is not, aws-sam-cli issue 6501)."""
    entries: dict[str, dict[str, str]] = {}
    for logical_id in template.function_ids():
        function = template.function(logical_id)
        if function.wrapper is None:
            entries[logical_id] = resolve_variables(function, resolver)
    return entries


def job_key_arn(template: Template, resolver: Resolver) -> str:
    """The ARN of the template's one KMS key (the job key) in the deployed stack."""
    keys = [n for n, r in template.resources.items() if r.get("Type") == "AWS::KMS::Key"]
    if len(keys) != 1:
        raise InvokeError(f"the template has {len(keys)} KMS keys; the job key is the one")
    try:
        return resolver.value({"Fn::GetAtt": [keys[0], "Arn"]})
    except LookupError:
        raise InvokeError(f"the stack has no {keys[0]} (the job key)") from None
