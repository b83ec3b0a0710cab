"""`make events`: the provider key in the job events (`events/job-*.json` with a `key`), sealed
for each event's job id with a KMS key, so the Submit and Poll functions can open it; and in a
batch item's Submit event (`events/batch-submit.json`), sealed for its batch id, as
`POST /v1/batches` seals it.

- By default the key is the sample token (`standins.SAMPLE_TOKEN`, which the tests' fake
  providers accept) sealed with the stand-ins' job key, whose id and material are fixed: the
  files in events/ then run as they are with `make invoke` on any machine. An event whose key
  already opens to the token is left as it is (no churn in git).
- `PROVIDER_KEY` (your own token) or `--stack` (the deployed stack's JobKey, with your
  credentials) writes sealed copies elsewhere (`.aws-sam/events/<stack or local>/`), never into
  events/: a key sealed with the stand-ins' public key material is as good as plain text.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from imagegw.errors import GatewayError
from imagegw.infra.sealer import KeySealer
from lambdahost.build import InvokeError


def sealed_for(event: Any) -> str | None:
    """The id an event's provider key is sealed for: its job's, or a batch item's batch's
    (an item's job seals its own copy); None for an event that carries no key."""
    if not isinstance(event, dict) or "key" not in event:
        return None
    for owner in ("job", "batch"):
        found = (event.get(owner) or {}).get("id")
        if found:
            return str(found)
    return None


def sealed_events(folder: Path) -> Iterator[tuple[Path, dict[str, Any]]]:
    """The events of `folder` that carry a sealed provider key (a job's or a batch's)."""
    for path in sorted(folder.glob("*.json")):
        event = json.loads(path.read_text())
        if sealed_for(event):
            yield path, event


def _opens_to(sealer: KeySealer, event: dict[str, Any], token: SecretStr) -> bool:
    try:
        opened = sealer.open(str(event["key"]), str(sealed_for(event)))
    except GatewayError:
        return False
    return opened.get_secret_value() == token.get_secret_value()


def seal(
    source: Path, out: Path, sealer: KeySealer, token: SecretStr, keep_current: bool
) -> list[Path]:
    """Write each of `source`'s job events to `out` with `token` sealed for its job; with
    `keep_current`, an event whose key already opens to `token` is not written again. The
    files written."""
    written: list[Path] = []
    for path, event in sealed_events(source):
        if keep_current and _opens_to(sealer, event, token):
            continue
        try:
            event["key"] = sealer.seal(token, str(sealed_for(event)))
        except GatewayError as exc:
            raise InvokeError(f"{path.name}: {exc.message}") from None
        out.mkdir(parents=True, exist_ok=True)
        target = out / path.name
        target.write_text(json.dumps(event, indent=2) + "\n")
        written.append(target)
    return written
