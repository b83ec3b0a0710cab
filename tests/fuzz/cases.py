"""Whole hostile requests, one strategy per endpoint family, built from `fuzz.hostile`.

A case starts valid (the fuzz key, a known route and model, a prompt, the images the model
takes, options every provider accepts) and then breaks what it draws: up to three *aspects*
(the key, the route, the model, the prompt, the images, the options, the JSON or multipart
encoding, the headers, ...). So about a third of the cases run the whole path to a fake
provider and back (streamed or not, stored links, jobs), the rest probe one or two things at a
time, and a failing example shrinks to the aspects that matter (hypothesis prints them).

A case may also carry a `Fault`: the fake provider answers the next call with an error (a
provider's genuine failure, so a 5xx is then allowed), its message maybe echoing the key
around the point where messages are cut, as a provider that echoes what it was sent would.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hypothesis import strategies as st

from fuzz.hostile import (
    GOOD_IMAGES,
    Raw,
    UrlFactory,
    b64,
    bad_authorization,
    body_mutations,
    data_uri,
    header_value,
    idempotency_key,
    image_bytes,
    json_content_type,
    nested,
    prefer,
    stainless_timeout,
    to_json,
    weird_text,
    weird_value,
)
from fuzz.wire import Delivery, RawRequest

#: the provider a route prefix selects ("" is the default provider, ModelScope)
ROUTES: dict[str, str] = {
    "": "modelscope",
    "/modelscope": "modelscope",
    "/siliconflow": "siliconflow",
    "/openai": "openai",
}
#: prefixes that select no provider, or a known one in an odd spelling
ODD_ROUTES: tuple[str, ...] = ("/nope", "/%6fpenai", "/v1", "/MODELSCOPE", "/SiliconFlow", "/%20")
MODELS: dict[str, dict[str, tuple[str, ...]]] = {
    "modelscope": {
        "image": ("Qwen/Qwen-Image", "Tongyi-MAI/Z-Image-Turbo", "MAILAND/majicflus_v1"),
        "edit": ("Qwen/Qwen-Image-Edit", "Qwen/Qwen-Image-Edit-2509", "Qwen/Qwen-Image-Edit-2511"),
        "chat": ("Qwen/Qwen3-VL-30B-A3B-Instruct",),
    },
    "siliconflow": {
        "image": ("Qwen/Qwen-Image", "Kwai-Kolors/Kolors"),
        "edit": ("Qwen/Qwen-Image-Edit", "Qwen/Qwen-Image-Edit-2509"),
        "chat": ("deepseek-ai/DeepSeek-V3",),
    },
    "openai": {
        "image": ("Qwen/Qwen-Image", "gpt-image-1", "dall-e-3", "dall-e-2"),
        "edit": ("Qwen/Qwen-Image-Edit", "gpt-image-1"),
        "chat": ("gpt-4o-mini",),
    },
}
#: options every provider and model takes with these values
VALID_OPTIONS: dict[str, st.SearchStrategy[Any]] = {
    "n": st.integers(1, 2),
    "size": st.just("512x512"),
    "seed": st.integers(0, 2**31 - 1),
    "steps": st.integers(1, 50),
    "negative_prompt": st.sampled_from(("blurry", "text, watermark")),
    "guidance": st.sampled_from((1.5, 4.0, 7.5)),
}
#: options and aliases, for hostile values
OPTION_NAMES = (
    *VALID_OPTIONS,
    "image_size",
    "num_inference_steps",
    "guidance_scale",
    "cfg",
    "loras",
    "batch_size",
    "width",
    "height",
    "true_cfg_scale",
    "quality",
    "style",
    "background",
    "output_format",
    "moderation",
    "response_format",
    "user",
)
#: body fields where a careless client puts its key (it must never come back or be logged)
SECRET_FIELDS = ("api_key", "apiKey", "token", "authorization", "password")
PROMPTS = ("a red fox", "a cat in the rain", "make it blue")

#: what a case may break; issue 8's classes (lone surrogates, NaN, deep nesting, keys outside
#: ASCII, image URLs anywhere, many images) twice, so each gets about a tenth of the cases
CHAT_ASPECTS = (
    "auth",
    "auth",
    "route",
    "model",
    "prompt",
    "prompt",
    "messages",
    "images",
    "images",
    "many-images",
    "options",
    "stream",
    "encoding",
    "encoding",
    "headers",
    "secret",
    "unforwardable",
    "unforwardable",
    "oversize",
)
GENERATION_ASPECTS = (
    "auth",
    "auth",
    "route",
    "model",
    "prompt",
    "prompt",
    "images",
    "options",
    "stream",
    "encoding",
    "encoding",
    "headers",
    "secret",
    "response-format",
    "unforwardable",
    "unforwardable",
    "oversize",
)
EDIT_ASPECTS = (
    "auth",
    "auth",
    "route",
    "model",
    "prompt",
    "prompt",
    "images",
    "images",
    "many-images",
    "files",
    "mask",
    "options",
    "multipart",
    "multipart",
    "headers",
    "secret",
    "response-format",
)
#: async submissions: their own headers, and prompts again (a job's input is serialised)
ASYNC_ASPECTS = ("prefer", "idempotency", "idempotency", "prompt", "prompt")


@dataclass(frozen=True)
class Fault:
    """What a fake provider answers the next call with: a status and a body, the body's
    message echoing the key at `echo_at` characters in (None: no echo)."""

    provider: str
    status: int
    echo_at: int | None = None
    #: ModelScope only: the task fails (FAILED with this reason) instead of the submit
    task_failure: bool = False
    #: the provider's own words, when not the fuzz's (a moderated task, a per-model quota)
    words: str | None = None

    def message(self, key: str) -> str:
        if self.words is not None:
            return self.words
        if self.echo_at is None:
            return f"fuzz fault {self.status}"
        return "x" * self.echo_at + f" received Authorization: Bearer {key} " + "y" * 40


@dataclass(frozen=True)
class Case:
    request: RawRequest
    #: the provider the route selects (None: none, e.g. an unknown prefix)
    provider: str | None = None
    fault: Fault | None = None
    #: the style of the OpenAI-compatible fake for this case
    openai_style: str = "qwen"
    #: what else the test does with the case (jobs: how to follow the submission up)
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, repr=False)
class Context:
    """What the strategies need to know of the world under test."""

    key: str
    urls: UrlFactory
    max_image_bytes: int
    max_body_bytes: int
    #: the name of an image stored in the bucket (its /v1/files link exists)
    stored_name: str

    def __repr__(self) -> str:
        return "Context(...)"


# ---------------------------------------------------------------------------- shared parts


def breaks(draw: st.DrawFn, aspects: tuple[str, ...]) -> frozenset[str]:
    """The aspects this case breaks: none (about a third of cases), one, or (a quarter of the
    rest) two or three. Shrinks towards none."""
    first = draw(st.sampled_from(("none",) * (len(aspects) // 2) + aspects), label="breaks")
    if first == "none":
        return frozenset()
    more = (
        draw(st.sets(st.sampled_from(aspects), max_size=2))
        if draw(st.integers(0, 3)) == 0
        else set()
    )
    return frozenset({first, *more})


def auth_header(draw: st.DrawFn, ctx: Context, broken: bool) -> list[tuple[bytes, bytes]]:
    value = draw(bad_authorization(ctx.key)) if broken else f"Bearer {ctx.key}".encode()
    return [] if value is None else [(b"authorization", value)]


def odd_headers(draw: st.DrawFn) -> list[tuple[bytes, bytes]]:
    """Headers the gateway reads besides the key, with odd values."""
    return draw(
        st.lists(
            st.one_of(
                st.tuples(
                    st.sampled_from((b"x-stainless-timeout", b"x-stainless-read-timeout")),
                    stainless_timeout(),
                ),
                st.tuples(st.just(b"x-forwarded-proto"), header_value()),
                st.tuples(st.just(b"host"), header_value()),
                st.tuples(st.just(b"x-amzn-request-context"), _request_context()),
                st.tuples(st.just(b"accept"), st.just(b"text/event-stream")),
                st.tuples(st.just(b"accept-encoding"), st.just(b"gzip, br, zstd")),
                st.tuples(st.just(b"origin"), st.just(b"https://evil.example")),
                st.tuples(st.just(b"x-odd"), header_value()),
            ),
            min_size=1,
            max_size=3,
        )
    )


def _request_context() -> st.SearchStrategy[bytes]:
    return st.one_of(
        st.just(b'{"stage":"Prod","domainName":"x.execute-api.us-east-1.amazonaws.com"}'),
        st.just(b"[" * 1200 + b"]" * 1200),
        st.just(b'{"stage":' + b"[" * 3000),
        st.just(b'{"stage":"\\ud800","domainName":1}'),
        st.just(b"NaN"),
        header_value(),
    )


def json_headers(
    draw: st.DrawFn, ctx: Context, broke: frozenset[str]
) -> tuple[tuple[bytes, bytes], ...]:
    out = auth_header(draw, ctx, "auth" in broke)
    kind = draw(json_content_type()) if "headers" in broke else b"application/json"
    if kind is not None:
        out.append((b"content-type", kind))
    if "headers" in broke:
        out += odd_headers(draw)
    return tuple(out)


def encode(draw: st.DrawFn, body: dict[str, Any], broke: frozenset[str], ctx: Context) -> bytes:
    """The body as sent: JSON text, broken after it was written when "encoding" is broken,
    padded past the body limit when "oversize" is."""
    if "encoding" in broke:
        _, mutation = draw(body_mutations().filter(lambda named: named[0] != "none"))
        data = mutation(to_json(body))
    else:
        data = to_json(body).encode("utf-8", "surrogatepass")
    if "oversize" in broke:
        data += b" " * (ctx.max_body_bytes + 1 - len(data))  # still valid JSON, one byte over
    return data


def good_image_uri(draw: st.DrawFn) -> str:
    return f"data:image/png;base64,{b64(draw(st.sampled_from(GOOD_IMAGES)))}"


def bad_image_refs(draw: st.DrawFn, ctx: Context) -> list[str]:
    """Image references as an attacker sends them: bad data URIs, URLs at any address."""
    ref = st.one_of(data_uri(ctx.max_image_bytes), ctx.urls.strategy())
    return [draw(ref) for _ in range(draw(st.integers(0, 4)))]


def many_tiny(draw: st.DrawFn) -> list[str]:
    """Many tiny valid images (cheap to send, costly if each is stored)."""
    return [f"data:image/gif;base64,{b64(GOOD_IMAGES[3])}"] * draw(st.integers(4, 40))


def options(draw: st.DrawFn, broke: frozenset[str]) -> dict[str, Any]:
    """Generation options: valid for every provider unless "options" is broken (then hostile
    values, aliases and unknown names too)."""
    names = draw(st.lists(st.sampled_from(tuple(VALID_OPTIONS)), max_size=3, unique=True))
    out = {name: draw(VALID_OPTIONS[name]) for name in names}
    if "options" in broke:
        hostile = draw(
            st.dictionaries(
                st.one_of(st.sampled_from(OPTION_NAMES), st.text(max_size=12)),
                weird_value(),
                min_size=1,
                max_size=4,
            )
        )
        out.update(hostile)
    if "secret" in broke:
        out[draw(st.sampled_from(SECRET_FIELDS))] = ctx_key_marker
    return out


#: replaced by the key when a body is written (so hypothesis prints no key in examples)
ctx_key_marker = "\x00FUZZ-KEY\x00"


def with_key(value: Any, key: str) -> Any:
    if value == ctx_key_marker:
        return key
    if isinstance(value, dict):
        return {k: with_key(v, key) for k, v in value.items()}
    if isinstance(value, list):
        return [with_key(v, key) for v in value]
    return value


def fault(draw: st.DrawFn, provider: str | None) -> Fault | None:
    """In a case out of five, the provider fails, its message maybe echoing the key around the
    cut at 500 characters."""
    if provider is None or draw(st.integers(0, 4), label="fault") != 0:
        return None
    status = draw(st.sampled_from((400, 401, 403, 404, 422, 429, 500, 502, 503)))
    # the key starts 31 characters after `echo_at`: 437-468 puts it across the cut at 500
    echo = draw(st.one_of(st.none(), st.integers(430, 475), st.integers(430, 475), st.just(0)))
    task_failure = provider == "modelscope" and draw(st.booleans())
    return Fault(provider, status, echo, task_failure)


def route(draw: st.DrawFn, broke: frozenset[str]) -> tuple[str, str | None]:
    if "route" in broke:
        prefix = draw(st.sampled_from(ODD_ROUTES))
        known = {"/MODELSCOPE": "modelscope", "/SiliconFlow": "siliconflow"}
        return prefix, known.get(prefix)
    prefix = draw(st.sampled_from(tuple(ROUTES)))
    return prefix, ROUTES[prefix]


def model_for(draw: st.DrawFn, provider: str | None, kind: str, broke: frozenset[str]) -> Any:
    if "model" in broke:
        return draw(
            st.one_of(weird_value(), st.sampled_from(("", "x" * 300, "image", "Edit", "a/b")))
        )
    return draw(st.sampled_from(MODELS[provider or "modelscope"][kind]))


def openai_style(model: Any) -> str:
    """OpenAI's own models are served by the fake in OpenAI's style, others in seed 003's."""
    if isinstance(model, str) and model.startswith(("gpt-image", "dall-e")):
        return "openai"
    return "qwen"


