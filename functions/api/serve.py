"""What run.sh starts: uvicorn's server with the API function's settings
(`imagegw.infra.serving`, which says what they are and why), serving `main:app` from this
folder, with the garbage collector off from the process's first line.

This script is compiled from its source at every start (Lambda's /var/task keeps no bytecode),
so it is kept to these lines: the server's code is in the layer, which ships bytecode.
"""

import gc

gc.disable()

import os  # noqa: E402

from imagegw.infra.serving import config, serve  # noqa: E402

#: where main.py is (uvicorn's `--app-dir`)
APP_DIR = os.path.dirname(os.path.realpath(__file__))

__all__ = ["APP_DIR", "config", "serve"]

if __name__ == "__main__":
    serve(APP_DIR)
