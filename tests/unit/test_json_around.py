"""imagegw.infra.spans: the one mechanism that writes JSON around large payloads, for answers
carrying images and for provider requests carrying a client's data URIs alike."""

from __future__ import annotations

import json

import pytest

from imagegw.infra.media import DataUri
from imagegw.infra.spans import SPLICE_AT, Around, AsciiText, encoded, size, spliced


def whole(value: object) -> bytes:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()


def test_payloads_of_both_kinds_are_written_in_their_places() -> None:
    # Given a value carrying an image's base64 made from its bytes and a client's data URI
    around = Around()
    data = bytes(range(256)) * 3000
    image = DataUri("image/png", 1, 1, data)
    uri = "data:image/png;base64," + "QUJD" * 300_000
    value = {"a": around.uri(image), "b": [around.payload(AsciiText(uri)), 'é "x"']}

    # When it is written around them
    pieces = around.pieces(value)

    # Then its bytes are those of its JSON with each payload in its place, counted first
    expected = whole({"a": image.text(), "b": [uri, 'é "x"']})
    assert b"".join(encoded(pieces)) == expected
    assert size(pieces) == len(expected)
    # And no part of it holds a payload whole
    assert max(map(len, encoded(pieces))) <= 512 * 1024


def test_a_text_holding_a_mark_twice_is_not_cut() -> None:
    around = Around()
    mark = around.payload(AsciiText("x" * 10))
    with pytest.raises(ValueError, match="marks"):
        around.cut(f"[{mark!r},{mark!r}]")
    with pytest.raises(ValueError, match="marks"):
        around.cut("[]")


def test_a_request_body_is_spliced_at_its_long_data_uris_only() -> None:
    uri = "data:image/jpeg;base64," + "/9j/" * SPLICE_AT
    other = "x" * (2 * SPLICE_AT)  # long, but no data URI
    body = {"image": uri, "prompt": other, "urls": [uri, "data:image/png;base64,AAAA"]}
    pieces = spliced(body)
    assert pieces is not None
    assert [p.text for p in pieces if isinstance(p, AsciiText)] == [uri, uri]
    assert b"".join(encoded(pieces)) == whole(body)
    # A body with none is not spliced (it is encoded whole, as any body)
    assert spliced({"prompt": other}) is None
