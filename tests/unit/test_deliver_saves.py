"""Which deliveries store a copy (what a stream says it waits for: `imagegw.core.deliver.saves`)."""

from __future__ import annotations

import pytest

from imagegw.core.deliver import LinkMode, Ref, Stored, saves

LINK = "https://provider.example/files/a.png"
INLINE = "data:image/png;base64,iVBORw0KGgo="


@pytest.mark.parametrize(
    ("refs", "mode", "expected"),
    [
        ((LINK,), "stored", True),
        ((LINK,), "inline", True),  # a type a chat client cannot show inline is stored
        ((LINK,), "provider", False),
        ((LINK, INLINE), "provider", True),  # an image answered inline is still stored
        ((LINK,), "data", False),  # downloaded, not stored
        ((LINK,), "as_is", False),
        ((Stored("a.png"),), "stored", False),  # a durable job's copy, made before
    ],
)
def test_saves(refs: tuple[Ref, ...], mode: LinkMode, expected: bool) -> None:
    assert saves(refs, mode) is expected
