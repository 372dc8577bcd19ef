"""Inference runtimes (onebert/infer/engines.py) and choosing by measurement (onebert/autotune.py).

Exported runtimes must give PyTorch's outputs within their precision's tolerance: fp32 exports to
float rounding, bf16 to bf16's, int8 close enough that labels and embeddings survive (the real
accuracy figures on SST-2, MRPC and CoNLL are BENCHMARKS.md's, from benchmarks/bench_precision_accuracy.py).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from onebert import autotune, runtime as runtimes
from onebert.errors import OneBertError
from onebert.infer import engines
from tiny_finetune import save_random_heads

pytestmark = pytest.mark.usefixtures("one_thread")

SENTENCES = ["the movie was very good", "a bad film", "john lives in paris", "where does mary live ?",
             "the plot and the acting were not good at all , and the film was very very long", "rome"]


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    """Each test measures and exports afresh (and `auto` is really auto: conftest pins torch for the rest)."""
    monkeypatch.setenv("ONEBERT_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("ONEBERT_RUNTIME", raising=False)
    monkeypatch.delenv("ONEBERT_REMEASURE", raising=False)


@pytest.fixture(scope="module")
def task_models(tmp_path_factory):
    from onebert.infer.predictor import TaskSpec

    specs = {"classification": TaskSpec("classification", labels=["neg", "pos"], max_seq_length=32),
             "ner": TaskSpec("ner", labels=["B-LOC", "B-PER", "I-LOC", "I-PER", "O"], max_seq_length=12),
             "qa": TaskSpec("qa", max_seq_length=32, doc_stride=8, max_query_length=8)}
    return save_random_heads(tmp_path_factory.mktemp("engines"), specs)


# ----------------------------------------------------------------------------- choosing by measurement


class FakeClock:
    """Each candidate call advances the clock by its own cost: the measurement is deterministic."""

    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def call(self, cost: float):
        def run():
            self.now += cost
        return run


def test_fastest_picks_the_fastest_and_remembers_it(tmp_path):
    clock = FakeClock()
    key = {"model": "x"}
    choice = autotune.fastest(key, {"ref": clock.call(0.010), "quick": clock.call(0.004)}, clock=clock)
    assert choice.name == "quick" and not choice.cached
    assert choice.seconds == {"ref": pytest.approx(0.010), "quick": pytest.approx(0.004)}
    assert "quick" in choice.explain() and "2.50x the next" in choice.explain()
    # A second run reads the decision: the candidates are not called at all.
    never = {"ref": lambda: pytest.fail("measured again"), "quick": lambda: pytest.fail("measured again")}
    again = autotune.fastest(key, never, clock=clock)
    assert again.name == "quick" and again.cached
    # Another key (another model shape) is measured on its own.
    assert autotune.fastest({"model": "y"}, {"ref": clock.call(0.001), "quick": clock.call(0.004)},
                            clock=clock).name == "ref"


def test_fastest_keeps_the_reference_unless_clearly_faster():
    clock = FakeClock()
    close = autotune.fastest({"k": 1}, {"ref": clock.call(0.0100), "other": clock.call(0.0098)}, clock=clock)
    assert close.name == "ref"  # 2% faster is within the 5% margin: the exact path stays


def test_remeasure_and_a_damaged_choices_file(monkeypatch):
    clock = FakeClock()
    autotune.fastest({"k": 2}, {"ref": clock.call(0.01), "b": clock.call(0.001)}, clock=clock)
    monkeypatch.setenv("ONEBERT_REMEASURE", "1")
    assert autotune.fastest({"k": 2}, {"ref": clock.call(0.001), "b": clock.call(0.01)}, clock=clock).name == "ref"
    monkeypatch.delenv("ONEBERT_REMEASURE")
    (autotune.cache_dir() / autotune.CHOICES_FILE).write_text("{not json", encoding="utf-8")
    choice = autotune.fastest({"k": 2}, {"ref": clock.call(0.01), "b": clock.call(0.001)}, clock=clock)
    assert choice.name == "b" and not choice.cached
    assert json.loads((autotune.cache_dir() / autotune.CHOICES_FILE).read_text(encoding="utf-8"))


def test_the_key_holds_the_machine_and_the_library_versions():
    key = json.loads(autotune._machine_key({"batch": 8}))
    assert key["cpu"] == autotune.cpu_model() and key["threads"] == torch.get_num_threads()
    assert key["torch"] == torch.__version__ and key["batch"] == 8


# ----------------------------------------------------------------------------- what may run where


CPU = torch.device("cpu")


@pytest.mark.parametrize("runtime, precision, message", [
    ("torch", "int8", "not computed by --runtime torch"),
    ("onnxruntime", "bf16", "not computed by --runtime onnxruntime"),
    ("auto", "fp16", "needs a CUDA or XPU device"),
    ("tensorrt", "fp32", "unknown runtime 'tensorrt'"),
    ("torch", "fp8", "unknown precision 'fp8'"),
])
def test_impossible_combinations_are_one_clear_error(runtime, precision, message):
    with pytest.raises(OneBertError, match=message):
        engines.candidates(runtime, precision, CPU, "predictions")


def test_auto_candidates_follow_the_cpu_and_the_purpose(monkeypatch):
    monkeypatch.setattr(engines, "available", lambda name: True)
    monkeypatch.setattr(runtimes, "cpu_has_native_bf16", lambda: True)
    pairs = engines.candidates("auto", "auto", CPU, "predictions")
    assert pairs[0] == ("torch", "fp32")  # the reference first
    assert set(pairs) == {("torch", "fp32"), ("onnxruntime", "fp32"), ("openvino", "fp32"), ("torch", "bf16"),
                          ("openvino", "bf16")}
    assert engines.candidates("auto", "auto", CPU, "embeddings") == [
        ("torch", "fp32"), ("onnxruntime", "fp32"), ("openvino", "fp32")]  # vectors stay fp32 under auto
    assert engines.candidates("auto", "int8", CPU, "predictions") == [("onnxruntime", "int8")]
    monkeypatch.setattr(runtimes, "cpu_has_native_bf16", lambda: False)
    assert ("torch", "bf16") not in engines.candidates("auto", "auto", CPU, "predictions")
    with pytest.raises(OneBertError, match="AVX512-BF16 or AMX"):
        engines.candidates("openvino", "bf16", CPU, "predictions")
    monkeypatch.setenv("ONEBERT_RUNTIME", "torch")
    assert engines.candidates("auto", "fp32", CPU, "predictions") == [("torch", "fp32")]


def test_openvino_runs_beside_a_preloaded_tcmalloc(task_models, tmp_path):
    """The `onebert` command preloads tcmalloc; OpenVINO aborts beside it unless told (engines.openvino_beside_tcmalloc)."""
    pytest.importorskip("openvino")
    from onebert.launcher import find_tcmalloc

    library = find_tcmalloc()
    if library is None:
        pytest.skip("no tcmalloc on this machine (Debian: libtcmalloc-minimal4)")
    inputs = tmp_path / "in.txt"
    inputs.write_text("\n".join(SENTENCES) + "\n", encoding="utf-8")
    env = {**os.environ, "LD_PRELOAD": library}
    env.pop("TBB_ENABLE_SANITIZERS", None)
    done = subprocess.run([sys.executable, "-m", "onebert", "predict", "--model", str(task_models["classification"]),
                           "--input", str(inputs), "--runtime", "openvino", "--precision", "fp32"],
                          capture_output=True, text=True, timeout=180, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "ran on openvino fp32" in done.stderr and len(done.stdout.splitlines()) == len(SENTENCES)


# ----------------------------------------------------------------------------- exported runtimes give PyTorch's outputs


def _texts(texts=SENTENCES):
    from onebert.tasks.readers import TextExample

    return [TextExample(text=text) for text in texts]


def _scores(predictions):
    return np.array([p.probabilities for p in predictions])


@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino"])
def test_fp32_exports_predict_what_torch_predicts(task_models, runtime):
    from onebert.infer.predictor import Predictor

    pytest.importorskip(runtime)
    reference = Predictor.load(task_models["classification"], runtime="torch", precision="fp32")
    exported = Predictor.load(task_models["classification"], runtime=runtime, precision="fp32")
    assert (exported.runtime, exported.precision) == (runtime, "fp32")
    assert isinstance(exported.model, engines.ExportedModel)
    np.testing.assert_allclose(_scores(exported.predict(_texts())), _scores(reference.predict(_texts())),
                               atol=1e-5)


def test_ner_and_qa_run_exported_too(task_models):
    from onebert.infer.predictor import Predictor

    pytest.importorskip("onnxruntime")
    ner = [Predictor.load(task_models["ner"], runtime=r, precision="fp32") for r in ("torch", "onnxruntime")]
    from onebert.tasks.readers import NerExample, QAExample

    sentences = [NerExample(words=text.split()) for text in SENTENCES]
    tags = [[p.tags for p in predictor.predict(sentences)] for predictor in ner]
    assert tags[0] == tags[1]
    qa = [Predictor.load(task_models["qa"], runtime=r, precision="fp32") for r in ("torch", "onnxruntime")]
    examples = [QAExample(id="q1", question="where does john live ?",
                          context="john lives in paris and mary lives in rome , and anna works in london")]
    answers = [predictor.predict(examples)[0] for predictor in qa]
    assert (answers[0].text, answers[0].start) == (answers[1].text, answers[1].start)
    assert answers[0].score == pytest.approx(answers[1].score, abs=1e-4)


def test_exports_are_cached_and_follow_the_weights(task_models):
    from onebert.infer.predictor import Predictor

    pytest.importorskip("onnxruntime")
    first = Predictor.load(task_models["classification"], runtime="onnxruntime", precision="fp32")
    path = first.model.path
    stamp = path.stat().st_mtime_ns
    second = Predictor.load(task_models["classification"], runtime="onnxruntime", precision="fp32")
    assert second.model.path == path and path.stat().st_mtime_ns == stamp  # read, not exported again
    changed = first.torch_model
    with torch.no_grad():
        changed.classifier.bias.add_(1.0)
    assert engines.fingerprint(changed) != path.parent.name  # other weights, another export


def test_auto_measures_once_and_says_what_it_chose(task_models):
    from onebert.infer.predictor import Predictor

    predictor = Predictor.load(task_models["classification"])
    assert predictor.runtime in ("torch", "onnxruntime", "openvino")
    assert predictor.engine_reason.startswith("auto: fastest here") and "measured now" in predictor.engine_reason
    again = Predictor.load(task_models["classification"])
    assert (again.runtime, again.precision) == (predictor.runtime, predictor.precision)
    assert "measured earlier on this machine" in again.engine_reason
    # `onebert info` says what was chosen for models of this shape here.
    import contextlib
    import io

    from onebert.cli.main import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["info", str(task_models["classification"]), "--json"]) == 0
    choices = json.loads(out.getvalue())["measured_choices"]
    assert any(f"{predictor.runtime} {predictor.precision}" in line and line.startswith("predictions")
               for line in choices)


# ----------------------------------------------------------------------------- real weights: bf16 and int8 tolerances


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def test_real_model_embeddings_on_every_runtime(minilm_dir):
    """all-MiniLM-L6-v2 sentence vectors: fp32 exports equal torch's; bf16 and int8 stay close enough for retrieval."""
    from onebert.infer.embedder import Embedder

    pytest.importorskip("onnxruntime")
    texts = SENTENCES * 3
    reference = Embedder(minilm_dir, runtime="torch", precision="fp32").encode(texts)
    ort = Embedder(minilm_dir, runtime="onnxruntime", precision="fp32").encode(texts)
    np.testing.assert_allclose(ort, reference, atol=2e-5)
    int8 = Embedder(minilm_dir, runtime="onnxruntime", precision="int8")
    assert int8.runtime == "onnxruntime" and int8.precision == "int8"
    assert _cosines(int8.encode(texts), reference).min() > 0.98
    if runtimes.cpu_has_native_bf16() and engines.available("openvino"):
        bf16 = Embedder(minilm_dir, runtime="openvino", precision="bf16").encode(texts)
        assert _cosines(bf16, reference).min() > 0.995


