"""The HTTP API: `/predict` for the model's task, `/embed`, `/health`, and FastAPI's OpenAPI schema.

`create_app(model_dir)` loads everything before it returns, so a bad model directory fails at start-up,
not at the first request. The `/predict` body is declared for the model's task, so the OpenAPI
schema (and its validation errors) say exactly what this model takes:

- classification: `{"texts": ["a", ...]}` or sentence pairs `{"texts": [["a", "b"], ...]}`
- ner: `{"texts": ["a", ...]}`
- qa: `{"question": ..., "context": ...}` or a list of such objects

Limits, each with its own status: a body over `max_body_bytes`, more than `max_texts` items or a
text over `max_text_chars` characters -> 413; a malformed body (wrong type, empty list, unknown
field) -> 422 naming the field; for classification and embeddings, a text longer than the model's
maximum length -> 422 naming the item (the model cannot read the rest, and cutting it silently
would answer a different question; NER and QA split long inputs into windows); a full queue -> 503
with Retry-After; no answer within `request_timeout_s` -> 504.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated, Any, Callable, Literal, Union

from fastapi import Body, FastAPI, HTTPException
from fastapi.exception_handlers import http_exception_handler
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, StrictBool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

from onebert.errors import OneBertError
from onebert.serve.batching import DynamicBatcher, QueueFull
from onebert.tasks import TASKS, get_task


@dataclass
class ServeSettings:
    max_batch_size: int = 32  # items (texts, pairs, questions) per forward pass
    max_latency_ms: float = 10.0  # how long a request may wait for others to share its batch
    max_queue: int = 256  # requests waiting per endpoint before new ones get 503
    max_length: int | None = None  # tokens per text; None: the model's limit
    max_texts: int = 128  # items per request
    max_text_chars: int = 100_000  # characters per text (contexts included)
    max_body_bytes: int = 4 * 2**20
    request_timeout_s: float = 60.0
    device: str = "auto"

    def __post_init__(self) -> None:
        for name in ("max_batch_size", "max_queue", "max_texts", "max_text_chars", "max_body_bytes"):
            if getattr(self, name) < 1:
                raise OneBertError(f"serve: {name} must be positive, got {getattr(self, name)}")
        from onebert import ranges  # the ranges `onebert serve` declares: nan/inf would hang or 504 every request

        ranges.BATCH_WAIT_MS.range.check(self.max_latency_ms, "serve: max_latency_ms")
        ranges.REQUEST_TIMEOUT.range.check(self.request_timeout_s, "serve: request_timeout_s")
        if self.max_length is not None and self.max_length < 2:
            raise OneBertError(f"serve: max_length must be at least 2 ([CLS] and [SEP]), got {self.max_length}")


# ----------------------------------------------------------------------------- request and response bodies


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")  # a misspelt field is an error, not silently ignored


class TextsRequest(_Body):
    texts: Annotated[list[str], Field(min_length=1, description="one or more texts")]


class TextsOrPairsRequest(_Body):
    texts: Union[Annotated[list[str], Field(min_length=1)],
                 Annotated[list[tuple[str, str]], Field(min_length=1)]] = Field(
        description="texts, or sentence pairs as [first, second]; not a mix of both")


class QuestionRequest(_Body):
    question: Annotated[str, Field(min_length=1)]
    context: Annotated[str, Field(min_length=1)]


QARequestBody = Union[QuestionRequest, Annotated[list[QuestionRequest], Field(min_length=1)]]


class EmbedRequest(_Body):
    texts: Annotated[list[str], Field(min_length=1, description="one or more texts")]
    pooling: Literal["mean", "cls", "pooler"] | None = Field(
        None, description="mean of token states, the [CLS] state, or the tanh pooler (default: the server's)")
    # Strict: JSON true/false only (lax parsing took 0.0 or "yes" as a boolean; found by schemathesis).
    normalize: StrictBool | None = Field(None, description="L2-normalise each vector (default: the server's)")


class ClassPrediction(BaseModel):
    label: str | None = None  # absent for regression
    score: float
    scores: dict[str, float] | None = None


class ClassificationResponse(BaseModel):
    predictions: list[ClassPrediction]


class Entity(BaseModel):
    entity: str
    word: str
    start: int
    end: int
    score: float


class NERResponse(BaseModel):
    predictions: list[list[Entity]]


class Answer(BaseModel):
    answer: str
    start: int
    end: int
    score: float


class QAResponse(BaseModel):
    predictions: list[Answer]


class EmbedResponse(BaseModel):
    embeddings: list[list[float]]
    dimension: int
    pooling: str
    normalized: bool


class HealthResponse(BaseModel):
    status: str
    task: str | None
    model: str
    max_length: int
    settings: dict[str, Any]
    batching: dict[str, dict[str, Any]]


class ErrorResponse(BaseModel):
    detail: Any


_ERRORS = {
    400: {"model": ErrorResponse, "description": "the body is not JSON text (e.g. not UTF-8)"},
    413: {"model": ErrorResponse, "description": "too many texts, a text or the body too large"},
    422: {"model": ErrorResponse, "description": "malformed body, or a text longer than the model's maximum length"},
    503: {"model": ErrorResponse, "description": "the queue is full; retry after the Retry-After seconds"},
    504: {"model": ErrorResponse, "description": "no result within the request timeout"},
}


# ----------------------------------------------------------------------------- body size limit


class BodyTooLarge(HTTPException):
    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body larger than {limit} bytes (server option --max-body-bytes)")


class BodySizeLimit:
    """Refuse bodies over `max_bytes`: at once by Content-Length, else while they stream in."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_bytes:
            error = BodyTooLarge(self.max_bytes)
            await JSONResponse({"detail": error.detail}, status_code=413)(scope, receive, send)
            return
        received = 0

        async def limited_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise BodyTooLarge(self.max_bytes)  # FastAPI re-raises HTTPExceptions from body reading
            return message

        await self.app(scope, limited_receive, send)


