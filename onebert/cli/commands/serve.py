"""`onebert serve`: the model behind an HTTP JSON API with dynamic batching."""

from __future__ import annotations

import argparse

from onebert import ranges
from onebert.cli.options import add_runtime_options, model_or_run_dir

HELP = "serve a model over HTTP: /predict, /embed, /health, /ready, /metrics, OpenAPI at /docs"
DESCRIPTION = (
    "Serve a model directory over HTTP (FastAPI + uvicorn). POST /predict runs the model's task "
    "(config.json onebert.task: classification {\"texts\": [...]} or pairs {\"texts\": [[a, b], ...]}, "
    "ner {\"texts\": [...]}, qa {\"question\": ..., \"context\": ...} or a list of them); POST /embed returns "
    "sentence embeddings for {\"texts\": [...]}. Both also take text-embeddings-inference's {\"inputs\": \"text\"} or "
    "{\"inputs\": [...]} and then answer in its shapes (/embed: a list of vectors; /predict: a list of "
    "{label, score}, the most likely first). GET /health (liveness, each endpoint's max_lengths), GET /ready "
    "(503 until a warm-up forward pass has run), GET /metrics (Prometheus text: requests and errors by endpoint "
    "and status, latency and batch-size histograms, queue depth); the OpenAPI schema is at /openapi.json and "
    "/docs (Swagger UI served locally from swagger-ui-bundle, so it works offline). "
    "Concurrent requests are batched together: up to --max-batch-size items, waiting at most "
    "--max-latency-ms for company; at most --max-queue requests wait, more get 503. Text fields must be "
    "Unicode text: a lone UTF-16 surrogate (the JSON escape \\ud800 alone) gets 422 naming the field and item.")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, metavar="DIR",
                        help="model directory, or a run directory (its best/, else final/)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    parser.add_argument("--port", type=ranges.PORT, default=8000, help="TCP port to listen on")
    parser.add_argument("--max-batch-size", type=ranges.POSITIVE_INT, default=32, help="items per forward pass")
    parser.add_argument("--max-latency-ms", type=ranges.BATCH_WAIT_MS, default=10.0,
                        help="longest a request waits for others to share its batch")
    parser.add_argument("--max-queue", type=ranges.POSITIVE_INT, default=256,
                        help="waiting requests per endpoint before 503")
    parser.add_argument("--max-seq-length", "--max-length", type=ranges.TEXT_LENGTH, default=None, dest="max_length",
                        metavar="N", help="tokens per text (default: /predict the fine-tuning length, /embed the "
                                          "encoder's; /health lists both); longer texts get 422 naming the length "
                                          "(--max-length is the same option)")
    parser.add_argument("--max-texts", type=ranges.POSITIVE_INT, default=128, help="items per request; more get 413")
    parser.add_argument("--max-text-chars", type=ranges.POSITIVE_INT, default=100_000,
                        help="characters per text; more get 413")
    parser.add_argument("--max-body-bytes", type=ranges.POSITIVE_INT, default=4 * 2**20,
                        help="request body size; more get 413")
    parser.add_argument("--request-timeout", type=ranges.REQUEST_TIMEOUT, default=60.0,
                        help="seconds before a request gets 504; its model work stops at the next forward pass")
    parser.add_argument("--max-windows", type=ranges.POSITIVE_INT, default=256, metavar="N",
                        help="model sequences per request (NER and QA split long texts into windows of the "
                             "model's length); a request needing more gets 413, so one client cannot hold the "
                             "model for long")
    parser.add_argument("--max-connections", type=ranges.POSITIVE_INT, default=512, metavar="N",
                        help="open connections; one more is answered 503 and closed")
    parser.add_argument("--client-timeout", type=ranges.REQUEST_TIMEOUT, default=10.0, metavar="SECONDS",
                        help="time a client has to send a whole request (headers and body), from connecting "
                             "or from the previous response; a slower one gets 408 and is disconnected")
    add_runtime_options(parser, inference=True)
    parser.add_argument("--log-level", default="info", choices=("critical", "error", "warning", "info", "debug"),
                        help="server log verbosity")


def run(args: argparse.Namespace) -> int:
    try:
        from onebert.serve.app import ServeSettings, create_app
        from onebert.serve.server import listen, serve_forever
    except ModuleNotFoundError as exc:
        from onebert.errors import OneBertError

        raise OneBertError(f"serving needs {exc.name}: pip install 'onebert[serve]' "
                           f"(fastapi, uvicorn)") from None

    args.model = model_or_run_dir(args.model, "onebert serve")
    settings = ServeSettings(max_batch_size=args.max_batch_size, max_latency_ms=args.max_latency_ms,
                             max_queue=args.max_queue, max_length=args.max_length, max_texts=args.max_texts,
                             max_text_chars=args.max_text_chars, max_body_bytes=args.max_body_bytes,
                             request_timeout_s=args.request_timeout, device=args.device,
                             precision=args.precision, runtime=args.runtime,
                             max_windows=args.max_windows, max_connections=args.max_connections,
                             client_timeout_s=args.client_timeout)
    sock = listen(args.host, args.port)  # a bad or busy port fails now, not after loading the model
    app = create_app(args.model, settings)
    routes = "/predict, /embed" if "predict" in app.state.batchers else "/embed (no task head: no /predict)"
    print(engine_line(app.state.serve), flush=True)
    print(f"serving {args.model} at http://{args.host}:{args.port}: {routes}, /health, /ready, /metrics; "
          f"docs at /docs", flush=True)
    serve_forever(app, host=args.host, port=args.port, log_level=args.log_level, sock=sock)
    return 0


def engine_line(state) -> str:
    """What runs each endpoint's model (runtime and precision, and why when auto chose)."""
    from onebert.infer.engines import ran_on

    predictor = getattr(getattr(state, "predict_batcher", None), "process", None)
    inner = getattr(getattr(predictor, "pipeline", None), "predictor", None)
    parts = [] if inner is None else [f"/predict {ran_on(inner)}"]
    return "; ".join([*parts, f"/embed {ran_on(state.embedder)}"])
