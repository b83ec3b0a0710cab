"""Entry point of the API function: the ASGI app the Lambda Web Adapter (and `make run`) serves.

The app's modules are imported and the app made with the garbage collector off
(`imagegw.infra.collector.loading`), which then runs at a server's pace."""

from imagegw.infra.collector import loading, pace_for_server

with loading():
    from imagegw.frontends.app import create_app

    app = create_app()
pace_for_server()