SURROGATE_PROMPTS = ("\ud800", "a\udfffb", "fox \ud83d", "\udc00\udc00", "a red fox\ud800")


def prompt(draw: st.DrawFn, broke: frozenset[str]) -> Any:
    """A prompt; when broken, half the time one with a lone surrogate (JSON lets a client
    send one; nothing downstream can encode it)."""
    if "prompt" not in broke:
        return draw(st.sampled_from(PROMPTS))
    variant = draw(st.integers(0, 7))
    if variant < 4:
        return draw(st.sampled_from(SURROGATE_PROMPTS))
    if variant == 4:
        return "p" * 2500
    return draw(weird_text() if variant < 7 else weird_value())


# ---------------------------------------------------------------------------- chat


def _content(draw: st.DrawFn, text: Any, refs: list[str]) -> Any:
    if not refs:
        return text if draw(st.booleans()) else [{"type": "text", "text": text}]
    forms = ("image_url", "image_url_str", "image", "input_image", "source")
    parts: list[Any] = [{"type": "text", "text": text}]
    for ref in refs:
        shape = draw(st.sampled_from(forms))
        if shape == "image_url":
            parts.append({"type": "image_url", "image_url": {"url": ref}})
        elif shape == "image_url_str":
            parts.append({"type": "image_url", "image_url": ref})
        elif shape == "image":
            parts.append({"type": "image", "image": ref})
        elif shape == "input_image":
            parts.append({"type": "input_image", "image_url": ref})
        else:
            parts.append({"type": "image", "source": {"url": ref}})
    return parts


