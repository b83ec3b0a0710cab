"""The front-ends layer: the HTTP app and the OpenAI-shaped API it speaks, the top layer.

- `app`: the ASGI app (middleware, error rendering) and `routes/`, one module per front end
  (chat, the Images API, jobs, files, models);
- `schemas`: the OpenAI request and response models (chat requests, messages and their content
  parts, the Images API's requests), so handlers get typed objects; `messages`: a conversation
  -> prompt and input images; `prompt_options`: options written in the prompt (`--ar 16:9`);
  `images_api`: the Images API's calls; `streaming`: the streamed chat answer; `job_answers`:
  a durable job as its front end answers it; `passthrough`: chat models relayed to the provider;
- `spans`: answers carrying images as base64, written around each payload and sent in steps
  (`imagegw.infra.spans` `Around`, sent by `PiecesResponse`);
- `web`, `inbound`, `cors`, `paths`, `disconnect`: reading requests safely (key first, bounded
  bodies, checked text), CORS, path prefixes, a client that left;
- `local` (`make run`) and `admin` (the owner's commands) run the same package from a shell.
"""
