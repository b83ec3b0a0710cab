"""Refusals as data: what was refused, for each front end to word its own way.

A provider checks how many input images a model takes (`check_image_count`); what the client
should do about it depends on where it asked (chat: attach an image to the message; the Images
API: call the other endpoint). The provider raises `ImageCountError` carrying an `ImageCount`;
the planner (`imagegw.core.plan`) hands it to the front end's `Wording`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

from imagegw.errors import InvalidRequestError


class Problem(StrEnum):
    """Why the count of input images is refused (also the error's `code`)."""

    UNEXPECTED = "unexpected_image"
    REQUIRED = "image_required"
    TOO_MANY = "too_many_images"


@dataclass(frozen=True)
class ImageCount:
    """A model was given `count` input images; it takes `fewest` to `most` (None: no limit)."""

    model: str
    count: int
    fewest: int
    most: int | None

    @property
    def problem(self) -> Problem | None:
        if self.most == 0 and self.count:
            return Problem.UNEXPECTED
        if self.count < self.fewest:
            return Problem.REQUIRED
        if self.most is not None and self.count > self.most:
            return Problem.TOO_MANY
        return None

    @property
    def takes(self) -> str:
        """What the model takes, in words ("1 to 3 input images")."""
        if self.fewest == self.most:
            return f"{self.most} input image"
        return f"{self.fewest} to {self.most} input images"


class ImageCountError(InvalidRequestError):
    """A refused input-image count; `refusal` says what, the message is chat's wording."""

    def __init__(self, refusal: ImageCount) -> None:
        worded = chat_words(refusal)
        super().__init__(worded.message, param=worded.param, code=worded.code)
        self.refusal = refusal


#: how a front end words a refused image count
Wording = Callable[[ImageCount], InvalidRequestError]


def chat_words(refusal: ImageCount) -> InvalidRequestError:
    """Chat's words: the images are in the messages."""
    model, problem = refusal.model, refusal.problem
    if problem is Problem.UNEXPECTED:
        text = f"{model} makes images from text and takes no input image; use an edit model."
    elif problem is Problem.REQUIRED:
        text = f"{model} edits an image: attach one, or send it after a generated image."
    else:
        text = f"{model} takes {refusal.takes}; the message has {refusal.count}."
    return InvalidRequestError(text, param="messages", code=str(problem))


def images_api_words(edit: bool) -> Wording:
    """The Images API's words: the endpoint says whether images are sent
    (`/v1/images/edits`) or not (`/v1/images/generations`)."""

    def words(refusal: ImageCount) -> InvalidRequestError:
        model, problem = refusal.model, refusal.problem
        if problem is Problem.REQUIRED and not edit:
            text = f"{model} edits images: send the picture to POST /v1/images/edits."
            return InvalidRequestError(text, param="model", code=str(problem))
        if problem is Problem.UNEXPECTED and edit:
            text = (
                f"{model} makes images from text and takes no input image: use an edit model, "
                "or POST /v1/images/generations."
            )
            return InvalidRequestError(text, param="model", code=str(problem))
        if problem is Problem.TOO_MANY:
            text = f"{model} takes {refusal.takes}; the request has {refusal.count}."
            return InvalidRequestError(text, param="image", code=str(problem))
        chatty = chat_words(refusal)
        return InvalidRequestError(chatty.message, param="image", code=chatty.code)

    return words
