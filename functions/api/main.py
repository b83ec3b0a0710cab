"""Entry point of the API function: the ASGI app the Lambda Web Adapter (and `make run`) serves."""

from imagegw.frontends.app import create_app

app = create_app()
