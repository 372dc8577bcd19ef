"""Building the server for one model directory: settings, model loading, wiring, start-up and shut-down.

`create_app(model_dir)` loads everything before it returns, so a bad model directory fails at start-up,
not at the first request. The endpoints are in `onebert.serve.routes` (the /predict body is declared
for the model's task, so the OpenAPI schema and its validation errors say exactly what this model
takes), the request checks in `onebert.serve.limits`, the batching in `onebert.serve.batching`, the
Prometheus metrics in `onebert.serve.metrics` and the offline /docs page in `onebert.serve.docs`:

- classification: `{"texts": ["a", ...]}` or sentence pairs `{"texts": [["a", "b"], ...]}`
- ner: `{"texts": ["a", ...]}`
- qa: `{"question": ..., "context": ...}` or a list of such objects
- /embed and the text bodies also take text-embeddings-inference's `{"inputs": ...}`

Limits, each with its own status: a body over `max_body_bytes`, more than `max_texts` items, a
text over `max_text_chars` characters or a request needing more than `max_windows` model sequences
(NER and QA split long texts into windows) -> 413; a malformed body (wrong type, empty list, unknown
field, a lone UTF-16 surrogate such as "\ud800" that JSON can escape but that is no character) ->
422 naming the field (a validation error echoes at most a few hundred characters of the input);
for classification and embeddings, a text longer than the endpoint's maximum length (/health's
`max_lengths`: /predict reads the fine-tuning length, /embed the encoder's) -> 422 naming the item
and the length (the model cannot read the rest, and cutting it silently would answer a different
question); a full queue -> 503 with Retry-After; no answer within `request_timeout_s` -> 504.

Once started, one warm-up forward pass runs through the encoder (the one /predict shares when the
model is loaded from the directory); `/ready` answers 503 until it has, `/health` 200 from the start.

A request that times out or whose client disconnects stops using the model at the next forward
pass (see `onebert.serve.batching`), so it cannot keep the single model thread from other requests.
Connection limits (`max_connections`, `client_timeout_s`) are enforced in `onebert.serve.server`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable

from fastapi import FastAPI
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from onebert.errors import OneBertError
import onebert.serve.routes as routes
from onebert.serve.batching import DynamicBatcher, raise_if_abandoned
from onebert.serve.docs import ASSETS_URL, add_docs
from onebert.serve.limits import BodySizeLimit, RequestLimits, validation_error_body
from onebert.serve.metrics import RequestMetrics, ServerMetrics
from onebert.tasks import TASKS, get_task

log = logging.getLogger(__name__)


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
    precision: str = "auto"  # and runtime: as `onebert predict` (onebert.infer.engines); embeddings stay fp32 under auto
    runtime: str = "auto"
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


# ----------------------------------------------------------------------------- loading


def _model_task(model_dir: Path) -> str | None:
    from onebert.model.config import BertConfig

    task = BertConfig.load(model_dir).onebert.get("task")
    if task is not None and task not in TASKS:
        raise OneBertError(f"{model_dir / 'config.json'}: onebert.task is {task!r}; expected one of {', '.join(TASKS)}")
    return task


def _load_pipeline(model_dir: Path, task: str, settings: ServeSettings) -> Callable[[list[Any]], list[Any]]:
    from onebert.infer.pipeline import Pipeline
    from onebert.infer.predictor import Predictor

    # `auto` times the runtimes at batch 1: a server is judged by a request's latency (under load its batches
    # grow, where the runtimes measured closer together).
    predictor = Predictor.load(model_dir, device=settings.device, batch_size=settings.max_batch_size,
                               max_length=settings.max_length, task=task, precision=settings.precision,
                               runtime=settings.runtime, timing_batch=1)
    # onebert's own records (not the pipeline's transformers-shaped answers): /predict's format.
    return Pipeline(predictor).record_predictor()


def _load_models(model_dir: Path, settings: ServeSettings, predictor, task: str | None, embedder):
    """(task, predictor, embedder): the given ones, else those config.json names (see create_app)."""
    from onebert.infer.embedder import Embedder, checkpoint_settings
    from onebert.model import BertPreTrainedModel
    from onebert.tokenizer import Tokenizer

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
        shared = getattr(predictor, "torch_model", None) or getattr(predictor, "model", None)
        declared = checkpoint_settings(model_dir)
        if isinstance(shared, BertPreTrainedModel):
            embedder = Embedder(shared, pooling=declared.pooling, normalize=declared.normalize,
                                tokenizer=Tokenizer.from_pretrained(model_dir), max_length=settings.max_length,
                                device=settings.device, precision=settings.precision, runtime=settings.runtime,
                                timing_batch=1)
        else:
            embedder = Embedder.from_checkpoint(model_dir, max_length=settings.max_length, device=settings.device,
                                                precision=settings.precision, runtime=settings.runtime, timing_batch=1)
    return task, predictor, embedder


def _embedding_runner(embedder, batch_size: int) -> Callable[[list[tuple[str, str, bool]]], list[list[float]]]:
    """The embed batcher's `process`: (text, pooling, normalize) items, one encode call per setting."""

    def run_embeddings(items: list[tuple[str, str, bool]]) -> list[list[float]]:
        vectors: list[Any] = [None] * len(items)
        groups: dict[tuple[str, bool], list[int]] = {}
        for i, (_, pooling, normalize) in enumerate(items):
            groups.setdefault((pooling, normalize), []).append(i)
        for (pooling, normalize), rows in groups.items():
            result = embedder.encode_result([items[i][0] for i in rows], batch_size=batch_size,
                                            pooling=pooling, normalize=normalize)
            for i, vector in zip(rows, result.embeddings):
                vectors[i] = vector.tolist()
        return vectors
    return run_embeddings


