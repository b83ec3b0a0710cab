"""`make deploy`, `make logs` and `make delete`'s helpers: the deployed stack read with boto3."""
