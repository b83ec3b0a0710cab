"""`StateMachineService`: what the API's services of a state machine share (durable jobs,
`service.Jobs`; batches, `imagegw.frontends.batches.Batches`): the settings naming the
machine's ARN, its runner made on first use, and the sealer of provider keys."""

from __future__ import annotations

from typing import ClassVar

from imagegw.errors import NotFoundError
from imagegw.infra.config import Settings
from imagegw.infra.executions import JobRunner, StepFunctionsRunner
from imagegw.infra.sealer import KeySealer


class StateMachineService:
    """A service over one state machine: Step Functions at the ARN the setting `ARN_SETTING`
    names, unless a runner is given; without either, `runner` is the 404 `DISABLED_CODE`."""

    #: the setting holding the machine's ARN, its environment name, and what it runs
    ARN_SETTING: ClassVar[str]
    DISABLED: ClassVar[str]
    DISABLED_CODE: ClassVar[str]

    def __init__(
        self,
        settings: Settings,
        *,
        runner: JobRunner | None = None,
        sealer: KeySealer | None = None,
    ) -> None:
        self.settings = settings
        self._runner = runner
        self.sealer = sealer or KeySealer(settings.job_key_id, settings.aws_region)

    @property
    def arn(self) -> str | None:
        value: str | None = getattr(self.settings, self.ARN_SETTING)
        return value

    @property
    def enabled(self) -> bool:
        return self._runner is not None or bool(self.arn)

    @property
    def runner(self) -> JobRunner:
        if self._runner is None:
            arn = self.arn
            if not arn:
                raise NotFoundError(
                    f"{self.DISABLED} are not enabled on this gateway "
                    f"(no {self.ARN_SETTING.upper()}).",
                    code=self.DISABLED_CODE,
                )
            self._runner = StepFunctionsRunner(arn, self.settings.aws_region)
        return self._runner