@st.composite
def chat_case(draw: st.DrawFn, ctx: Context) -> Case:
    broke = breaks(draw, CHAT_ASPECTS)
    prefix, provider = route(draw, broke)
    kind = draw(st.sampled_from(("image", "image", "edit", "edit", "chat")))
    if "unforwardable" in broke:
        kind = "chat"  # a pass-through forwards the body as it came
    model = model_for(draw, provider, kind, broke)
    refs = [good_image_uri(draw)] if kind == "edit" else []
    if "images" in broke:
        refs = bad_image_refs(draw, ctx)
    if "many-images" in broke:
        refs = many_tiny(draw)
    history: list[Any] = []
    if kind == "edit" and draw(st.integers(0, 3)) == 0:  # the image from earlier in the chat
        history = [
            {"role": "user", "content": "first"},
            {"role": "assistant", "content": f"![image 1]({refs[0] if refs else ''})"},
        ]
        refs = []
    last = {"role": "user", "content": _content(draw, prompt(draw, broke), refs)}
    messages: Any = [*history, last]
    if "messages" in broke:
        messages = draw(
            st.one_of(
                weird_value(),
                st.just([]),
                st.just([None]),
                st.just([{"role": "assistant", "content": "no user"}]),
                st.just([{"role": "user", "content": [{"type": "image_url"}]}]),
                st.just([{"role": "user", "content": [{"type": "text", "text": 1}, 2]}]),
                weird_value().map(lambda v: [{"role": v, "content": "a fox"}]),
                weird_value().map(lambda v: [{"role": "user", "content": v}]),
            )
        )
    body: dict[str, Any] = {"model": model, "messages": messages}
    stream = draw(st.sampled_from((None, True, False)))
    if "stream" in broke:
        stream = draw(weird_value())
        body["stream_options"] = draw(weird_value())
    elif stream and draw(st.booleans()):
        body["stream_options"] = {"include_usage": True}
    if stream is not None:
        body["stream"] = stream
    body.update(options(draw, broke))
    if "unforwardable" in broke:  # what a pass-through cannot forward faithfully
        body[draw(st.sampled_from(("temperature", "top_p", "metadata", "x")))] = draw(
            st.sampled_from(
                (Raw("NaN"), Raw("Infinity"), Raw("-Infinity"), "\ud800", nested(100_000))
            )
        )
    data = encode(draw, with_key(body, ctx.key), broke, ctx)
    return Case(
        RawRequest("POST", f"{prefix}/v1/chat/completions", json_headers(draw, ctx, broke), data),
        provider,
        fault(draw, provider),
        openai_style(model),
    )


