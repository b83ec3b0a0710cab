"""A JSON body read a chunk at a time with its long plain strings held apart
(`imagegw.infra.spans.Apart`, `imagegw.frontends.inbound.parse_apart`): whatever the body and
however it is cut into chunks, the value, or the refusal word for word, is the one the whole
body parsed at once gets (`parse_json`); and a client's data URI is held, not parsed."""

from __future__ import annotations

import itertools
import json
import random
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from imagegw.errors import InvalidRequestError
from imagegw.frontends.inbound import parse_apart, parse_json
from imagegw.infra.spans import LEX_STEPS, SPLICE_AT, Apart

URI = "data:image/png;base64," + "iVBORw0KGgo/" * 30_000
JPEG = "data:image/jpeg;base64," + "/9j/4AAQ" * 20_000


def chat(content: str, *rest: str) -> bytes:
    """A chat body with `content` (raw JSON text) and an image part per `rest` URI."""
    parts = [f'{{"type": "text", "text": {content}}}']
    parts += [f'{{"type": "image_url", "image_url": {{"url": "{uri}"}}}}' for uri in rest]
    content = ", ".join(parts)
    head = '\ufeff{"model": "m", "messages": [{"role": "user", "content": ['
    return (head + content + "]}]}").encode()


BODIES = [
    chat('"a \\"quoted\\" cat\\n\\\\"', URI, JPEG),
    chat('"猫 é ✓"', URI),
    chat('"x"') + b" ",
    # long strings that are not held: escapes, a control character, non-ASCII, 64 KiB less one
    chat(json.dumps("a\\" * SPLICE_AT), URI),
    ('{"a": "' + "x" * SPLICE_AT + '\x01", "b": "' + URI + '"}').encode(),
    ('{"a": "' + "é" * SPLICE_AT + '", "b": "' + URI + '"}').encode(),
    ('{"a": "' + "x" * (SPLICE_AT - 1) + '", "b": "' + "y" * SPLICE_AT + '"}').encode(),
    # a long key, a held string twice over in one key (the last kept), in a list
    ('{"' + URI + '": [1, "' + JPEG + '"], "k": "' + URI + '", "k": "' + JPEG + '"}').encode(),
    # more strings than it looks through before the image: the image read as it is
    ('{"a": [' + ",".join(['"s"'] * LEX_STEPS) + '], "b": "' + URI + '"}').encode(),
    ('{"a": "' + "\\n" * LEX_STEPS + '", "b": "' + URI + '"}').encode(),
    # refused, after a held string: the words (line, column, byte) of the whole body
    chat('"x"', URI)[:-1] + b",}",
    chat('"x"', URI).replace(b'"m"', b'"m" 1'),
    chat('"x"', URI) + b"\xff",
    chat('"x"', URI).replace(b'"model"', b'"\xe9"'),
    chat('"x"', URI).replace(b'"m"', b'"\\ud800"'),
    chat('"x"', URI).replace(b'"m"', b"NaN"),
    chat('"x"', URI).replace(b'"m"', b"[" * 70 + b"]" * 70),
    chat('"x"', URI)[: len(URI) // 2],  # cut in the URI
    chat('"x"', URI)[: len(URI) // 2] + b"\xff",
    ('{"b": "' + URI).encode(),
    ('{"b": "' + URI + "\\").encode(),
    b"",
]


def outcome(read: Any) -> Any:
    try:
        return ("value", read())
    except InvalidRequestError as error:
        return ("refused", str(error), error.code, error.param)


def chunked(raw: bytes, rng: random.Random) -> list[bytes]:
    cuts = sorted(rng.sample(range(len(raw) + 1), min(len(raw) + 1, rng.choice([1, 3, 40]))))
    cuts = [0, *cuts, len(raw)]
    return [raw[a:b] for a, b in itertools.pairwise(cuts)]


@pytest.mark.parametrize("index", range(len(BODIES)))
def test_a_body_read_apart_is_the_body_parsed_whole(index: int) -> None:
    raw = BODIES[index]
    expected = outcome(lambda: parse_json(raw))
    rng = random.Random(index)
    # Whatever the chunks (one byte, a backslash or a quote at a chunk's edge, 64 KiB)
    for chunks in [
        [raw],
        [raw[i : i + 1] for i in range(min(len(raw), 3000))] + [raw[3000:]],
        [raw[i : i + 65536] for i in range(0, len(raw), 65536)],
        *(chunked(raw, rng) for _ in range(6)),
    ]:
        apart = Apart()
        for chunk in chunks:
            apart.feed(chunk)
        assert outcome(lambda apart=apart: parse_apart(apart)) == expected


def test_a_clients_data_uris_are_held_apart_not_parsed() -> None:
    # Given a chat body carrying two images as data URIs, read in 64 KiB chunks
    raw = chat('"edit \\"this\\""', URI, JPEG)
    apart = Apart()
    for at in range(0, len(raw), 65536):
        apart.feed(raw[at : at + 65536])
    # When its value is read, Then the URIs were held apart and the text parsed is short
    assert apart.held == [URI, JPEG]
    assert sum(map(len, apart.around)) < 300
    value = parse_apart(apart)
    assert value == json.loads(raw.decode("utf-8-sig"))
    assert value["messages"][0]["content"][1]["image_url"]["url"] == URI


#: strings of the kinds a body holds: short ones of any character, and long ones that are plain
#: (held apart), or not quite (an escape, a control character or a non-ASCII one somewhere)
_LONG = st.builds(
    lambda head, size, tail: head + "A" * size + tail,
    st.text(alphabet="ab/+=:;,", max_size=20),
    st.integers(min_value=SPLICE_AT - 2, max_value=SPLICE_AT + 70_000),
    # plain half the time
    st.one_of(
        st.sampled_from(["", "="]),
        st.sampled_from(['"', "\\", "\n", "\x01", "é", "\ue000", "\ud800"]),
    ),
)
_STRINGS = st.one_of(st.text(max_size=12), _LONG)
_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | _STRINGS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_STRINGS, inner, max_size=4),
    max_leaves=8,
)


