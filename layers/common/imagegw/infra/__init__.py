"""The infrastructure layer: what the gateway stands on, knowing nothing of providers, jobs or
HTTP routes.

- `config`: the settings (environment variables; each provider declares its own, this layer
  never imports one); `log`, `telemetry`, `apimetrics`: logging, tracing and API metrics;
- `transport`: the shared HTTP client of the providers' APIs; `fetcher`: the one guarded
  fetcher of every URL a client sent (the SSRF guard);
- `spans`: JSON written around large payloads (an answer's images' base64, a client's data
  URIs in a provider request), sent a part at a time;
- `media`: input images (data URIs, types told by their bytes, `InputImage`); `storage`: the
  bucket (staged inputs, stored results); `clients`: the AWS clients; `localstate`: the
  stand-ins `make run` uses;
- `sealer`: provider keys sealed with KMS for durable jobs; `executions`: the Step Functions
  executions that run them; `waits`: waiting for a task with a time limit, cheaply.

Layers, lowest first: the package root (`errors`, `redaction`) < infra < `providers` < `core`
< `access` < `runners` < `frontends`; a module imports only from its own layer or lower ones
(tests/unit/test_layers.py).
"""
