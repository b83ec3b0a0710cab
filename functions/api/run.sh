#!/bin/bash
# Start script of the API function. The Lambda Web Adapter (AWS_LAMBDA_EXEC_WRAPPER=/opt/bootstrap)
# runs it, waits for the readiness check on $PORT and forwards every invocation over HTTP.
# /opt/python is where Lambda mounts the shared layer's packages. serve.py is uvicorn's command
# line (`python -m uvicorn`) with the garbage collector off until the app is made.
PATH="$PATH:$LAMBDA_TASK_ROOT/bin" \
PYTHONPATH="$PYTHONPATH:/opt/python:$LAMBDA_RUNTIME_DIR" \
exec python "$(dirname "$0")/serve.py" --host 127.0.0.1 --port "${PORT:-8000}" --no-access-log \
  --timeout-graceful-shutdown 2 --app-dir "$(dirname "$0")" main:app