@settings(max_examples=80, deadline=None)
@given(
    value=_VALUES,
    long=_LONG,
    place=st.sampled_from(["first", "last", "key", "deep"]),
    ascii_only=st.booleans(),
    spaced=st.booleans(),
    cuts=st.lists(st.integers(min_value=0, max_value=200_000), max_size=8),
)
def test_any_json_text_cut_anywhere_reads_as_it_parses_whole(
    value: Any, long: str, place: str, ascii_only: bool, spaced: bool, cuts: list[int]
) -> None:
    # Given any JSON text (escaped or not, spaced or not) with a long string somewhere in it
    # (plain or not quite), cut into chunks anywhere
    document = {
        "first": [long, value],
        "last": {"v": value, "url": long},
        "key": {long: value},
        "deep": [[{"a": [value, {"b": long}]}]],
    }[place]
    raw = json.dumps(document, ensure_ascii=ascii_only, indent=1 if spaced else None)
    data = raw.encode("utf-8", "surrogatepass")
    edges = sorted({0, len(data), *(cut % (len(data) + 1) for cut in cuts)})
    apart, led = Apart(), Apart(lambda first: f"data:{len(first)};")
    for start, end in itertools.pairwise(edges):
        apart.feed(data[start:end])
        led.feed(data[start:end])
    # When it is read apart, Then its value, or its refusal word for word, is the whole text's,
    # with held strings begun with a lead too (a provider's base64 held as its data URI)
    whole = outcome(lambda: parse_json(data))
    assert outcome(lambda: parse_apart(apart)) == whole
    assert outcome(lambda: parse_apart(led)) == whole
    assert [held.partition(";")[2] for held in led.held] == apart.held
