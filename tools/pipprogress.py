"""`pip install`'s output as one progress line (`make run`'s first install takes minutes: a
newcomer should see it move, not one still line).

    pip install ... 2>&1 | python tools/pipprogress.py "project dependencies"

Reads pip's normal output on stdin and shows how many packages are fetched and installed so
far, on one line rewritten in place on a terminal, or a line every STEP packages in a log.
Errors and warnings pass through as they are (but the noise `make` hid before: optional local
package folders that do not exist), and the last line says how long it took. Standard library
only: it runs before anything is installed.
"""

from __future__ import annotations

import re
import sys
import time
from collections.abc import Iterable, Iterator
from typing import Final, TextIO

#: packages between two lines when the output is not a terminal
STEP: Final = 20
_FETCH: Final = re.compile(r"^\s*(Collecting|Requirement already satisfied:)\s+([^\s<>=!~;\[(]+)")
_INSTALL: Final = re.compile(r"^\s*Installing collected packages: (.*)$")
_NOISE: Final = "is ignored: it is neither"


def progress(lines: Iterable[str], what: str, tty: bool) -> Iterator[str]:
    """What to write for pip's `lines`: progress (ending "\\r" on a terminal to be rewritten)
    and pip's own problems, then a last line with the count and the time."""
    began = time.monotonic()
    fetched = 0
    shown = 0
    start = "\r" if tty else ""  # back to the line's start, to rewrite it
    clear = "\033[K" if tty else ""  # the rest of the line cleared
    for raw in lines:
        line = raw.rstrip("\n")
        found = _FETCH.match(line)
        if found:
            fetched += 1
            if tty:
                now = found.group(2)[:40]
                yield f"{start}  {what}: {fetched} packages looked at (now {now}){clear}"
            elif fetched - shown >= STEP:
                shown = fetched
                yield f"  {what}: {fetched} packages looked at\n"
            continue
        installing = _INSTALL.match(line)
        if installing:
            count = len([p for p in installing.group(1).split(",") if p.strip()])
            yield f"{start}  {what}: installing {count} packages{clear}" + ("" if tty else "\n")
            continue
        if ("ERROR" in line or "WARNING" in line or "error:" in line) and _NOISE not in line:
            yield f"{start}{clear}{line}\n"
    seconds = time.monotonic() - began
    yield f"{start}{clear}  {what}: ready ({fetched} packages, {seconds:.0f} s)\n"


def main(argv: list[str], source: TextIO = sys.stdin, out: TextIO = sys.stdout) -> int:
    what = argv[0] if argv else "installing"
    for piece in progress(source, what, out.isatty()):
        out.write(piece)
        out.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
