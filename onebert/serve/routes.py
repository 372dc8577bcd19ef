"""The endpoints: /embed, /predict (its body of the model's task), /health, /ready, /metrics.

Every route reads what it needs from one `ServeState` (built by `onebert.serve.app.create_app`):
the settings, the model's length per endpoint, the request checks and the batchers.

text-embeddings-inference (TEI) conventions: a body `{"inputs": "a text"}` or `{"inputs": [...]}`
on /embed and on the text bodies of /predict gets TEI's answer shape, while `{"texts": [...]}`
keeps onebert's:

- /embed: a list of vectors (one per text; for a single string too, as TEI answers).
- /predict, classification: for a single string, a list of {"label", "score"} over every label, the
  most likely first; for a list, one such list per input. (Regression: one {"label": "LABEL_0", "score"}.)
  A list of two strings is two texts here (TEI reads it as one pair): send pairs as [["a", "b"]].
- /predict, NER: for a single string, its list of entities; for a list, one list per text.
- QA takes no `inputs` (TEI has no question answering).
"""

from __future__ import annotations

import asyncio
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated, Any, Callable, Union

from fastapi import Body, FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse, PlainTextResponse

from onebert.errors import OneBertError
import onebert.serve.bodies as bodies
from onebert.serve.batching import DynamicBatcher, QueueFull
from onebert.serve.limits import RequestLimits
from onebert.serve.metrics import CONTENT_TYPE, ServerMetrics


@dataclass
class ServeState:
    """What the routes share: set up once by create_app, read by every request."""

    settings: Any  # ServeSettings
    model_dir: Path
    task: str | None
    embedder: Any  # onebert.infer.embedder.Embedder
    limits: RequestLimits
    max_lengths: dict[str, int]  # tokens per sequence each endpoint reads ("embed", "predict")
    embed_batcher: DynamicBatcher
    predict_batcher: DynamicBatcher | None
    metrics: ServerMetrics
    ready: bool = False  # a warm-up forward pass has run
    not_ready_reason: str = "warming up: the first forward pass has not run yet"

    @property
    def batchers(self) -> list[DynamicBatcher]:
        return [b for b in (self.embed_batcher, self.predict_batcher) if b is not None]


async def run_batched(state: ServeState, batcher: DynamicBatcher, items: list[Any], http: Request,
                      cost: int | None = None) -> list[Any]:
    """The batcher's results for `items`, as HTTP errors: 503 queue full, 504 timeout, 422 bad input."""
    timeout = state.settings.request_timeout_s
    job = asyncio.ensure_future(batcher.submit(items, cost))
    gone = asyncio.ensure_future(_client_gone(http))
    try:
        done, _ = await asyncio.wait({job, gone}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        if job not in done:  # timed out, or the client left (then nobody reads the 504)
            raise asyncio.TimeoutError  # cancelling `job` (finally) abandons its place in the batch
        return job.result()
    except QueueFull as exc:
        raise HTTPException(503, f"server busy: {exc} (server option --max-queue); retry later",
                            headers={"Retry-After": "1"}) from None
    except asyncio.TimeoutError:
        raise HTTPException(504, f"no result within {timeout:g} s") from None
    except OneBertError as exc:
        raise HTTPException(422, str(exc)) from None
    finally:
        job.cancel()
        gone.cancel()


async def _client_gone(http: Request) -> None:
    """Return when the client disconnects (the body is read by now, so the next ASGI message is that)."""
    for _ in range(10_000):  # bounded: each round waits for a message from the server, or backs off
        message = await http.receive()
        if message["type"] == "http.disconnect":
            return
        await asyncio.sleep(0.05)
    await asyncio.Event().wait()  # a server that keeps sending body messages: rely on the timeout alone


# ----------------------------------------------------------------------------- status endpoints


def add_status_routes(app: FastAPI, state: ServeState) -> None:
    @app.get("/health", response_model=bodies.HealthResponse, summary="liveness, model and batching statistics")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "task": state.task, "model": str(state.model_dir),
                "max_length": state.max_lengths["embed"], "max_lengths": state.max_lengths, "ready": state.ready,
                "settings": asdict(state.settings),
                "batching": {b.name: {**b.stats.as_dict(), "queued": b.queued} for b in state.batchers}}

    @app.get("/ready", response_model=bodies.ReadyResponse, summary="200 once the model has run a forward pass",
             responses={503: {"model": bodies.ErrorResponse, "description": "still warming up"}})
    async def ready() -> dict[str, str]:
        if not state.ready:
            raise HTTPException(503, state.not_ready_reason, headers={"Retry-After": "1"})
        return {"status": "ready"}

    @app.get("/metrics", response_class=PlainTextResponse, summary="Prometheus metrics (text exposition format)")
    async def metrics() -> PlainTextResponse:
        body = state.metrics.render({b.name: b.queued for b in state.batchers})
        return PlainTextResponse(body, media_type=CONTENT_TYPE)


# ----------------------------------------------------------------------------- /embed