# ----------------------------------------------------------------------------- the app


def _model_task(model_dir: Path) -> str | None:
    from onebert.config import BertConfig

    task = BertConfig.load(model_dir).onebert.get("task")
    if task is not None and task not in TASKS:
        raise OneBertError(f"{model_dir / 'config.json'}: onebert.task is {task!r}; expected one of {', '.join(TASKS)}")
    return task


def _load_pipeline(model_dir: Path, task: str, settings: ServeSettings) -> Callable[[list[Any]], list[Any]]:
    try:
        module = importlib.import_module("onebert.pipeline")
    except ModuleNotFoundError as exc:
        if exc.name != "onebert.pipeline":
            raise
        raise OneBertError(f"{model_dir}: serving task '{task}' needs onebert.pipeline, which this installation "
                           f"lacks; /embed alone is available with a model without a task") from None
    return module.pipeline(task=task, model=str(model_dir), device=settings.device,
                           batch_size=settings.max_batch_size, max_length=settings.max_length)


def create_app(model_dir: str | os.PathLike, settings: ServeSettings | None = None, *,
               predictor: Callable[[list[Any]], list[Any]] | None = None, task: str | None = None,
               embedder=None) -> FastAPI:
    """The server for one model directory.

    predictor: `predictor(inputs) -> outputs` in onebert.pipeline's format; default: the pipeline
    for the task in config.json (`onebert.task`). task: the predictor's task when it is given
    (default: its `.task`, else config.json's). embedder: an `onebert.embeddings.Embedder`
    (default: one for this directory; it shares the predictor's encoder when it exposes `.model`).
    """
    from onebert.embeddings import Embedder, checkpoint_settings
    from onebert.model import BertPreTrainedModel
    from onebert.tokenizer import Tokenizer

    model_dir = Path(model_dir)
    settings = settings or ServeSettings()
    if not (model_dir / "config.json").is_file():
        raise OneBertError(f"{model_dir}: no config.json (is this a model directory?)")
    if predictor is None:
        task = _model_task(model_dir)
        if task is not None:
            predictor = _load_pipeline(model_dir, task, settings)
    else:
        task = task or getattr(predictor, "task", None) or _model_task(model_dir)
        if task not in TASKS:
            raise OneBertError(f"serve: the predictor's task must be one of {', '.join(TASKS)}, got {task!r}")
    if embedder is None:
        shared = getattr(predictor, "model", None)
        declared = checkpoint_settings(model_dir)
        if isinstance(shared, BertPreTrainedModel):
            embedder = Embedder(shared, pooling=declared.pooling, normalize=declared.normalize,
                                tokenizer=Tokenizer.from_pretrained(model_dir), max_length=settings.max_length,
                                device=settings.device)
        else:
            embedder = Embedder.from_checkpoint(model_dir, max_length=settings.max_length, device=settings.device)
    max_length = embedder.max_length
    # Its own tokenizer: the workers' tokenizers change truncation settings while they run.
    length_tokenizer = Tokenizer.from_pretrained(model_dir)

    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="onebert-model")
    batching = dict(executor=executor, max_batch_size=settings.max_batch_size,
                    max_latency_ms=settings.max_latency_ms, max_queue=settings.max_queue)

    def run_embeddings(items: list[tuple[str, str, bool]]) -> list[list[float]]:
        vectors: list[Any] = [None] * len(items)
        groups: dict[tuple[str, bool], list[int]] = {}
        for i, (_, pooling, normalize) in enumerate(items):
            groups.setdefault((pooling, normalize), []).append(i)
        for (pooling, normalize), rows in groups.items():
            result = embedder.encode([items[i][0] for i in rows], batch_size=settings.max_batch_size,
                                     pooling=pooling, normalize=normalize)
            for i, vector in zip(rows, result.embeddings):
                vectors[i] = vector.tolist()
        return vectors

    embed_batcher = DynamicBatcher("embed", run_embeddings, **batching)
    predict_batcher = DynamicBatcher("predict", predictor, **batching) if predictor is not None else None
    batchers = [b for b in (embed_batcher, predict_batcher) if b is not None]

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        for batcher in batchers:
            await batcher.start()
        try:
            yield
        finally:
            for batcher in batchers:
                await batcher.stop()
            executor.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(title="onebert", version=_version(),
                  description=f"BERT model `{model_dir.name}`" + (f", task {task}" if task else ", no task head")
                              + ". Bodies are JSON; see each operation for its shape and limits.",
                  lifespan=lifespan)
    app.state.settings = settings
    app.state.batchers = {b.name: b for b in batchers}
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)

    @app.exception_handler(StarletteHTTPException)
    async def explain_http_error(request, exc: StarletteHTTPException):
        if exc.status_code == 400 and isinstance(exc.__cause__, UnicodeDecodeError):
            # FastAPI's own message ("There was an error parsing the body") does not say what is wrong.
            exc.detail = f"the body is not valid UTF-8 (byte {exc.__cause__.start}); send JSON text"
        return await http_exception_handler(request, exc)

    def check_count(count: int) -> None:
        if count > settings.max_texts:
            raise HTTPException(413, f"{count} items in one request; the limit is {settings.max_texts} "
                                     f"(server option --max-texts)")

    def check_chars(texts: list[tuple[tuple[str | int, ...], str]]) -> None:
        for loc, text in texts:
            if len(text) > settings.max_text_chars:
                raise HTTPException(413, f"{'.'.join(map(str, loc))} has {len(text)} characters; the limit is "
                                         f"{settings.max_text_chars} (server option --max-text-chars)")

    def check_tokens(rows: list[tuple[str, ...]], field: str) -> None:
        """422 naming the first item whose [CLS] a [SEP] (b [SEP]) exceeds max_length."""
        flat = [text for row in rows for text in row]
        lengths = [len(ids) for ids in length_tokenizer.encode_ids(flat)]
        position = 0
        for index, row in enumerate(rows):
            tokens = sum(lengths[position:position + len(row)]) + len(row) + 1
            position += len(row)
            if tokens > max_length:
                raise HTTPException(422, [{"loc": ["body", field, index], "type": "too_many_tokens",
                                           "msg": f"{tokens} tokens; the model reads at most {max_length} "
                                                  f"(texts are never cut silently: shorten or split it)"}])

    async def run_batched(batcher: DynamicBatcher, items: list[Any]) -> list[Any]:
        try:
            return await asyncio.wait_for(batcher.submit(items), settings.request_timeout_s)
        except QueueFull as exc:
            raise HTTPException(503, f"server busy: {exc} (server option --max-queue); retry later",
                                headers={"Retry-After": "1"}) from None
        except asyncio.TimeoutError:
            raise HTTPException(504, f"no result within {settings.request_timeout_s:g} s") from None
        except OneBertError as exc:
            raise HTTPException(422, str(exc)) from None

    @app.get("/health", response_model=HealthResponse, summary="liveness, model and batching statistics")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "task": task, "model": str(model_dir), "max_length": max_length,
                "settings": asdict(settings),
                "batching": {b.name: {**b.stats.as_dict(), "queued": b.queued} for b in batchers}}

    @app.post("/embed", response_model=EmbedResponse, responses=_ERRORS,
              summary="sentence embeddings (mean, [CLS] or pooler pooling)")
    async def embed(request: EmbedRequest) -> JSONResponse:
        texts = request.texts
        check_count(len(texts))
        check_chars([(("texts", i), t) for i, t in enumerate(texts)])
        check_tokens([(t,) for t in texts], "texts")
        pooling = request.pooling or embedder.pooling
        if pooling == "pooler" and embedder.model.pooler is None:
            raise HTTPException(422, [{"loc": ["body", "pooling"], "type": "unsupported",
                                       "msg": "this model has no pooler layer; use 'mean' or 'cls'"}])
        normalize = embedder.normalize if request.normalize is None else request.normalize
        vectors = await run_batched(embed_batcher, [(t, pooling, normalize) for t in texts])
        # A JSONResponse directly: validating thousands of floats against the response model costs more
        # than the forward pass for short texts; the model documents the shape.
        return JSONResponse({"embeddings": vectors, "dimension": embedder.dimension, "pooling": pooling,
                             "normalized": normalize})

    if predict_batcher is not None:
        _add_predict_route(app, task, predict_batcher, check_count, check_chars, check_tokens, run_batched)
    else:
        @app.post("/predict", include_in_schema=False)
        async def no_task() -> None:
            raise HTTPException(404, f"{model_dir.name} has no task head (config.json has no onebert.task): "
                                     f"only /embed is served")
    return app


