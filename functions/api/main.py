"""Entry point of the API function: the ASGI app the Lambda Web Adapter (and `make run`) serves."""

from imagegw.frontends.app import create_app
from imagegw.infra.collector import pace_for_server

app = create_app()
pace_for_server()
