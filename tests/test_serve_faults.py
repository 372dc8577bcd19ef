"""The server under hostile or unlucky clients (issue 12): work nobody waits for, bodies JSON allows but
text does not, huge echoes, slow and too many connections, bad ports.

Everything talks to 127.0.0.1 only; every loop is bounded in count and time. The model is a stand-in
whose "forward pass" sleeps, so the tests can tell whether work stopped, without a big model.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest
import torch

httpx = pytest.importorskip("httpx", reason="serving tests need httpx (pip install 'onebert[serve]')")
pytest.importorskip("fastapi", reason="serving needs fastapi (pip install 'onebert[serve]')")
pytest.importorskip("uvicorn", reason="serving needs uvicorn (pip install 'onebert[serve]')")

from onebert.serve.app import ServeSettings, create_app  # noqa: E402
from onebert.serve.server import background_server  # noqa: E402

PASS_S = 0.1  # one stand-in forward pass


class SleepyPass(torch.nn.Module):
    """A forward pass that takes PASS_S and counts itself."""

    def __init__(self) -> None:
        super().__init__()
        self.passes = 0

    def forward(self, x):
        self.passes += 1
        time.sleep(PASS_S)
        return x


class WindowedQA:
    """onebert.pipeline's QA contract; one forward pass per 100 characters of context, like windows."""

    task = "qa"
    spec = SimpleNamespace(max_seq_length=64, doc_stride=16, max_query_length=16)

    def __init__(self) -> None:
        self.model = SleepyPass()

    def __call__(self, items):
        for item in items:
            for _ in range(max(1, len(item["context"]) // 100)):
                self.model(torch.zeros(1))
        return [{"answer": item["context"][:1], "start": 0, "end": 1, "score": 0.5} for item in items]


BIG = {"question": "Who?", "context": "x" * 6000}  # 60 passes: 6 s of model time
SMALL = {"question": "Who?", "context": "John did."}


@pytest.fixture
def qa_server(minilm_dir):
    def start(**overrides):
        predictor = WindowedQA()
        settings = ServeSettings(**{"max_latency_ms": 0, "max_windows": 100_000, "device": "cpu", **overrides})
        return predictor, background_server(create_app(minilm_dir, settings, predictor=predictor, task="qa"))
    return start


def test_a_timed_out_request_stops_and_the_next_small_one_answers_promptly(qa_server):
    predictor, server = qa_server(request_timeout_s=0.5)
    with server as url:
        big = httpx.post(f"{url}/predict", json=BIG, timeout=30)
        assert big.status_code == 504, big.text
        started = time.perf_counter()
        small = httpx.post(f"{url}/predict", json=SMALL, timeout=30)
        waited = time.perf_counter() - started
        health = httpx.get(f"{url}/health").json()
    assert small.status_code == 200 and small.json()["predictions"][0]["answer"] == "J", small.text
    # Before: the small request queued behind the big one's remaining 5.5 s and got 504 too.
    assert waited < 3.0, f"the small request waited {waited:.2f} s"
    assert predictor.model.passes < 30  # the big one's 60 passes were not all run
    assert health["batching"]["predict"]["abandoned"] == 1


def test_a_client_that_disconnects_frees_the_model_for_the_next_request(qa_server):
    predictor, server = qa_server(request_timeout_s=60)
    with server as url:
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(f"{url}/predict", json=BIG, timeout=0.5)  # the client gives up and closes
        started = time.perf_counter()
        small = httpx.post(f"{url}/predict", json=SMALL, timeout=30)
        waited = time.perf_counter() - started
    assert small.status_code == 200, small.text
    assert waited < 3.0, f"the small request waited {waited:.2f} s behind a disconnected client's work"
    assert predictor.model.passes < 30


def test_a_request_needing_too_many_windows_gets_413_naming_the_cap_and_option(qa_server):
    predictor, server = qa_server(max_windows=10)
    # ~600 context tokens; windows of 64 tokens (60 for context) advancing by 60 - 16: 14 windows.
    long = {"question": "Who?", "context": "word " * 600}
    with server as url:
        refused = httpx.post(f"{url}/predict", json=[SMALL, long], timeout=30)
        fine = httpx.post(f"{url}/predict", json=[SMALL] * 10, timeout=30)
    assert refused.status_code == 413, refused.text
    assert "about 15 model sequences" in refused.text and "is 10 (server option --max-windows)" in refused.text
    assert predictor.model.passes == 10 and fine.status_code == 200


def test_a_huge_max_latency_does_not_hold_a_lone_request_until_its_timeout(qa_server):
    predictor, server = qa_server(max_latency_ms=60_000, request_timeout_s=4)  # the largest `serve` accepts
    with server as url:
        started = time.perf_counter()
        response = httpx.post(f"{url}/predict", json=SMALL, timeout=30)
        waited = time.perf_counter() - started
    assert response.status_code == 200 and waited < 3.5, (response.status_code, waited)


# ----------------------------------------------------------------------------- bodies that JSON allows


@pytest.fixture(scope="module")
def default_server(minilm_dir):
    app = create_app(minilm_dir, ServeSettings(device="cpu"), predictor=WindowedQA(), task="qa")
    with background_server(app) as url:
        yield url


@pytest.mark.parametrize("route, body, loc, needle", [
    ("/embed", b'{"texts": ["ok", "a\\ud800"]}', ["body", "texts", 1], "character 1 is a lone UTF-16 surrogate"),
    # pydantic rejects a lone surrogate itself in some places (string_unicode); the error body must survive it.
    ("/predict", b'{"question": "Who?", "context": "\\udfff"}', ["body", "QuestionRequest", "context"], "unicode"),
    ("/embed", b'{"texts": ["a"], "normalize": NaN}', ["body", "normalize"], "valid boolean"),
    ("/embed", b'{"texts": [Infinity]}', ["body", "texts", 0], "valid string"),
    ("/embed", b'{"texts": ["a"], "\\ud800": 1}', ["body"], "unicode"),
    ("/embed", b'{"texts": ["a"], "pooling": "\\ud800"}', ["body", "pooling"], "unicode"),
])
def test_valid_json_that_is_no_valid_text_gets_422_naming_the_field_not_500(default_server, route, body, loc, needle):
    response = httpx.post(f"{default_server}{route}", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 422, response.text
    error = response.json()["detail"][0]
    assert error["loc"] == loc and needle in error["msg"], error


def test_a_validation_error_echoes_a_few_hundred_characters_not_the_whole_body(default_server):
    body = {"texts": "y" * 3_000_000}  # a string where a list belongs; the default body limit is 4 MiB
    response = httpx.post(f"{default_server}/embed", json=body, timeout=30)
    assert response.status_code == 422 and "valid list" in response.text
    assert len(response.content) < 1000, len(response.content)
    assert "(3000000 characters)" in response.json()["detail"][0]["input"]


# ----------------------------------------------------------------------------- connections


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


def _read_until_closed(sock: socket.socket, limit_s: float) -> bytes:
    """What the server sends before it closes; stops after limit_s (the caller checks it did close)."""
    sock.settimeout(0.2)
    received, deadline = b"", time.monotonic() + limit_s
    while time.monotonic() < deadline and len(received) < 65536:
        try:
            chunk = sock.recv(4096)
        except socket.timeout:
            continue
        except ConnectionResetError:
            return received + b"<reset>"
        if not chunk:
            return received + b"<closed>"
        received += chunk
    return received


def test_slow_clients_are_cut_off_and_connections_beyond_the_cap_refused(qa_server):
    _, server = qa_server(max_connections=6, client_timeout_s=1.0)
    with server as url:
        port = _port(url)
        slow = []
        for i in range(4):  # half a request line and headers
            sock = socket.create_connection(("127.0.0.1", port), timeout=5)
            sock.sendall(b"POST /embed HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            slow.append(sock)
        body = socket.create_connection(("127.0.0.1", port), timeout=5)  # whole headers, a tenth of the body
        body.sendall(b"POST /embed HTTP/1.1\r\nHost: 127.0.0.1\r\ncontent-type: application/json\r\n"
                     b"content-length: 100\r\n\r\n{\"texts\": ")
        kept = socket.create_connection(("127.0.0.1", port), timeout=5)  # one request, then half the next
        kept.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        first = kept.recv(65536)
        kept.sendall(b"GET /health HTTP/1.1\r\nHo")
        slow += [body, kept]
        time.sleep(0.2)
        refused = httpx.get(f"{url}/health", timeout=5)  # a seventh connection
        started = time.perf_counter()
        endings = [_read_until_closed(sock, limit_s=5) for sock in slow]
        took = time.perf_counter() - started
        after = httpx.get(f"{url}/health", timeout=5)
        for sock in slow:
            sock.close()
    assert first.startswith(b"HTTP/1.1 200")
    assert refused.status_code == 503 and "--max-connections" in refused.text, refused.text
    assert refused.headers["retry-after"] == "1"
    assert all(e.endswith((b"<closed>", b"<reset>")) for e in endings), endings
    assert all(e.startswith(b"HTTP/1.1 408") and b"--client-timeout" in e for e in endings[:5]), endings
    assert took < 4.0 and after.status_code == 200


def test_a_normal_request_within_the_client_timeout_is_untouched_even_when_the_model_is_slow(qa_server):
    _, server = qa_server(client_timeout_s=0.3, request_timeout_s=10)
    with server as url, httpx.Client(base_url=url, timeout=30) as client:
        answers = [client.post("/predict", json={"question": "Who?", "context": "x" * 500}) for _ in range(2)]
    # Each takes 0.5 s of model time, longer than the client timeout: the deadline is for receiving only.
    assert [a.status_code for a in answers] == [200, 200]


# ----------------------------------------------------------------------------- the command


def _serve(model_dir, port: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "onebert", "serve", "--model", str(model_dir), "--port", port,
                           "--device", "cpu", "--log-level", "warning"],
                          capture_output=True, text=True, timeout=120)


def test_serve_with_an_impossible_port_is_one_error_line(minilm_dir):
    result = _serve(minilm_dir, "99999")
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.strip().splitlines() == [
        "onebert serve: error: argument --port: must be an integer in 1..65535, got '99999'"]


def test_serve_on_a_busy_port_is_one_error_line(minilm_dir):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        result = _serve(minilm_dir, str(port))
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and f"cannot listen on 127.0.0.1:{port}" in lines[0], lines


def test_the_real_pipeline_stops_a_timed_out_request_between_forward_passes(minilm_dir, tmp_path):
    """The hook the server puts on the model fires inside onebert.pipeline's batch loop too."""
    import shutil

    from onebert.model import BertForSequenceClassification

    model = BertForSequenceClassification.from_pretrained(minilm_dir, id2label={0: "negative", 1: "positive"})
    model.config.onebert = {"task": "classification"}
    model.save_pretrained(tmp_path)
    for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copyfile(minilm_dir / name, tmp_path / name)
    settings = ServeSettings(max_batch_size=1, max_latency_ms=0, request_timeout_s=0.2, device="cpu")
    with background_server(create_app(tmp_path, settings)) as url:
        texts = [f"sentence number {i} " + "with many ordinary words " * 10 for i in range(128)]
        assert httpx.post(f"{url}/predict", json={"texts": texts}, timeout=30).status_code == 504
        deadline, stats = time.monotonic() + 20, {}
        while time.monotonic() < deadline:
            stats = httpx.get(f"{url}/health").json()["batching"]["predict"]
            if stats.get("abandoned") or stats["batches"]:
                break
            time.sleep(0.1)
    assert stats.get("abandoned") == 1 and stats["batches"] == 0, stats  # stopped, not finished
