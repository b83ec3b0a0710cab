"""`make run`: serve the gateway on http://127.0.0.1:8000 with an embedded S3 stand-in.

Without `BUCKET` (and AWS credentials), a moto S3 server is started in-process on loopback and a
bucket is made in it, so uploads and presigned URLs work with no AWS account. With `BUCKET`
set, the real bucket is used. `HOST` and `PORT` choose where to listen.
"""

from __future__ import annotations

import os
import socket
import sys
from typing import Any


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def start_s3_stand_in(bucket: str = "image-gateway-local") -> tuple[Any, dict[str, str]]:
    """Start moto's S3 server on loopback with one bucket; the server and the env to use it."""
    import boto3
    from moto.server import ThreadedMotoServer

    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    env = {
        "BUCKET": bucket,
        "S3_ENDPOINT_URL": f"http://127.0.0.1:{port}",
        "AWS_ACCESS_KEY_ID": "local",
        "AWS_SECRET_ACCESS_KEY": "local",
        "AWS_REGION": "us-east-1",
    }
    boto3.client(
        "s3",
        endpoint_url=env["S3_ENDPOINT_URL"],
        region_name="us-east-1",
        aws_access_key_id="local",
        aws_secret_access_key="local",  # noqa: S106
    ).create_bucket(Bucket=bucket)
    return server, env


def main() -> None:
    import uvicorn

    from imagegw.app import create_app
    from imagegw.config import Settings

    server = None
    if not os.environ.get("BUCKET"):
        server, env = start_s3_stand_in()
        os.environ.update(env)
        where = f"embedded S3 stand-in at {env['S3_ENDPOINT_URL']}, bucket {env['BUCKET']}"
    else:
        where = f"bucket {os.environ['BUCKET']}"
    host = os.environ.get("HOST", "127.0.0.1")
    port = int(os.environ.get("PORT", "8000"))
    settings = Settings.from_env()
    print(
        f"lambda-image-gateway on http://{host}:{port}/v1 "
        f"(default provider {settings.default_provider}; {where})",
        file=sys.stderr,
    )
    try:
        uvicorn.run(create_app(settings), host=host, port=port, log_level="info", access_log=False)
    finally:
        if server is not None:
            server.stop()


if __name__ == "__main__":
    main()
