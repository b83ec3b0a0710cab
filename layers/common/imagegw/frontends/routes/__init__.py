"""Routes, one module per front end; each exposes `routes(prefix)` for `/v1` and
`/{provider}/v1`."""