def add_embed_route(app: FastAPI, state: ServeState) -> None:
    embedder = state.embedder

    @app.post("/embed", response_model=Union[bodies.EmbedResponse, bodies.TEIEmbedResponse],
              responses=bodies.ERRORS, summary="sentence embeddings (mean, [CLS] or pooler pooling)")
    async def embed(request: bodies.EmbedRequest, http: Request) -> JSONResponse:
        texts = request.items()
        field = "texts" if request.texts is not None else "inputs"
        state.limits.count(len(texts))
        state.limits.chars([((field, i), t) for i, t in enumerate(texts)])
        # one sequence per text: --max-texts bounds the work
        state.limits.tokens([(t,) for t in texts], field, state.max_lengths["embed"], "/embed")
        pooling = request.pooling or embedder.pooling
        if pooling == "pooler" and embedder.model.pooler is None:
            raise HTTPException(422, [{"loc": ["body", "pooling"], "type": "unsupported",
                                       "msg": "this model has no pooler layer; use 'mean' or 'cls'"}])
        normalize = embedder.normalize if request.normalize is None else request.normalize
        vectors = await run_batched(state, state.embed_batcher, [(t, pooling, normalize) for t in texts], http)
        if request.tei:
            return JSONResponse(vectors)
        # A JSONResponse directly: validating thousands of floats against the response model costs more
        # than the forward pass for short texts; the model documents the shape.
        return JSONResponse({"embeddings": vectors, "dimension": embedder.dimension, "pooling": pooling,
                             "normalized": normalize})


# ----------------------------------------------------------------------------- /predict, by body kind


def add_predict_route(app: FastAPI, state: ServeState, serve_request: str) -> None:
    """/predict with the request body of the task's kind (`Task.serve_request`), or a 404 without a task head."""
    if state.predict_batcher is None:
        @app.post("/predict", include_in_schema=False)
        async def no_task() -> None:
            raise HTTPException(404, f"{state.model_dir.name} has no task head (config.json has no onebert.task): "
                                     f"only /embed is served")
        return
    PREDICT_ROUTES[serve_request](app, state)


def _texts_or_pairs_route(app: FastAPI, state: ServeState) -> None:
    @app.post("/predict", response_model=Union[bodies.ClassificationResponse, bodies.TEIClassResponse],
              response_model_exclude_none=True, responses=bodies.ERRORS,
              summary="labels and class probabilities for texts or sentence pairs")
    async def predict_classification(request: bodies.TextsOrPairsRequest, http: Request) -> Any:
        items = request.items()
        field = "texts" if request.texts is not None else "inputs"
        state.limits.count(len(items))
        rows = [(item,) if isinstance(item, str) else tuple(item) for item in items]
        state.limits.chars([((field, i, j) if len(row) == 2 else (field, i), text)
                            for i, row in enumerate(rows) for j, text in enumerate(row)])
        state.limits.tokens(rows, field, state.max_lengths["predict"], "/predict")
        cost = state.limits.windows(items)
        predictions = await run_batched(state, state.predict_batcher, items, http, cost)
        if not request.tei:
            return {"predictions": predictions}
        scored = [tei_label_scores(p) for p in predictions]
        return scored[0] if isinstance(request.inputs, str) else scored


def tei_label_scores(prediction: dict[str, Any]) -> list[dict[str, Any]]:
    """TEI's answer for one input: every label with its probability, the most likely first."""
    scores = prediction.get("scores")
    if not scores:  # regression: one number, named as transformers names an unnamed output
        return [{"label": prediction.get("label") or "LABEL_0", "score": prediction["score"]}]
    return [{"label": label, "score": score} for label, score in sorted(scores.items(), key=lambda kv: -kv[1])]


def _texts_route(app: FastAPI, state: ServeState) -> None:
    @app.post("/predict", response_model=Union[bodies.NERResponse, bodies.TEINERResponse], responses=bodies.ERRORS,
              summary="named entities (spans with character offsets) for each text")
    async def predict_ner(request: bodies.TextsRequest, http: Request) -> Any:
        texts = request.items()
        field = "texts" if request.texts is not None else "inputs"
        state.limits.count(len(texts))
        state.limits.chars([((field, i), text) for i, text in enumerate(texts)])
        cost = state.limits.windows(texts)
        predictions = await run_batched(state, state.predict_batcher, texts, http, cost)
        if not request.tei:
            return {"predictions": predictions}
        return predictions[0] if isinstance(request.inputs, str) else predictions


def _questions_route(app: FastAPI, state: ServeState) -> None:
    @app.post("/predict", response_model=bodies.QAResponse, responses=bodies.ERRORS,
              summary="extractive answers: one {question, context} object or a list of them")
    async def predict_qa(request: Annotated[bodies.QARequestBody, Body()], http: Request) -> dict[str, Any]:
        questions = [request] if isinstance(request, bodies.QuestionRequest) else list(request)
        state.limits.count(len(questions))
        state.limits.chars([(("body", i, key), getattr(q, key)) for i, q in enumerate(questions)
                            for key in ("question", "context")])
        items = [{"question": q.question, "context": q.context} for q in questions]
        cost = state.limits.windows(items)
        return {"predictions": await run_batched(state, state.predict_batcher, items, http, cost)}


# Keyed by `Task.serve_request`: a new task picks the body it takes, or adds one here.
PREDICT_ROUTES: dict[str, Callable[[FastAPI, ServeState], None]] = {
    "texts_or_pairs": _texts_or_pairs_route, "texts": _texts_route, "questions": _questions_route}

