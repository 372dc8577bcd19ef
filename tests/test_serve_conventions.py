"""Serving conventions users bring (issue 15.11): Prometheus /metrics, /ready, text-embeddings-inference's
`{"inputs": ...}` bodies, an offline /docs page, and one truthful maximum length per endpoint.

A real uvicorn on 127.0.0.1 and a real client, as in test_serve.py (whose stand-in predictor is reused).
"""

from __future__ import annotations

import re
import shutil
import threading
import time

import numpy as np
import pytest
import torch

httpx = pytest.importorskip("httpx", reason="serving tests need httpx (pip install 'onebert[serve]')")
pytest.importorskip("fastapi", reason="serving needs fastapi (pip install 'onebert[serve]')")
pytest.importorskip("uvicorn", reason="serving needs uvicorn (pip install 'onebert[serve]')")

from onebert.infer.embedder import Embedder  # noqa: E402
from onebert.model import BertForSequenceClassification  # noqa: E402
from onebert.serve.app import ServeSettings, create_app  # noqa: E402
from onebert.serve.server import background_server  # noqa: E402
from test_serve import SENTENCES, ClassifierStandIn  # noqa: E402


@pytest.fixture(scope="module")
def classifier_dir(minilm_dir, tmp_path_factory):
    directory = tmp_path_factory.mktemp("sentiment")
    torch.manual_seed(0)
    model = BertForSequenceClassification.from_pretrained(minilm_dir, id2label={0: "negative", 1: "positive"})
    torch.nn.init.normal_(model.classifier.weight, std=0.5)
    model.config.onebert = {"task": "classification"}  # fine-tuning length: the default 128
    model.save_pretrained(directory)
    for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copyfile(minilm_dir / name, directory / name)
    return directory


@pytest.fixture(scope="module")
def server(classifier_dir):
    predictor = ClassifierStandIn(classifier_dir)
    app = create_app(classifier_dir, ServeSettings(max_texts=8, max_length=64, device="cpu"), predictor=predictor)
    with background_server(app) as url:
        _wait_ready(url)
        yield url, predictor


