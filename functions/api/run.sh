#!/bin/bash
# Start script of the API function. The Lambda Web Adapter (AWS_LAMBDA_EXEC_WRAPPER=/opt/bootstrap)
# runs it, waits for the readiness check on $PORT and forwards every invocation over HTTP.
# /opt/python is where Lambda mounts the shared layer's packages. serve.py is uvicorn's server on
# 127.0.0.1:$PORT (8000 by default) with the function's settings (and the UVICORN_ variables
# docs/configuration.md lists), the garbage collector off until the app is made.
PATH="$PATH:$LAMBDA_TASK_ROOT/bin" \
PYTHONPATH="$PYTHONPATH:/opt/python:$LAMBDA_RUNTIME_DIR" \
exec python "$(dirname "$0")/serve.py"