def _add_predict_route(app: FastAPI, task: str, batcher: DynamicBatcher, check_count, check_chars, check_tokens,
                       run_batched) -> None:
    """/predict with the request body of the task's kind (`Task.serve_request`)."""
    _PREDICT_ROUTES[get_task(task).serve_request](app, batcher, check_count, check_chars, check_tokens, run_batched)


def _texts_or_pairs_route(app: FastAPI, batcher: DynamicBatcher, check_count, check_chars, check_tokens,
                          run_batched) -> None:
    @app.post("/predict", response_model=ClassificationResponse, response_model_exclude_none=True,
              responses=_ERRORS, summary="labels and class probabilities for texts or sentence pairs")
    async def predict_classification(request: TextsOrPairsRequest) -> dict[str, Any]:
        items = list(request.texts)
        check_count(len(items))
        rows = [(item,) if isinstance(item, str) else tuple(item) for item in items]
        check_chars([(("texts", i, j) if len(row) == 2 else ("texts", i), text)
                     for i, row in enumerate(rows) for j, text in enumerate(row)])
        check_tokens(rows, "texts")
        return {"predictions": await run_batched(batcher, items)}


def _texts_route(app: FastAPI, batcher: DynamicBatcher, check_count, check_chars, check_tokens, run_batched) -> None:
    @app.post("/predict", response_model=NERResponse, responses=_ERRORS,
              summary="named entities (spans with character offsets) for each text")
    async def predict_ner(request: TextsRequest) -> dict[str, Any]:
        check_count(len(request.texts))
        check_chars([(("texts", i), text) for i, text in enumerate(request.texts)])
        return {"predictions": await run_batched(batcher, list(request.texts))}


def _questions_route(app: FastAPI, batcher: DynamicBatcher, check_count, check_chars, check_tokens,
                     run_batched) -> None:
    @app.post("/predict", response_model=QAResponse, responses=_ERRORS,
              summary="extractive answers: one {question, context} object or a list of them")
    async def predict_qa(request: Annotated[QARequestBody, Body()]) -> dict[str, Any]:
        questions = [request] if isinstance(request, QuestionRequest) else list(request)
        check_count(len(questions))
        check_chars([(("body", i, key), getattr(q, key)) for i, q in enumerate(questions)
                     for key in ("question", "context")])
        items = [{"question": q.question, "context": q.context} for q in questions]
        return {"predictions": await run_batched(batcher, items)}


# Keyed by `Task.serve_request`: a new task picks the body it takes, or adds one here.
_PREDICT_ROUTES = {"texts_or_pairs": _texts_or_pairs_route, "texts": _texts_route, "questions": _questions_route}


def _version() -> str:
    from onebert import __version__

    return __version__
