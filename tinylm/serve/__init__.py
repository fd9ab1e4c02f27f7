"""`tinylm serve`: an OpenAI-compatible HTTP API over one model, with continuous batching, and a
playground page.

- batcher.py: continuous batching on the model's own forward (no HTTP, no JSON): requests join
  one running batch at token boundaries and leave it when they finish.
- schemas.py: the OpenAI request bodies checked field by field, and the error bodies.
- app.py: the Starlette routes (Starlette comes with FastAPI), server-sent events, API key,
  body limit; the page in static/.
- command.py: the `tinylm serve` subcommand (flags, model loading, uvicorn).

The library never imports this package, and this package imports starlette/uvicorn only when
the server is built (`tinylm serve`), so the `serve` extra stays optional.
"""
