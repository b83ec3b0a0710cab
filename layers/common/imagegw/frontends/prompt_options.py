"""Options written in the chat message: `--ar 16:9 --seed 42 --no blurry`.

Chat clients such as Cherry Studio cannot set parameters per message, so the last user
message may carry them after the prompt, Midjourney style. They are taken out of the prompt
and override the request body's fields of the same option (the message is the latest word).

| in the message | option | value |
| --- | --- | --- |
| `--ar 16:9`, `--aspect 16:9` | `aspect_ratio` | W:H |
| `--size 1024x768` | `size` | WxH or an OpenAI size name |
| `--w 1024 --h 768`, `--width`, `--height` | `width`, `height` | whole numbers |
| `--seed 42` | `seed` | whole number |
| `--steps 30` | `steps` | whole number |
| `--n 2`, `--images 2` | `n` | whole number |
| `--guidance 4`, `--cfg 4` | `guidance` | number |
| `--no blurry, text` | `negative_prompt` | the words up to the next option |
| `--negative blurry` | `negative_prompt` | the same |
| `--quality high` | `quality` | a word |

An option is `--name` at the start of the text or after a space; a name not in the table, or a
value of the wrong form, is a 400 naming it (ranges are the model's, checked by the provider).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Final

from imagegw.errors import InvalidRequestError
from imagegw.providers.sizes import OPENAI_SIZES

_INT: Final = r"-?\d{1,12}"
_NUMBER: Final = r"-?\d{1,6}(?:\.\d{1,6})?"
#: option name -> (field, the value's pattern, an example for the error)
OPTIONS: Final[dict[str, tuple[str, str, str]]] = {
    "ar": ("aspect_ratio", r"\d{1,5}(?:\.\d{1,4})?:\d{1,5}(?:\.\d{1,4})?", "16:9"),
    "aspect": ("aspect_ratio", r"\d{1,5}(?:\.\d{1,4})?:\d{1,5}(?:\.\d{1,4})?", "16:9"),
    "size": ("size", r"\d{1,5}[xX×*]\d{1,5}|auto", "1024x768"),
    "w": ("width", _INT, "1024"),
    "width": ("width", _INT, "1024"),
    "h": ("height", _INT, "768"),
    "height": ("height", _INT, "768"),
    "seed": ("seed", _INT, "42"),
    "steps": ("steps", _INT, "30"),
    "n": ("n", _INT, "2"),
    "images": ("n", _INT, "2"),
    "guidance": ("guidance", _NUMBER, "4"),
    "cfg": ("guidance", _NUMBER, "4"),
    "no": ("negative_prompt", r".+", "blurry, text"),
    "negative": ("negative_prompt", r".+", "blurry, text"),
    "quality": ("quality", r"[A-Za-z]{1,16}", "high"),
}
#: the body fields an option of the message replaces (its aliases and size fields)
REPLACES: Final[dict[str, frozenset[str]]] = {
    "aspect_ratio": frozenset(
        {"aspect_ratio", "aspectRatio", "size", "image_size", "width", "height"}
    ),
    "size": frozenset({"size", "image_size", "width", "height", "aspect_ratio", "aspectRatio"}),
    "width": frozenset({"size", "image_size", "width", "aspect_ratio", "aspectRatio"}),
    "height": frozenset({"size", "image_size", "height", "aspect_ratio", "aspectRatio"}),
    "steps": frozenset({"steps", "num_inference_steps"}),
    "guidance": frozenset({"guidance", "guidance_scale", "cfg", "true_cfg_scale"}),
    "n": frozenset({"n", "batch_size"}),
}
#: `--name` at the start or after whitespace, then its value: one word, except for the
#: negative prompt, which runs to the next option or the end of the line
_OPTION: Final = re.compile(r"(?:^|(?<=\s))--([A-Za-z][\w-]*)")
_WORD: Final = re.compile(r"[ \t]+(\S+)")
_WORDS: Final = re.compile(r"[ \t]+(.+?)(?=[ \t]+--[A-Za-z]|[ \t]*$)", re.M)
#: options whose value is the rest of the line (up to the next option)
_RUNS_ON: Final = frozenset({"no", "negative"})


@dataclass(frozen=True)
class PromptOptions:
    """A message's prompt without its options, and the options as request fields."""

    prompt: str
    fields: dict[str, Any] = field(default_factory=dict)


def _value(name: str, raw: str) -> str:
    target, pattern, example = OPTIONS[name]
    value = " ".join(raw.split())
    if target == "size" and value.lower() in OPENAI_SIZES | {"auto"}:
        return value.lower()
    if not re.fullmatch(pattern, value):
        got = f"got {value!r}" if value else "it has no value"
        raise InvalidRequestError(
            f"Option --{name} in the message needs a value like --{name} {example}; {got}.",
            param="messages",
            code="invalid_inline_option",
        )
    return value


def parse(text: str) -> PromptOptions:
    """The options written in `text` (see the module's table), and the text without them."""
    fields: dict[str, Any] = {}
    kept: list[str] = []
    at = 0
    while (found := _OPTION.search(text, at)) is not None:
        name = found.group(1).lower()
        if name not in OPTIONS:
            known = " ".join(f"--{n}" for n in OPTIONS)
            raise InvalidRequestError(
                f"Unknown option --{found.group(1)} in the message; known options: {known}.",
                param="messages",
                code="invalid_inline_option",
            )
        kept.append(text[at : found.start()])
        value = (_WORDS if name in _RUNS_ON else _WORD).match(text, found.end())
        fields[OPTIONS[name][0]] = _value(name, value.group(1) if value else "")
        at = value.end() if value else found.end()
    if not fields:
        return PromptOptions(text)
    kept.append(text[at:])
    prompt = "\n".join(" ".join(line.split()) for line in "".join(kept).splitlines()).strip()
    if not prompt:
        raise InvalidRequestError(
            "The last user message has only options; write the prompt before them.",
            param="messages",
        )
    return PromptOptions(prompt, fields)


def merge(body: dict[str, Any], written: dict[str, Any]) -> dict[str, Any]:
    """The body's fields with the message's options over them: an option of the message
    replaces every body field that sets the same thing (`--steps` replaces
    `num_inference_steps`, `--ar` replaces `width`/`height`...)."""
    if not written:
        return dict(body)
    replaced = set().union(*(REPLACES.get(name, frozenset({name})) for name in written))
    return {**{k: v for k, v in body.items() if k not in replaced}, **written}