def _predict_length_and_windows(task: str | None, predictor: Any, tokenizer, embed_length: int
                                ) -> tuple[int, Callable[[list[Any]], int]]:
    """The length /predict reads (the predictor's fine-tuning `max_seq_length`, else the encoder's) and
    `count(items)`: about how many model sequences of it the items need (the task's `count_windows`)."""
    spec = getattr(predictor, "spec", None)
    length = getattr(spec, "max_seq_length", None) or embed_length
    if task is None:
        return length, len
    window_spec = spec if getattr(spec, "max_seq_length", None) else SimpleNamespace(max_seq_length=length)
    counter = get_task(task).count_windows
    return length, lambda items: counter(tokenizer, items, window_spec)


# ----------------------------------------------------------------------------- start-up and shut-down


async def _warm_up(state: routes.ServeState, executor: ThreadPoolExecutor,
                   run_embeddings: Callable[[list[Any]], list[Any]]) -> None:
    """One forward pass through the encoder (first passes are slow: lazy allocation, kernel choice); then ready."""
    embedder = state.embedder
    try:
        await asyncio.get_running_loop().run_in_executor(
            executor, run_embeddings, [("warm up", embedder.pooling, embedder.normalize)])
    except Exception as exc:  # noqa: BLE001 - /ready says what went wrong; /health and requests still answer
        log.exception("warm-up forward pass failed")
        state.not_ready_reason = f"the warm-up forward pass failed: {type(exc).__name__}: {exc}"
        return
    state.ready = True


