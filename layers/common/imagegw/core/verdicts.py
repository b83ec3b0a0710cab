"""What a task the provider reports failed means for the client: its own request refused (the
content, or a parameter: a 400 no client retries, as OpenAI answers its content-policy
refusals), or the provider's failure (a 502).

Clients such as Cherry Studio (the Vercel AI SDK) retry every 5xx whatever `x-should-retry`
says, so a refusal answered as a 5xx would be submitted, and paid, again and again. Providers
word refusals their own way (provider-wire.md: "Content Moderated", "Request Moderated",
`OutputImageSensitiveContentDetected`, ...): the words below are matched in the reason.
"""

from __future__ import annotations

import re
from typing import Final

from imagegw.errors import GatewayError, InvalidRequestError, ProviderError

#: a reason that says the content was refused (the prompt, an input or the output image)
_CONTENT: Final = re.compile(
    r"moderat|sensitive|inappropriate|content[ _-]?(policy|filter|safety)|safety|nsfw|"
    r"prohibited|violat|blocked|审核|违规|敏感|不当",
    re.IGNORECASE,
)
#: a reason that says a parameter of the request was refused
_PARAMETER: Final = re.compile(
    r"invalid[ _-]?(parameter|param|argument|size|value|prompt|input)|"
    r"parameter[ _-]?(error|invalid)|参数",
    re.IGNORECASE,
)


def failed_task(title: str, task_id: str | None, reason: str) -> GatewayError:
    """The error of a task the provider reports failed, with its reason (redacted when
    rendered): a 400 `content_policy_violation` or `invalid_parameter` when the reason says
    the request was refused, else a 502 `generation_failed`."""
    which = f" task {task_id}" if task_id else ""
    if _CONTENT.search(reason):
        return InvalidRequestError(
            f"{title} refused the request for its content{which}: {reason}",
            code="content_policy_violation",
        )
    if _PARAMETER.search(reason):
        return InvalidRequestError(
            f"{title} refused a parameter of the request{which}: {reason}",
            code="invalid_parameter",
        )
    return ProviderError(f"{title}{which} failed: {reason}", code="generation_failed")
