"""What run.sh starts: uvicorn's own command line, as `python -m uvicorn` runs it, with the
garbage collector off from the process's first line. Importing uvicorn and then the app makes
tens of thousands of objects that live as long as the process; `main.py` makes the app inside
`imagegw.infra.collector.loading`, which freezes them and switches the collector on."""

import gc

gc.disable()

from uvicorn.main import main  # noqa: E402

if __name__ == "__main__":
    main()
