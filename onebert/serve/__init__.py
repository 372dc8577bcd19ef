"""`onebert serve`: an HTTP JSON API (FastAPI + uvicorn) with dynamic batching.

- `app`: the endpoints, request/response bodies and limits (`create_app`, `ServeSettings`)
- `batching`: the bounded queue and batcher that turn concurrent requests into batches
- `server`: running uvicorn, in the foreground or in a background thread (tests, benchmarks)
"""

from onebert.serve.app import ServeSettings, create_app

__all__ = ["ServeSettings", "create_app"]
