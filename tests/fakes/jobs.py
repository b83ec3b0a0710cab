"""A `JobRunner` in memory: executions recorded, never run (for tests of the API side)."""

from __future__ import annotations

import time

from imagegw.infra.executions import Execution


class MemoryRunner:
    """Executions by name, as Step Functions would describe them; tests set their outcome."""

    def __init__(self) -> None:
        self.executions: dict[str, Execution] = {}
        self.started: list[str] = []
        self.in_submit = True

    def start(self, name: str, payload: str) -> bool:
        if name in self.executions:
            return False
        self.started.append(name)
        self.executions[name] = Execution(name, "RUNNING", time.time(), input=payload)
        return True

    def describe(self, name: str) -> Execution | None:
        return self.executions.get(name)

    def submitted(self, name: str) -> bool:
        return not self.in_submit
