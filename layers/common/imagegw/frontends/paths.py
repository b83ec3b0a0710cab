"""Request paths as clients write them -> the routes' one spelling (`/v1/...`).

Clients differ in what they append to a base URL: Cherry Studio keeps a trailing `/` (so
`.../v1//chat/completions`), others drop `/v1` (`/chat/completions`, `/models`). Rather than
declare every variant as a route, the app's envelope (`imagegw.frontends.app.Envelope`)
rewrites the path before routing:

- runs of slashes become one, and a trailing slash is dropped (`/v1/models/` is `/v1/models`);
- a doubled `/v1/v1` (a base URL ending in `/v1` that the client appends `/v1` to) is one;
- a path whose first segment is a route family (`chat`, `models`, `images`, `jobs`, `files`)
  gets `/v1` in front; so does one whose first segment is a provider name (a known, fixed set,
  `imagegw.providers.PROVIDERS`) followed by a route family.

No ambiguity arises: no provider is named like a route family, and only known provider names
are read as one, so `/anything/chat/completions` stays unknown (a 404). Paths already in the
routes' spelling are not touched.
"""

from __future__ import annotations

import re
from collections.abc import Collection
from typing import Final

#: first segments of the gateway's `/v1/...` routes
FAMILIES: Final = frozenset({"chat", "models", "images", "jobs", "files"})
_SLASHES: Final = re.compile(r"/{2,}")


def normalize(path: str, providers: Collection[str]) -> str:
    """`path` in the routes' spelling (see the module's docstring)."""
    if path.startswith("/v1/") and "//" not in path and path[-1] != "/" and path[4:6] != "v1":
        return path  # the routes' spelling already (most requests)
    tidy = _SLASHES.sub("/", path)
    if len(tidy) > 1 and tidy.endswith("/"):
        tidy = tidy.rstrip("/") or "/"
    segments = tidy.split("/")  # ["", first, second, ...]
    # a base URL ending in /v1 that the client appends /v1 to: `/v1/v1/models`
    for at in (1, 2):
        while len(segments) > at + 1 and segments[at] == segments[at + 1] == "v1":
            del segments[at + 1]
    tidy = "/".join(segments)
    if len(segments) > 1 and segments[1] in FAMILIES:
        return "/v1" + tidy
    if len(segments) > 2 and segments[1].lower() in providers and segments[2] in FAMILIES:
        return f"/{segments[1]}/v1/" + "/".join(segments[2:])
    return tidy
