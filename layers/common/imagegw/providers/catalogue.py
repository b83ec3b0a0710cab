"""How a model id outside a provider's image catalogue is treated, and a provider's own "model
not found" told with the ids the client probably meant.

The rule (docs/providers.md "Model classes"): an id in the catalogue is what the catalogue says;
any other id whose words name an image model (`base.classify`: image, flux, kolors, ...) is sent
as an image model, and on the Images API any other id as an image model of the endpoint's kind;
on chat completions the rest is passed on to the provider's chat API as a chat model. Answers to
ids outside the catalogue carry the `x-model-treatment` header saying which it was
(`treatment`), and when the provider answers that no such model exists (a 404, or a 400 whose
message says so: ModelScope's "Invalid model id", SiliconFlow's code 20012), the client gets a
404 `model_not_found` naming the closest catalogue ids (`with_suggestions`), so a typo such as
`Qwen/Qwen-Imag` is told as one.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Final

from imagegw.errors import GatewayError, NotFoundError
from imagegw.providers.base import ModelInfo, ModelKind

#: the response header naming how an id outside the catalogue was treated
TREATMENT_HEADER: Final = "x-model-treatment"
AS_CHAT: Final = "not in the image catalogue: passed on as a chat model"
AS_IMAGE: Final = "not in the image catalogue: sent as an image model"
#: a provider's message that says the model does not exist
_NO_SUCH_MODEL: Final = re.compile(
    r"(model\b.*\b(does not exist|doesn't exist|not exist|not found|unknown|invalid))"
    r"|((invalid|unknown) model)|(no such model)",
    re.IGNORECASE,
)


def in_catalogue(catalog: Sequence[ModelInfo], model: str) -> bool:
    return any(info.id.lower() == model.lower() for info in catalog)


def treatment(catalog: Sequence[ModelInfo], model: str, kind: ModelKind) -> str | None:
    """What the `x-model-treatment` header says of `model` treated as `kind`; None for an id
    of the catalogue."""
    if in_catalogue(catalog, model):
        return None
    return AS_CHAT if kind is ModelKind.CHAT else AS_IMAGE


def closest(model: str, known: Sequence[str], count: int = 3) -> list[str]:
    """The known ids nearest to `model` (difflib, case folded), best first."""
    import difflib  # (only a provider's "no such model" needs it: not before readiness)

    by_folded = {k.lower(): k for k in known if k.lower() != model.lower()}
    found = difflib.get_close_matches(model.lower(), list(by_folded), n=count, cutoff=0.6)
    return [by_folded[f] for f in found]


def says_no_such_model(status: int, message: str) -> bool:
    """Whether a provider's error answer means the model does not exist."""
    return status == 404 or (status == 400 and _NO_SUCH_MODEL.search(message) is not None)


def with_suggestions(message: str, model: str, known: Sequence[str]) -> NotFoundError:
    """A 404 `model_not_found` with the provider's `message` and the closest known ids."""
    near = closest(model, known)
    told = f"{message.rstrip()} The closest known ids: {', '.join(near)}." if near else message
    return NotFoundError(told, param="model", code="model_not_found")


def suggest(error: GatewayError, model: str, known: Sequence[str]) -> GatewayError:
    """`error`, or for a provider's "model not found" already told as a 404
    (`code model_not_found`), the same with the closest known ids."""
    if error.code != "model_not_found" or "closest known ids" in error.message:
        return error
    return with_suggestions(error.message, model, known)
