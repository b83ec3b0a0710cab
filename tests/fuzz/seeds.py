"""Seed requests: one known member of each class of issue 8 on each path it can take, sent
every run whatever hypothesis draws (the generated cases then probe around them).

Each seed is a name and a function from the fuzz's `Context` to a `Case`; `World.exchange`
checks every property on its answer, as for generated cases.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass

from fuzz.cases import Case, Context, Fault
from fuzz.hostile import GOOD_IMAGES, LYING_IMAGES, b64
from fuzz.wire import Delivery, RawRequest

PNG_URI = f"data:image/png;base64,{b64(GOOD_IMAGES[0])}"
JSON = (b"content-type", b"application/json")


@dataclass(frozen=True)
class Seed:
    name: str
    build: Callable[[Context], Case]


def _auth(ctx: Context, token: bytes | None = None) -> tuple[bytes, bytes]:
    return (b"authorization", b"Bearer " + (ctx.key.encode() if token is None else token))


def chat(
    route: str,
    model: str,
    text: str = "a red fox",
    *,
    token: bytes | None = None,
    stream: bool = False,
    extra: str = "",
    images: int = 0,
    fault: Fault | None = None,
    delivery: Delivery = "whole",
    headers: tuple[tuple[bytes, bytes], ...] = (),
    image: bytes | None = None,
) -> Callable[[Context], Case]:
    """A chat request; `extra` is raw JSON members added to the body (tokens JSON has not);
    `image`: the bytes of its images (a good PNG by default)."""

    def build(ctx: Context) -> Case:
        uri = PNG_URI if image is None else f"data:image/png;base64,{b64(image)}"
        content = [{"type": "text", "text": text}] + [
            {"type": "image_url", "image_url": {"url": uri}} for _ in range(images)
        ]
        body = json.dumps({"model": model, "messages": [{"role": "user", "content": content}]})
        body = body[:-1] + f', "stream": {json.dumps(stream)}' + (f", {extra}" if extra else "")
        request = RawRequest(
            "POST",
            f"{route}/v1/chat/completions",
            (_auth(ctx, token), JSON, *headers),
            (body + "}").encode(),
            delivery,
        )
        return Case(request, route.strip("/") or "modelscope", fault)

    return build


def generation(
    route: str,
    body: str,
    *,
    token: bytes | None = None,
    asynchronous: bool = False,
    fault: Fault | None = None,
    delivery: Delivery = "whole",
) -> Callable[[Context], Case]:
    def build(ctx: Context) -> Case:
        head = [_auth(ctx, token), JSON]
        if asynchronous:
            head.append((b"prefer", b"respond-async"))
        request = RawRequest(
            "POST", f"{route}/v1/images/generations", tuple(head), body.encode(), delivery
        )
        return Case(request, route.strip("/") or "modelscope", fault)

    return build


def edit(
    route: str,
    prompt: bytes,
    *,
    token: bytes | None = None,
    asynchronous: bool = False,
    image: bytes = GOOD_IMAGES[0],
) -> Callable[[Context], Case]:
    def build(ctx: Context) -> Case:
        field = b'--b\r\nContent-Disposition: form-data; name="%s"%s\r\n\r\n%s\r\n'
        body = (
            field % (b"prompt", b"", prompt)
            + field % (b"model", b"", b"Qwen/Qwen-Image-Edit")
            + field % (b"image", b'; filename="a.png"', image)
            + b"--b--\r\n"
        )
        head = [_auth(ctx, token), (b"content-type", b"multipart/form-data; boundary=b")]
        if asynchronous:
            head.append((b"prefer", b"respond-async"))
        return Case(
            RawRequest("POST", f"{route}/v1/images/edits", tuple(head), body),
            route.strip("/") or "modelscope",
        )

    return build


IMAGE = '{"prompt": "%s", "model": "Qwen/Qwen-Image"}'
NON_ASCII = b"sk-\xe9t\xe9-key"
CONTROL = b"sk-\x01\x02-key"
DEEP = "[" * 100_000 + "]" * 100_000
#: where the key starts 31 characters after the padding: across the cut at 500 characters
ACROSS_THE_CUT = 455

SEEDS: tuple[Seed, ...] = (
    # class 5: a key outside printable ASCII, on every path that forwards it
    Seed("non-ascii-key-chat", chat("/modelscope", "Qwen/Qwen-Image", token=NON_ASCII)),
    Seed("non-ascii-key-stream", chat("", "Qwen/Qwen-Image", token=NON_ASCII, stream=True)),
    Seed("non-ascii-key-pass-through", chat("", "Qwen/Qwen3-VL-30B-A3B-Instruct", token=NON_ASCII)),
    Seed("non-ascii-key-images", generation("/siliconflow", IMAGE % "a fox", token=NON_ASCII)),
    Seed("non-ascii-key-edit", edit("/openai", b"make it blue", token=NON_ASCII)),
    Seed("non-ascii-key-job", generation("", IMAGE % "a fox", token=NON_ASCII, asynchronous=True)),
    Seed("control-key-chat", chat("/siliconflow", "Qwen/Qwen-Image", token=CONTROL)),
    Seed("huge-key-chat", chat("/modelscope", "Qwen/Qwen-Image", token=b"k" * 6000)),
    # class 5: lone surrogates wherever a string goes on
    Seed("surrogate-prompt-chat", chat("", "Qwen/Qwen-Image", "a \ud800 fox")),
    Seed("surrogate-prompt-stream", chat("/openai", "Qwen/Qwen-Image", "\udfff", stream=True)),
    Seed("surrogate-prompt-images", generation("/siliconflow", IMAGE % "a \\ud800 fox")),
    Seed("surrogate-prompt-edit", edit("/modelscope", b"make it \xed\xa0\x80 blue")),
    Seed("surrogate-prompt-job", generation("", IMAGE % "a \\ud800 fox", asynchronous=True)),
    Seed(
        "surrogate-pass-through",
        chat("", "Qwen/Qwen3-VL-30B-A3B-Instruct", extra='"user": "\\ud800"'),
    ),
    Seed(
        "surrogate-negative-prompt",
        generation("/modelscope", '{"prompt": "fox", "negative_prompt": "\\udc00"}'),
    ),
    # class 5: numbers JSON does not have, in a body passed through as it came
    Seed("nan-pass-through", chat("", "Qwen/Qwen3-VL-30B-A3B-Instruct", extra='"top_p": NaN')),
    Seed(
        "infinity-pass-through-stream",
        chat("", "Qwen/Qwen3-VL-30B-A3B-Instruct", stream=True, extra='"temperature": -Infinity'),
    ),
    Seed("overflow-pass-through", chat("", "Qwen/Qwen3-VL-30B-A3B-Instruct", extra='"x": 1e999')),
    Seed("nan-option", generation("", '{"prompt": "fox", "seed": NaN, "guidance": Infinity}')),
    # class 5: nesting deeper than the parser's recursion
    Seed("deep-chat", chat("", "Qwen/Qwen-Image", extra=f'"metadata": {DEEP}')),
    Seed("deep-images", generation("/openai", '{"prompt": "fox", "size": ' + DEEP + "}")),
    Seed("deep-job", generation("", '{"prompt": "fox", "x": ' + DEEP + "}", asynchronous=True)),
    # class 5 and 9: a body that never arrives whole
    Seed(
        "abandoned-body",
        chat("", "Qwen/Qwen-Image", extra='"pad": "' + "p" * 4000 + '"', delivery="abandon"),
    ),
    Seed("stalled-body", generation("", IMAGE % "a fox", delivery="stall")),
    # class 8: a provider that echoes the key, across the cut of its message, on every path
    Seed(
        "echo-across-cut-siliconflow",
        generation(
            "/siliconflow", IMAGE % "a fox", fault=Fault("siliconflow", 400, ACROSS_THE_CUT)
        ),
    ),
    Seed(
        "echo-across-cut-modelscope",
        chat("/modelscope", "Qwen/Qwen-Image", fault=Fault("modelscope", 503, ACROSS_THE_CUT)),
    ),
    Seed(
        "echo-across-cut-openai",
        generation("/openai", IMAGE % "a fox", fault=Fault("openai", 401, ACROSS_THE_CUT)),
    ),
    # issue 24, class 1: a per-model quota 429 (a client's own token: passed on, not a 5xx)
    Seed(
        "per-model-quota",
        generation(
            "/modelscope",
            IMAGE % "a fox",
            fault=Fault("modelscope", 429, words="Request limit exceeded for model today."),
        ),
    ),
    # class 4: a client that waits 1 s, with an image to upload (refused before the upload)
    Seed(
        "short-read-timeout",
        chat(
            "/modelscope",
            "Qwen/Qwen-Image-Edit",
            images=1,
            headers=((b"x-stainless-read-timeout", b"1"),),
        ),
    ),
    # class 5: images that are not what they say, as a data URI and as an upload
    *(
        Seed(f"lying-image-chat-{i}", chat("", "Qwen/Qwen-Image-Edit", images=1, image=lying))
        for i, lying in enumerate(LYING_IMAGES)
    ),
    *(
        Seed(f"lying-image-edit-{i}", edit("/openai", b"make it blue", image=lying))
        for i, lying in enumerate(LYING_IMAGES)
    ),
    # class 6: a task refused for its content (a 400, not a 5xx a client retries)
    Seed(
        "moderated-task",
        chat(
            "/modelscope",
            "Qwen/Qwen-Image",
            fault=Fault("modelscope", 200, task_failure=True, words="Content Moderated"),
        ),
    ),
    Seed(
        "echo-in-task-failure",
        chat(
            "/modelscope",
            "Qwen/Qwen-Image",
            stream=True,
            fault=Fault("modelscope", 200, 10, task_failure=True),
        ),
    ),
)