def _wait_ready(url: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while httpx.get(f"{url}/ready").status_code != 200:
        assert time.monotonic() < deadline, "the server did not get ready"
        time.sleep(0.05)


# ----------------------------------------------------------------------------- /metrics

_SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(?:[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\]|\\.)*",?)*\})? (\S+)$')


def parse_prometheus(text: str) -> dict[tuple[str, frozenset], float]:
    """A strict reading of the text exposition format: every line a comment or `name{labels} value`,
    every sample of a family declared by # TYPE before it."""
    assert text.endswith("\n")
    samples, declared = {}, {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            assert kind in ("counter", "gauge", "histogram") and name not in declared
            declared[name] = kind
            continue
        if line.startswith("# HELP ") or not line:
            continue
        match = _SAMPLE.match(line)
        assert match, f"not a Prometheus sample: {line!r}"
        name, labels, value = match.group(1), match.group(2) or "", match.group(3)
        family = re.sub(r"_(bucket|sum|count)$", "", name) if name not in declared else name
        assert family in declared, f"{name} has no # TYPE line before it"
        pairs = frozenset(re.findall(r'([a-zA-Z_]\w*)="((?:[^"\\]|\\.)*)"', labels))
        samples[(name, pairs)] = float(value)
    return samples


def _value(samples, name, **labels) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def test_metrics_count_requests_errors_latency_and_batches_as_prometheus_text(server):
    url, _ = server
    before = parse_prometheus(httpx.get(f"{url}/metrics").text)
    with httpx.Client(base_url=url, timeout=30) as client:
        for _ in range(2):
            assert client.post("/embed", json={"texts": SENTENCES[:3]}).status_code == 200
        assert client.post("/predict", json={"texts": SENTENCES[:2]}).status_code == 200
        assert client.post("/predict", json={"texts": ["x"] * 9}).status_code == 413
        assert client.get("/no/such/path").status_code == 404
        response = client.get("/metrics")
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    after = parse_prometheus(response.text)

    def moved(name, **labels):
        return _value(after, name, **labels) - _value(before, name, **labels)

    assert moved("onebert_requests_total", endpoint="/embed", status="200") == 2
    assert moved("onebert_requests_total", endpoint="/predict", status="200") == 1
    assert moved("onebert_errors_total", endpoint="/predict", status="413") == 1
    assert moved("onebert_errors_total", endpoint="other", status="404") == 1  # unknown paths share one label
    assert moved("onebert_errors_total", endpoint="/embed", status="200") == 0
    assert moved("onebert_request_duration_seconds_count", endpoint="/embed") == 2
    assert moved("onebert_batch_size_sum", batcher="embed") == 6 and moved("onebert_batch_size_count",
                                                                           batcher="embed") == 2
    assert _value(after, "onebert_queue_depth", batcher="predict") == 0
    # A histogram's buckets grow with `le`, and the +Inf bucket is its count.
    buckets = sorted(((float(dict(labels)["le"]), v) for (name, labels), v in after.items()
                      if name == "onebert_request_duration_seconds_bucket" and ("endpoint", "/embed") in labels))
    assert [v for _, v in buckets] == sorted(v for _, v in buckets)
    assert buckets[-1] == (float("inf"), _value(after, "onebert_request_duration_seconds_count", endpoint="/embed"))


# ----------------------------------------------------------------------------- /ready


class GatedEmbedder:
    """An Embedder whose forward passes wait for `gate`: the warm-up pass stays pending until the test opens it."""

    def __init__(self, embedder: Embedder) -> None:
        self._embedder = embedder
        self.gate = threading.Event()

    def __getattr__(self, name):
        return getattr(self._embedder, name)

    def encode_result(self, *args, **kwargs):  # what the server's /embed runner calls
        assert self.gate.wait(30), "the test never opened the gate"
        return self._embedder.encode_result(*args, **kwargs)


def test_ready_is_503_until_a_warm_up_forward_pass_has_run_then_200(classifier_dir):
    embedder = GatedEmbedder(Embedder(classifier_dir, device="cpu"))
    app = create_app(classifier_dir, ServeSettings(device="cpu"), predictor=ClassifierStandIn(classifier_dir),
                     embedder=embedder)
    with background_server(app) as url:
        try:
            waiting = httpx.get(f"{url}/ready")
            health = httpx.get(f"{url}/health")
        finally:
            embedder.gate.set()
        _wait_ready(url)
        ready = httpx.get(f"{url}/ready")
        assert httpx.get(f"{url}/health").json()["ready"] is True
    assert waiting.status_code == 503 and "warming up" in waiting.json()["detail"]
    assert waiting.headers["retry-after"] == "1"
    assert health.status_code == 200 and health.json()["ready"] is False  # alive, not ready
    assert ready.status_code == 200 and ready.json() == {"status": "ready"}


# ----------------------------------------------------------------------------- TEI bodies


def test_tei_inputs_on_embed_and_predict_equal_the_texts_form_in_tei_shapes(server):
    url, _ = server
    texts = SENTENCES[:3]
    with httpx.Client(base_url=url, timeout=30) as client:
        embedded = client.post("/embed", json={"texts": texts}).json()["embeddings"]
        tei_one = client.post("/embed", json={"inputs": texts[0]}).json()
        tei_many = client.post("/embed", json={"inputs": texts}).json()
        predicted = client.post("/predict", json={"texts": texts}).json()["predictions"]
        label_one = client.post("/predict", json={"inputs": texts[0]}).json()
        label_many = client.post("/predict", json={"inputs": texts}).json()
        both = client.post("/embed", json={"texts": texts, "inputs": texts})
        neither = client.post("/predict", json={})
    np.testing.assert_allclose(tei_one, embedded[:1], atol=1e-6)  # TEI: a list of vectors, for one text too
    np.testing.assert_allclose(tei_many, embedded, atol=1e-6)

    def tei(prediction):  # every label, the most likely first
        return sorted(({"label": k, "score": v} for k, v in prediction["scores"].items()), key=lambda d: -d["score"])

    def same(have, want):
        return [d["label"] for d in have] == [d["label"] for d in want] and \
            [d["score"] for d in have] == pytest.approx([d["score"] for d in want], abs=1e-6)

    assert same(label_one, tei(predicted[0]))
    assert len(label_many) == len(predicted) and all(same(h, tei(p)) for h, p in zip(label_many, predicted))
    assert label_one[0]["label"] == predicted[0]["label"]
    assert both.status_code == 422 and "exactly one of 'texts'" in both.text
    assert neither.status_code == 422 and "exactly one of 'texts'" in neither.text


# ----------------------------------------------------------------------------- /docs


def test_docs_page_loads_only_local_assets_and_they_are_served(server):
    url, _ = server
    page = httpx.get(f"{url}/docs")
    assert page.status_code == 200 and "swagger" in page.text.lower()
    references = re.findall(r'(?:src|href)=["\']([^"\']+)["\']|url:\s*["\']([^"\']+)["\']', page.text)
    urls = [a or b for a, b in references]
    assert urls and all(u.startswith("/") and not u.startswith("//") for u in urls), urls
    script = next(u for u in urls if u.endswith(".js"))
    asset = httpx.get(f"{url}{script}")
    assert asset.status_code == 200 and "javascript" in asset.headers["content-type"] and len(asset.content) > 10_000
    assert httpx.get(f"{url}/redoc").status_code == 404  # ReDoc would load from a CDN: not offered


def test_docs_without_the_swagger_assets_is_a_page_that_says_how_to_install_them(classifier_dir, monkeypatch):
    import onebert.serve.docs

    monkeypatch.setattr(onebert.serve.docs, "swagger_assets_dir", lambda: None)
    app = create_app(classifier_dir, ServeSettings(device="cpu"), predictor=ClassifierStandIn(classifier_dir))
    with background_server(app) as url:
        page = httpx.get(f"{url}/docs")
    assert page.status_code == 200 and "pip install swagger-ui-bundle" in page.text and "/openapi.json" in page.text


# ----------------------------------------------------------------------------- one max length per endpoint


def test_health_max_lengths_are_what_embed_and_predict_enforce(classifier_dir):
    """The real pipeline reads the fine-tuning length (128) on /predict, the encoder its own (512) on /embed."""
    with background_server(create_app(classifier_dir, ServeSettings(device="cpu"))) as url:
        lengths = httpx.get(f"{url}/health").json()["max_lengths"]
        assert lengths == {"predict": 128, "embed": 512}

        def text(tokens: int) -> str:  # "word" is one token; [CLS] and [SEP] are the other two
            return "word " * (tokens - 2)

        with httpx.Client(base_url=url, timeout=60) as client:
            fits = client.post("/predict", json={"texts": [text(128)]})
            too_long = client.post("/predict", json={"texts": [text(129)]})
            embed_fits = client.post("/embed", json={"inputs": text(512)})
            embed_too_long = client.post("/embed", json={"texts": [text(513)]})
    assert fits.status_code == 200 and embed_fits.status_code == 200
    assert too_long.status_code == 422, too_long.text  # it was cut at 128 tokens silently
    assert "129 tokens; the model reads at most 128 on /predict" in too_long.json()["detail"][0]["msg"]
    assert embed_too_long.status_code == 422
    assert "513 tokens; the model reads at most 512 on /embed" in embed_too_long.json()["detail"][0]["msg"]
