"""Durable jobs in memory for the fuzz: a `JobRunner` whose executions take the next outcome
in turn (queued, running, succeeded with a stored image or a provider link, failed, timed out,
aborted), and KMS's Encrypt for `KeySealer`."""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from typing import Any

from fakes.jobs import MemoryRunner
from imagegw.errors import ProviderError
from imagegw.infra.executions import Execution
from imagegw.runners.stepfunctions.schema import ImageRef, JobOutput


class FakeKms:
    """KMS's Encrypt for `KeySealer`: an opaque blob bound to the job (never the key)."""

    def encrypt(self, KeyId: str, Plaintext: bytes, EncryptionContext: dict[str, str]) -> Any:
        digest = hashlib.sha256(Plaintext + json.dumps(EncryptionContext).encode()).digest()
        return {"CiphertextBlob": b"sealed:" + digest}


class FuzzRunner(MemoryRunner):
    """Executions in memory, each given the next outcome in turn when it starts."""

    OUTCOMES = ("queued", "running", "stored", "provider-link", "failed", "timed-out", "aborted")

    def __init__(self, stored_name: str, provider_url: str) -> None:
        super().__init__()
        self.stored_name = stored_name
        self.provider_url = provider_url
        self.outcomes: dict[str, str] = {}

    def start(self, name: str, payload: str) -> bool:
        started = super().start(name, payload)
        if started:
            self.outcomes[name] = self.OUTCOMES[len(self.started) % len(self.OUTCOMES)]
        return started

    def describe(self, name: str) -> Execution | None:
        execution = super().describe(name)
        if execution is None:
            return None
        outcome = self.outcomes.get(name, "running")
        if outcome == "stored":
            output = JobOutput(images=(ImageRef(name=self.stored_name),), task_ids=("t1",))
            return replace(execution, status="SUCCEEDED", output=output.model_dump_json())
        if outcome == "provider-link":
            output = JobOutput(images=(ImageRef(url=self.provider_url),), failures=("one failed",))
            return replace(execution, status="SUCCEEDED", output=output.model_dump_json())
        if outcome == "failed":
            body = ProviderError("ModelScope task t1 failed: nope", code="generation_failed").body()
            return replace(
                execution, status="FAILED", error="ProviderError", cause=json.dumps(body)
            )
        if outcome == "timed-out":
            return replace(execution, status="TIMED_OUT")
        if outcome == "aborted":
            return replace(execution, status="ABORTED")
        return execution

    def submitted(self, name: str) -> bool:
        return self.outcomes.get(name) != "queued"