def _lifespan(state: routes.ServeState, executor: ThreadPoolExecutor, run_embeddings):
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        for batcher in state.batchers:
            await batcher.start()
        warm_up = asyncio.create_task(_warm_up(state, executor, run_embeddings), name="onebert-warm-up")
        try:
            yield
        finally:
            warm_up.cancel()
            for batcher in state.batchers:
                await batcher.stop()
            executor.shutdown(wait=False, cancel_futures=True)
    return lifespan


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def explain_validation_error(request, exc: RequestValidationError):
        # FastAPI's default echoes the whole input (MBs) and fails with 500 on NaN or a lone surrogate.
        return JSONResponse(validation_error_body(exc), status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def explain_http_error(request, exc: StarletteHTTPException):
        if exc.status_code == 400 and isinstance(exc.__cause__, UnicodeDecodeError):
            # FastAPI's own message ("There was an error parsing the body") does not say what is wrong.
            exc.detail = f"the body is not valid UTF-8 (byte {exc.__cause__.start}); send JSON text"
        return await http_exception_handler(request, exc)


def _endpoint_label(app: FastAPI) -> Callable[[str], str]:
    """A request path -> its metrics label: a route's path, the docs assets, or "other"."""
    known: set[str] = set()

    def label(path: str) -> str:
        if not known:
            known.update(getattr(route, "path", "") for route in app.routes)
        if path in known:
            return path
        return ASSETS_URL if path.startswith(ASSETS_URL + "/") else "other"
    return label


# ----------------------------------------------------------------------------- the app


def create_app(model_dir: str | os.PathLike, settings: ServeSettings | None = None, *,
               predictor: Callable[[list[Any]], list[Any]] | None = None, task: str | None = None,
               embedder=None) -> FastAPI:
    """The server for one model directory.

    predictor: `predictor(inputs) -> outputs` in `Pipeline.records`' format; default: the pipeline's
    for the task in config.json (`onebert.task`). task: the predictor's task when it is given
    (default: its `.task`, else config.json's). embedder: an `onebert.infer.embedder.Embedder`
    (default: one for this directory; it shares the predictor's encoder when it exposes `.model`).
    """
    from onebert.tokenizer import Tokenizer

    model_dir = Path(model_dir)
    settings = settings or ServeSettings()
    task, predictor, embedder = _load_models(model_dir, settings, predictor, task, embedder)
    embed_length = embedder.max_length
    # Its own tokenizer: the workers' tokenizers change truncation settings while they run.
    length_tokenizer = Tokenizer.from_pretrained(model_dir)
    predict_length, windows = _predict_length_and_windows(task, predictor, length_tokenizer, embed_length)
    # Before every forward pass: stop a batch whose requests all timed out or disconnected.
    for module in {id(m): m for m in (getattr(predictor, "model", None), embedder.model)}.values():
        if hasattr(module, "register_forward_pre_hook"):
            module.register_forward_pre_hook(lambda _module, _args: raise_if_abandoned())

    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="onebert-model")
    metrics = ServerMetrics()
    # Waiting for company longer than half the timeout only turns requests into 504s.
    batching = dict(executor=executor, max_batch_size=settings.max_batch_size, max_queue=settings.max_queue,
                    max_latency_ms=min(settings.max_latency_ms, settings.request_timeout_s * 500))
    run_embeddings = _embedding_runner(embedder, settings.max_batch_size)
    embed_batcher = DynamicBatcher("embed", run_embeddings, **batching,
                                   on_batch=lambda n: metrics.record_batch("embed", n))
    predict_batcher = None if predictor is None else DynamicBatcher(
        "predict", predictor, **batching, on_batch=lambda n: metrics.record_batch("predict", n))
    state = routes.ServeState(
        settings=settings, model_dir=model_dir, task=task, embedder=embedder,
        limits=RequestLimits(settings, length_tokenizer, windows, predict_length),
        max_lengths={"embed": embed_length, **({"predict": predict_length} if predictor is not None else {})},
        embed_batcher=embed_batcher, predict_batcher=predict_batcher, metrics=metrics)

    title = f"BERT model `{model_dir.name}`" + (f", task {task}" if task else ", no task head")
    app = FastAPI(title="onebert", version=_version(), docs_url=None, redoc_url=None,
                  description=title + ". Bodies are JSON; see each operation for its shape and limits.",
                  lifespan=_lifespan(state, executor, run_embeddings))
    app.state.settings = settings
    app.state.batchers = {b.name: b for b in state.batchers}
    app.state.serve = state
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(RequestMetrics, metrics=metrics, endpoint_of=_endpoint_label(app))  # outermost: sees 413s
    _add_error_handlers(app)
    routes.add_status_routes(app, state)
    routes.add_embed_route(app, state)
    routes.add_predict_route(app, state, get_task(task).serve_request if task else "")
    add_docs(app, f"onebert: {model_dir.name}")
    return app


def _version() -> str:
    from onebert import __version__

    return __version__