# ---------------------------------------------------------------------------- images


@st.composite
def generation_case(draw: st.DrawFn, ctx: Context, asynchronous: bool = False) -> Case:
    broke = breaks(draw, GENERATION_ASPECTS + (ASYNC_ASPECTS if asynchronous else ()))
    prefix, provider = route(draw, broke)
    body: dict[str, Any] = {"prompt": prompt(draw, broke)}
    if "prompt" in broke and draw(st.integers(0, 3)) == 0:
        del body["prompt"]
    if draw(st.integers(0, 3)) != 0 or "model" in broke:
        body["model"] = model_for(draw, provider, "image", broke)
    if draw(st.booleans()):
        body["response_format"] = draw(st.sampled_from(("url", "b64_json")))
    if "response-format" in broke:
        body["response_format"] = draw(weird_value())
    if "stream" in broke:
        body["stream"] = draw(st.one_of(st.booleans(), st.just("true"), weird_value()))
    if "images" in broke:
        body["image"] = draw(st.one_of(st.just(bad_image_refs(draw, ctx)), weird_value()))
    body.update(options(draw, broke))
    if "unforwardable" in broke:
        body[draw(st.sampled_from(("seed", "prompt", "user")))] = draw(
            st.sampled_from((Raw("NaN"), Raw("1e999"), "\ud800", nested(100_000)))
        )
    model = body.get("model")
    if openai_style(model) == "openai" and "response-format" not in broke:
        body.pop("response_format", None)  # OpenAI refuses it for gpt-image models
    data = encode(draw, with_key(body, ctx.key), broke, ctx)
    head = json_headers(draw, ctx, broke) + async_headers(draw, asynchronous, broke)
    return Case(
        RawRequest("POST", f"{prefix}/v1/images/generations", head, data),
        provider,
        fault(draw, provider),
        openai_style(model),
    )