def test_cli_runtime_and_int8(task_models, tmp_path):
    pytest.importorskip("onnxruntime")
    inputs = tmp_path / "in.txt"
    inputs.write_text("\n".join(SENTENCES) + "\n", encoding="utf-8")
    command = [sys.executable, "-m", "onebert", "predict", "--model", str(task_models["classification"]),
               "--input", str(inputs)]
    done = subprocess.run([*command, "--runtime", "onnxruntime", "--precision", "int8"], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "ran on onnxruntime int8" in done.stderr
    records = [json.loads(line) for line in done.stdout.splitlines()]
    assert len(records) == len(SENTENCES) and all(r["label"] in ("neg", "pos") for r in records)
    refused = subprocess.run([*command, "--runtime", "torch", "--precision", "int8"], capture_output=True,
                             text=True, timeout=120)
    assert refused.returncode != 0
    assert refused.stderr.strip().splitlines()[-1].endswith(
        "--precision int8 is not computed by --runtime torch here; use --runtime onnxruntime")
    assert "Traceback" not in refused.stderr


def test_export_quantize_int8(minilm_dir, tmp_path):
    pytest.importorskip("onnxruntime")
    from onebert.cli.main import main

    assert main(["export", "--model", str(minilm_dir), "--format", "onnx", "--output", str(tmp_path / "fp32.onnx"),
                 "--no-check"]) == 0
    assert main(["export", "--model", str(minilm_dir), "--format", "onnx", "--quantize", "int8",
                 "--output", str(tmp_path / "int8")]) == 0
    quantized = tmp_path / "int8" / "model.onnx"
    assert quantized.stat().st_size < 0.4 * (tmp_path / "fp32.onnx").stat().st_size  # int8 weights
    assert (tmp_path / "int8" / "vocab.txt").is_file()
    assert main(["export", "--model", str(minilm_dir), "--format", "hf", "--quantize", "int8",
                 "--output", str(tmp_path / "hf")]) != 0
    assert not (tmp_path / "hf").exists()


def test_auto_leaves_out_a_runtime_that_cannot_run_the_model(task_models, monkeypatch):
    """An export that fails (a missing `onnx`, an exporter bug) costs auto a candidate, never the command."""
    from onebert.infer.predictor import Predictor

    def broken(*args, **kwargs):
        raise ImportError("No module named 'onnx'")

    monkeypatch.setattr(engines, "exported", broken)
    said = []
    predictor = Predictor.load(task_models["classification"], precision="fp32", log=said.append)
    assert predictor.runtime == "torch"
    assert any("leaving out onnxruntime fp32" in line for line in said) or not engines.available("onnxruntime")
    with pytest.raises(OneBertError, match="--runtime onnxruntime: cannot run this model"):
        Predictor.load(task_models["classification"], runtime="onnxruntime", precision="fp32")


def test_the_cli_offers_what_the_engines_take():
    """onebert/cli/options.py spells the choices out (it imports nothing heavy); they must stay the engines'."""
    from onebert.cli import options

    assert options.RUNTIMES == engines.RUNTIMES and options.INFERENCE_PRECISIONS == engines.PRECISIONS
