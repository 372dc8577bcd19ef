"""The HTTP API: `/predict` for the model's task, `/embed`, `/health`, and FastAPI's OpenAPI schema.

`create_app(model_dir)` loads everything before it returns, so a bad model directory fails at start-up,
not at the first request. The `/predict` body is declared for the model's task, so the OpenAPI
schema (and its validation errors) say exactly what this model takes:

- classification: `{"texts": ["a", ...]}` or sentence pairs `{"texts": [["a", "b"], ...]}`
- ner: `{"texts": ["a", ...]}`
- qa: `{"question": ..., "context": ...}` or a list of such objects

Limits, each with its own status: a body over `max_body_bytes`, more than `max_texts` items, a
text over `max_text_chars` characters or a request needing more than `max_windows` model sequences
(NER and QA split long texts into windows) -> 413; a malformed body (wrong type, empty list, unknown
field, a lone UTF-16 surrogate such as "\ud800" that JSON can escape but that is no character) ->
422 naming the field (a validation error echoes at most a few hundred characters of the input);
for classification and embeddings, a text longer than the model's maximum length -> 422 naming
the item (the model cannot read the rest, and cutting it silently would answer a different
question); a full queue -> 503 with Retry-After; no answer within `request_timeout_s` -> 504.

A request that times out or whose client disconnects stops using the model at the next forward
pass (see `onebert.serve.batching`), so it cannot keep the single model thread from other requests.
Connection limits (`max_connections`, `client_timeout_s`) are enforced in `onebert.serve.server`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated, Any, Callable, Literal, Union

from fastapi import Body, FastAPI, HTTPException, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, StrictBool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

from onebert.errors import OneBertError
from onebert.serve.batching import DynamicBatcher, QueueFull, raise_if_abandoned
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
    max_windows: int = 256  # model sequences (NER/QA windows) per request: one request's share of the model
    max_connections: int = 512  # open connections; more are answered 503 and closed (file descriptors are finite)
    client_timeout_s: float = 10.0  # to send a whole request (headers and body), from connect or the last response

    def __post_init__(self) -> None:
        for name in ("max_batch_size", "max_queue", "max_texts", "max_text_chars", "max_body_bytes", "max_windows",
                     "max_connections"):
            if getattr(self, name) < 1:
                raise OneBertError(f"serve: {name} must be positive, got {getattr(self, name)}")
        from onebert import ranges  # the ranges `onebert serve` declares: nan/inf would hang or 504 every request

        ranges.BATCH_WAIT_MS.range.check(self.max_latency_ms, "serve: max_latency_ms")
        ranges.REQUEST_TIMEOUT.range.check(self.request_timeout_s, "serve: request_timeout_s")
        ranges.REQUEST_TIMEOUT.range.check(self.client_timeout_s, "serve: client_timeout_s")
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


# ----------------------------------------------------------------------------- errors that are safe to send

ECHO_CHARS = 200  # of the input a validation error shows: enough to recognise it, never the whole 4 MB body
_SURROGATE = re.compile("[\ud800-\udfff]")


def _json_safe(value: Any, limit: int = ECHO_CHARS) -> Any:
    """`value` as JSON can carry it: lone surrogates escaped, NaN/inf as text, long strings and lists cut.

    A validation error echoes what it rejected, and what it rejected may be exactly what JSON
    cannot encode (NaN is not JSON; a lone surrogate is not UTF-8): the error body must not fail too.
    """
    if isinstance(value, str):
        text = value.encode("utf-8", "backslashreplace").decode("utf-8") if _SURROGATE.search(value) else value
        return text if len(text) <= limit else f"{text[:limit]}... ({len(value)} characters)"
    if value is None or isinstance(value, (bool, int)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else repr(value)  # 'nan', 'inf'
    if isinstance(value, dict):
        items = list(value.items())
        shown = {str(_json_safe(k, limit)): _json_safe(v, limit) for k, v in items[:8]}
        if len(items) > 8:
            shown["..."] = f"{len(items) - 8} more keys"
        return shown
    if isinstance(value, (list, tuple)):
        shown = [_json_safe(v, limit) for v in value[:8]]
        return shown + [f"... {len(value) - 8} more items"] if len(value) > 8 else shown
    return _json_safe(str(value), limit)


def _validation_error_body(exc: RequestValidationError) -> dict[str, Any]:
    errors = []
    for error in exc.errors():
        shown = {key: error[key] for key in ("type", "loc", "msg") if key in error}
        if "input" in error:
            shown["input"] = error["input"]
        if "ctx" in error:
            shown["ctx"] = error["ctx"]
        errors.append(_json_safe(shown))
    return {"detail": errors}


def lone_surrogate_error(loc: tuple[str | int, ...], text: str) -> HTTPException:
    """422 for a text with a lone surrogate: valid JSON ("\\ud800"), but no character, so no tokenizer input."""
    match = _SURROGATE.search(text)
    assert match is not None
    return HTTPException(422, [{"loc": list(loc), "type": "lone_surrogate",
                                "msg": f"character {match.start()} is a lone UTF-16 surrogate "
                                       f"({match.group().encode('utf-8', 'backslashreplace').decode()}), not a "
                                       f"Unicode character; send the character itself or a valid surrogate pair"}])


# ----------------------------------------------------------------------------- the app


def _model_task(model_dir: Path) -> str | None:
    from onebert.model.config import BertConfig

    task = BertConfig.load(model_dir).onebert.get("task")
    if task is not None and task not in TASKS:
        raise OneBertError(f"{model_dir / 'config.json'}: onebert.task is {task!r}; expected one of {', '.join(TASKS)}")
    return task


def _load_pipeline(model_dir: Path, task: str, settings: ServeSettings) -> Callable[[list[Any]], list[Any]]:
    from onebert.infer.pipeline import pipeline

    return pipeline(task=task, model=str(model_dir), device=settings.device,
                           batch_size=settings.max_batch_size, max_length=settings.max_length)


def create_app(model_dir: str | os.PathLike, settings: ServeSettings | None = None, *,
               predictor: Callable[[list[Any]], list[Any]] | None = None, task: str | None = None,
               embedder=None) -> FastAPI:
    """The server for one model directory.

    predictor: `predictor(inputs) -> outputs` in onebert.infer.pipeline's format; default: the pipeline
    for the task in config.json (`onebert.task`). task: the predictor's task when it is given
    (default: its `.task`, else config.json's). embedder: an `onebert.infer.embedder.Embedder`
    (default: one for this directory; it shares the predictor's encoder when it exposes `.model`).
    """
    from onebert.infer.embedder import Embedder, checkpoint_settings
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

    windows = _window_counter(task, predictor, length_tokenizer, max_length)
    # Before every forward pass: stop a batch whose requests all timed out or disconnected.
    for module in {id(m): m for m in (getattr(predictor, "model", None), embedder.model)}.values():
        if hasattr(module, "register_forward_pre_hook"):
            module.register_forward_pre_hook(lambda _module, _args: raise_if_abandoned())

    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="onebert-model")
    # Waiting for company longer than half the timeout only turns requests into 504s.
    latency_ms = min(settings.max_latency_ms, settings.request_timeout_s * 500)
    batching = dict(executor=executor, max_batch_size=settings.max_batch_size,
                    max_latency_ms=latency_ms, max_queue=settings.max_queue)

    def run_embeddings(items: list[tuple[str, str, bool]]) -> list[list[float]]:
        vectors: list[Any] = [None] * len(items)
        groups: dict[tuple[str, bool], list[int]] = {}
        for i, (_, pooling, normalize) in enumerate(items):
            groups.setdefault((pooling, normalize), []).append(i)
        for (pooling, normalize), rows in groups.items():
            result = embedder.encode_result([items[i][0] for i in rows], batch_size=settings.max_batch_size,
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

    @app.exception_handler(RequestValidationError)
    async def explain_validation_error(request, exc: RequestValidationError):
        # FastAPI's default echoes the whole input (MBs) and fails with 500 on NaN or a lone surrogate.
        return JSONResponse(_validation_error_body(exc), status_code=422)

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
        for loc, text in texts:
            if _SURROGATE.search(text):
                raise lone_surrogate_error(loc if loc[0] == "body" else ("body", *loc), text)

    def check_windows(items: list[Any]) -> int:
        """The request's model sequences (its cost in the queue); 413 over --max-windows."""
        count = windows(items)
        if count > settings.max_windows:
            raise HTTPException(413, f"this request needs about {count} model sequences of {max_length} tokens "
                                     f"(long texts are split into windows); the limit per request is "
                                     f"{settings.max_windows} (server option --max-windows): send fewer or "
                                     f"shorter texts")
        return count

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

    async def run_batched(batcher: DynamicBatcher, items: list[Any], http: Request, cost: int | None = None
                          ) -> list[Any]:
        job = asyncio.ensure_future(batcher.submit(items, cost))
        gone = asyncio.ensure_future(_client_gone(http))
        try:
            done, _ = await asyncio.wait({job, gone}, timeout=settings.request_timeout_s,
                                         return_when=asyncio.FIRST_COMPLETED)
            if job not in done:  # timed out, or the client left (then nobody reads the 504)
                raise asyncio.TimeoutError  # cancelling `job` (finally) abandons its place in the batch
            return job.result()
        except QueueFull as exc:
            raise HTTPException(503, f"server busy: {exc} (server option --max-queue); retry later",
                                headers={"Retry-After": "1"}) from None
        except asyncio.TimeoutError:
            raise HTTPException(504, f"no result within {settings.request_timeout_s:g} s") from None
        except OneBertError as exc:
            raise HTTPException(422, str(exc)) from None
        finally:
            job.cancel()
            gone.cancel()

    @app.get("/health", response_model=HealthResponse, summary="liveness, model and batching statistics")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "task": task, "model": str(model_dir), "max_length": max_length,
                "settings": asdict(settings),
                "batching": {b.name: {**b.stats.as_dict(), "queued": b.queued} for b in batchers}}

    @app.post("/embed", response_model=EmbedResponse, responses=_ERRORS,
              summary="sentence embeddings (mean, [CLS] or pooler pooling)")
    async def embed(request: EmbedRequest, http: Request) -> JSONResponse:
        texts = request.texts
        check_count(len(texts))
        check_chars([(("texts", i), t) for i, t in enumerate(texts)])
        check_tokens([(t,) for t in texts], "texts")  # one sequence per text: --max-texts bounds the work
        pooling = request.pooling or embedder.pooling
        if pooling == "pooler" and embedder.model.pooler is None:
            raise HTTPException(422, [{"loc": ["body", "pooling"], "type": "unsupported",
                                       "msg": "this model has no pooler layer; use 'mean' or 'cls'"}])
        normalize = embedder.normalize if request.normalize is None else request.normalize
        vectors = await run_batched(embed_batcher, [(t, pooling, normalize) for t in texts], http)
        # A JSONResponse directly: validating thousands of floats against the response model costs more
        # than the forward pass for short texts; the model documents the shape.
        return JSONResponse({"embeddings": vectors, "dimension": embedder.dimension, "pooling": pooling,
                             "normalized": normalize})

    if predict_batcher is not None:
        _add_predict_route(app, task, predict_batcher, check_count, check_chars, check_tokens, check_windows,
                           run_batched)
    else:
        @app.post("/predict", include_in_schema=False)
        async def no_task() -> None:
            raise HTTPException(404, f"{model_dir.name} has no task head (config.json has no onebert.task): "
                                     f"only /embed is served")
    return app


def _add_predict_route(app: FastAPI, task: str, batcher: DynamicBatcher, check_count, check_chars, check_tokens,
                       check_windows, run_batched) -> None:
    """/predict with the request body of the task's kind (`Task.serve_request`)."""
    _PREDICT_ROUTES[get_task(task).serve_request](app, batcher, check_count, check_chars, check_tokens, check_windows,
                                                   run_batched)


def _texts_or_pairs_route(app: FastAPI, batcher: DynamicBatcher, check_count, check_chars, check_tokens,
                          check_windows, run_batched) -> None:
    @app.post("/predict", response_model=ClassificationResponse, response_model_exclude_none=True,
              responses=_ERRORS, summary="labels and class probabilities for texts or sentence pairs")
    async def predict_classification(request: TextsOrPairsRequest, http: Request) -> dict[str, Any]:
        items = list(request.texts)
        check_count(len(items))
        rows = [(item,) if isinstance(item, str) else tuple(item) for item in items]
        check_chars([(("texts", i, j) if len(row) == 2 else ("texts", i), text)
                     for i, row in enumerate(rows) for j, text in enumerate(row)])
        check_tokens(rows, "texts")
        cost = check_windows(items)
        return {"predictions": await run_batched(batcher, items, http, cost)}


def _texts_route(app: FastAPI, batcher: DynamicBatcher, check_count, check_chars, check_tokens, check_windows,
                 run_batched) -> None:
    @app.post("/predict", response_model=NERResponse, responses=_ERRORS,
              summary="named entities (spans with character offsets) for each text")
    async def predict_ner(request: TextsRequest, http: Request) -> dict[str, Any]:
        check_count(len(request.texts))
        check_chars([(("texts", i), text) for i, text in enumerate(request.texts)])
        cost = check_windows(list(request.texts))
        return {"predictions": await run_batched(batcher, list(request.texts), http, cost)}


def _questions_route(app: FastAPI, batcher: DynamicBatcher, check_count, check_chars, check_tokens,
                     check_windows, run_batched) -> None:
    @app.post("/predict", response_model=QAResponse, responses=_ERRORS,
              summary="extractive answers: one {question, context} object or a list of them")
    async def predict_qa(request: Annotated[QARequestBody, Body()], http: Request) -> dict[str, Any]:
        questions = [request] if isinstance(request, QuestionRequest) else list(request)
        check_count(len(questions))
        check_chars([(("body", i, key), getattr(q, key)) for i, q in enumerate(questions)
                     for key in ("question", "context")])
        items = [{"question": q.question, "context": q.context} for q in questions]
        cost = check_windows(items)
        return {"predictions": await run_batched(batcher, items, http, cost)}


# Keyed by `Task.serve_request`: a new task picks the body it takes, or adds one here.
_PREDICT_ROUTES = {"texts_or_pairs": _texts_or_pairs_route, "texts": _texts_route, "questions": _questions_route}


async def _client_gone(http: Request) -> None:
    """Return when the client disconnects (the body is read by now, so the next ASGI message is that)."""
    for _ in range(10_000):  # bounded: each round waits for a message from the server, or backs off
        message = await http.receive()
        if message["type"] == "http.disconnect":
            return
        await asyncio.sleep(0.05)
    await asyncio.Event().wait()  # a server that keeps sending body messages: rely on the timeout alone


def _window_counter(task: str | None, predictor: Any, tokenizer: Any, max_length: int) -> Callable[[list[Any]], int]:
    """`count(items)`: about how many model sequences the items need (their share of the model thread).

    Classification and embeddings read one sequence per item (longer texts get 422). NER and QA cut
    long texts into overlapping windows as onebert.tasks does: QA windows hold the question and
    `max_seq_length - question - 3` context tokens and advance by that minus `doc_stride`; NER
    windows hold `max_seq_length - 2` pieces with `max_seq_length // 4` of left context.
    """
    spec = getattr(predictor, "spec", None)
    length = getattr(spec, "max_seq_length", None) or max_length
    if task == "ner":
        capacity = length - 2
        step = max(1, capacity - length // 4)

        def count(items: list[Any]) -> int:
            pieces = [len(ids) for ids in tokenizer.encode_ids(list(items))]
            return sum(1 + math.ceil(max(0, n - capacity) / step) for n in pieces)
        return count
    if task == "qa":
        stride = getattr(spec, "doc_stride", 128)
        max_query = getattr(spec, "max_query_length", 64) or length

        def count(items: list[Any]) -> int:
            questions = tokenizer.encode_ids([item["question"] for item in items])
            contexts = tokenizer.encode_ids([item["context"] for item in items])
            total = 0
            for question, context in zip(questions, contexts):
                room = length - 3 - min(len(question), max_query)
                step = max(1, room - stride)
                total += 1 + math.ceil(max(0, len(context) - room) / step)
            return total
        return count
    return len


def _version() -> str:
    from onebert import __version__

    return __version__