def async_headers(
    draw: st.DrawFn, asynchronous: bool, broke: frozenset[str]
) -> tuple[tuple[bytes, bytes], ...]:
    if not asynchronous:
        return ()
    out = [(b"prefer", draw(prefer()) if "prefer" in broke else b"respond-async")]
    if "idempotency" in broke:
        out.append((b"idempotency-key", draw(idempotency_key())))
    elif draw(st.booleans()):
        out.append((b"idempotency-key", draw(st.sampled_from((b"retry-1", b"retry-2", b"k")))))
    return tuple(out)


Part = tuple[bytes, bytes | None, bytes | None, bytes]
MULTIPART_MUTATIONS = (
    "no-boundary-param",
    "wrong-boundary",
    "no-closing",
    "lf-only",
    "preamble",
    "no-disposition",
    "empty-name",
    "quoted-name",
    "latin1-name",
    "huge-header",
    "json-body",
    "multipart-mixed",
    "truncated",
    "empty",
)


def _text_part(name: str, value: Any) -> Part:
    text = value if isinstance(value, str) else to_json(value)
    return (
        name.encode("utf-8", "surrogatepass"),
        None,
        None,
        text.encode("utf-8", "surrogatepass"),
    )


def multipart(draw: st.DrawFn, parts: list[Part], broken: bool) -> tuple[bytes, bytes]:
    """(content type, body) of a multipart/form-data body of `parts`, broken if asked."""
    boundary = draw(st.sampled_from((b"fuzzboundary7MA4YWxkTrZu0gW", b"x", b"----=_Part_0")))
    mutation = draw(st.sampled_from(MULTIPART_MUTATIONS)) if broken else "none"
    chunks: list[bytes] = [b"garbage preamble\r\n"] if mutation == "preamble" else []
    for name, filename, kind, data in parts:
        if mutation == "empty-name":
            name = b""
        elif mutation == "quoted-name":
            name = name + b'"; name="injected'
        elif mutation == "latin1-name":
            name = name + b"\xe9"
        head = b"--" + boundary + b"\r\n"
        if mutation != "no-disposition":
            head += b'Content-Disposition: form-data; name="' + name + b'"'
            if filename is not None:
                head += b'; filename="' + filename + b'"'
            head += b"\r\n"
        if kind is not None:
            head += b"Content-Type: " + kind + b"\r\n"
        if mutation == "huge-header":
            head += b"X-Pad: " + b"p" * 20000 + b"\r\n"
        chunks.append(head + b"\r\n" + data + b"\r\n")
    if mutation != "no-closing":
        chunks.append(b"--" + boundary + b"--\r\n")
    body = b"".join(chunks)
    content_type = b"multipart/form-data; boundary=" + boundary
    if mutation == "lf-only":
        body = body.replace(b"\r\n", b"\n")
    elif mutation == "no-boundary-param":
        content_type = b"multipart/form-data"
    elif mutation == "wrong-boundary":
        content_type = b"multipart/form-data; boundary=not-the-boundary"
    elif mutation == "json-body":
        body = b'{"prompt": "a fox", "image": "x"}'
    elif mutation == "multipart-mixed":
        content_type = b"multipart/mixed; boundary=" + boundary
    elif mutation == "truncated":
        body = body[: len(body) // 2]
    elif mutation == "empty":
        body = b""
    return content_type, body


def _image_parts(draw: st.DrawFn, ctx: Context, broke: frozenset[str]) -> list[Part]:
    if "many-images" in broke:
        return [(b"image[]", b"p.gif", b"image/gif", GOOD_IMAGES[3])] * draw(st.integers(4, 40))
    name = draw(st.sampled_from((b"image", b"image[]", b"image[0]")))
    parts: list[Part] = [(name, b"fox.png", b"image/png", draw(st.sampled_from(GOOD_IMAGES)))]
    if "images" in broke:  # text fields holding URLs or data URIs, and odd field names
        for ref in bad_image_refs(draw, ctx):
            parts.append(_text_part(draw(st.sampled_from(("image", "image[]", "image[1]"))), ref))
        if draw(st.booleans()):
            parts = parts[1:]
    if "files" in broke:
        filename = draw(st.sampled_from((b"", b"..\\..\\x.png", b"\xe9\xff.png", b"a" * 300)))
        kind = draw(st.sampled_from((b"image/png", None, b"text/plain", b"\xff")))
        field_name = draw(st.sampled_from((b"image", b"image[x]", b"images", b"n", b"prompt")))
        parts.append((field_name, filename, kind, draw(image_bytes(ctx.max_image_bytes))))
    return parts


@st.composite
def edit_case(draw: st.DrawFn, ctx: Context, asynchronous: bool = False) -> Case:
    broke = breaks(draw, EDIT_ASPECTS + (ASYNC_ASPECTS if asynchronous else ()))
    prefix, provider = route(draw, broke)
    parts: list[Part] = []
    if not ("prompt" in broke and draw(st.integers(0, 3)) == 0):
        parts.append(_text_part("prompt", prompt(draw, broke)))
    model = None
    if draw(st.integers(0, 3)) != 0 or "model" in broke:
        model = model_for(draw, provider, "edit", broke)
        parts.append(_text_part("model", model))
    parts += _image_parts(draw, ctx, broke)
    if "mask" in broke:
        mask = draw(st.one_of(image_bytes(ctx.max_image_bytes), st.just(b"")))
        parts.append((b"mask", b"mask.png", b"image/png", mask))
        if draw(st.booleans()):
            parts.append((b"mask", b"mask2.png", b"image/png", mask))
    if openai_style(model) == "qwen" and draw(st.booleans()):
        response_format = draw(st.sampled_from(("url", "b64_json")))
        parts.append(_text_part("response_format", response_format))
    if "response-format" in broke:
        parts.append(_text_part("response_format", draw(weird_text())))
    for name, value in options(draw, broke).items():
        parts.append(_text_part(str(name), with_key(value, ctx.key)))
    if "options" in broke and draw(st.booleans()):
        parts.append(_text_part("loras[repo-a]", draw(st.one_of(st.just("0.5"), weird_text()))))
    content_type, body = multipart(draw, parts, "multipart" in broke)
    head = auth_header(draw, ctx, "auth" in broke)
    kind = draw(json_content_type()) if "headers" in broke and draw(st.booleans()) else content_type
    if kind is not None:
        head.append((b"content-type", kind))
    if "headers" in broke:
        head += odd_headers(draw)
    return Case(
        RawRequest(
            "POST",
            f"{prefix}/v1/images/edits",
            tuple(head) + async_headers(draw, asynchronous, broke),
            body,
        ),
        provider,
        fault(draw, provider),
        openai_style(model),
    )


# ---------------------------------------------------------------------------- jobs

FOLLOW_UPS = (
    "poll",
    "poll",
    "poll-other-key",
    "poll-no-key",
    "poll-prefix",
    "resubmit",
    "resubmit-changed",
    "poll-odd-id",
)
ODD_JOB_IDS = (
    "job-" + "0" * 32,
    "job-" + "g" * 32,
    "JOB-" + "a" * 32,
    "job-",
    "x" * 300,
    "job-%00",
    "..%2F..%2Fv1%2Fmodels",
    "job-" + "a" * 31 + "%C3%A9",
    "%ff",
)


@st.composite
def job_case(draw: st.DrawFn, ctx: Context) -> Case:
    """An async submission, and what to do after it: poll it with the key, with another key,
    with no key; submit again with the same Idempotency-Key (same body or another)."""
    submit = draw(
        st.one_of(
            generation_case(ctx, asynchronous=True),
            generation_case(ctx, asynchronous=True),
            edit_case(ctx, asynchronous=True),
        )
    )
    follow = draw(st.lists(st.sampled_from(FOLLOW_UPS), min_size=1, max_size=3))
    return Case(
        submit.request,
        submit.provider,
        submit.fault,
        submit.openai_style,
        extra={"follow": follow, "odd_id": draw(st.sampled_from(ODD_JOB_IDS))},
    )


# ---------------------------------------------------------------------------- the rest

METHODS = (
    "GET",
    "GET",
    "GET",
    "HEAD",
    "POST",
    "PUT",
    "DELETE",
    "PATCH",
    "OPTIONS",
    "TRACE",
    "PROPFIND",
    "get",
    "FUZZ",
)
FILE_NAMES = (
    "..%2F..%2Fetc%2Fpasswd",
    "%2e%2e",
    ".",
    "a" * 500 + ".png",
    "x.png%00.txt",
    "%ff%fe.png",
    "uploads%2Fx.png",
    "images%2F",
    "A" * 32 + ".png",
)
MODEL_IDS = (
    "Qwen/Qwen-Image",
    "Qwen%2FQwen-Image",
    "gpt-image-1",
    "Kwai-Kolors/Kolors",
    "nope",
    "a/b/c/d",
    "%ff",
    "..",
    "Qwen/Qwen-Image/",
    "x" * 2000,
)


@st.composite
def path_case(draw: st.DrawFn, ctx: Context) -> Case:
    """Models, files, health, unknown paths and methods, odd encodings of every route."""
    broke = breaks(draw, ("auth", "route", "headers"))
    prefix, provider = route(draw, broke)
    name = draw(
        st.one_of(
            st.just(ctx.stored_name),
            st.just(ctx.stored_name.replace(".png", ".gif")),
            st.sampled_from(FILE_NAMES),
            st.text(alphabet="abcXYZ09-_.~%", max_size=20),
        )
    )
    model = draw(
        st.one_of(st.sampled_from(MODEL_IDS), st.text(alphabet="abcXYZ09-_./%~", max_size=20))
    )
    path = draw(
        st.sampled_from(
            (
                f"{prefix}/v1/models",
                f"{prefix}/v1/models/{model}",
                f"{prefix}/v1/files/{name}",
                f"{prefix}/v1/jobs/{name}",
                f"{prefix}/v1/chat/completions",
                f"{prefix}/v1/images/generations",
                f"{prefix}/v1/images/edits",
                f"{prefix}/v1/images/variations",
                f"{prefix}/v1/embeddings",
                f"{prefix}/v1/files",
                f"{prefix}/v1/jobs",
                f"{prefix}/v2/models",
                "/",
                "/healthz",
                "//v1/models",
                "/v1//models",
                "/v1/models/",
                "/v1/./models",
                "/v1/../v1/models",
                "/%76%31/models",
                "/v1/models%2F..%2F..%2Fetc",
                "/.env",
                "/v1/files/",
                f"/v1/files/{name}/extra",
                "/" + "a/" * 300,
                "*",
            )
        )
    )
    query = draw(st.sampled_from(("", "", "?x=1", "?a=%ff&b=%00", "?" + "q" * 3000, "?&&==")))
    method = draw(st.sampled_from(METHODS))
    body = draw(st.sampled_from((b"", b"", b"{}", b'{"model": "x"}', b"\xff\xfe", b"[" * 2000)))
    head = json_headers(draw, ctx, broke)
    if method == "OPTIONS" and draw(st.booleans()):
        head += (
            (b"origin", b"https://app.example"),
            (b"access-control-request-method", b"POST"),
            (b"access-control-request-headers", b"authorization, content-type"),
        )
    target = path + query if path != "*" else "*"
    return Case(RawRequest(method, target, head, body), provider)


@st.composite
def reader_case(draw: st.DrawFn, ctx: Context) -> Case:
    """A body that never arrives whole: abandoned mid-way, or stalled (a longer Content-Length
    than the bytes sent)."""
    delivery: Delivery = draw(st.sampled_from(("abandon", "abandon", "abandon", "stall")))
    inner = draw(st.one_of(chat_case(ctx), generation_case(ctx), edit_case(ctx)))
    request = inner.request
    body = request.body if len(request.body) > 40 else request.body + b" " * 64
    return Case(
        RawRequest(request.method, request.target, request.headers, body, delivery),
        inner.provider,
    )
