"""Exports run where users run them: ONNX in onnxruntime (and OpenVINO), TorchScript in torch.jit, the
HF directory in transformers; each must give PyTorch's outputs on batch/sequence shapes it was not
traced with, padded and unpadded."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from onebert.infer import export
from onebert.cli import main
from onebert.model import MODEL_CLASSES
from onebert.model.config import BertConfig

WORDS = ["the", "a", "cat", "dog", "sat", "on", "mat", "john", "lives", "in", "paris", "##s", ".", ","]


def _tiny_model_dir(path, architecture: str, seed: int = 0):
    """A random tiny checkpoint of one architecture, with a WordPiece vocab beside it."""
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=5 + len(WORDS), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=37, max_position_embeddings=64,
                        id2label={0: "O", 1: "B-PER", 2: "I-PER"} if architecture.endswith("Classification")
                        else None)
    model = MODEL_CLASSES[architecture](config).eval()
    model.save_pretrained(path)
    (path / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]) + "\n")
    return model


@pytest.mark.parametrize("architecture", sorted(export.OUTPUT_NAMES))
def test_onnx_of_every_head_equals_pytorch_in_onnxruntime_on_unseen_shapes(architecture, tmp_path):
    pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (pip install onnxruntime)")
    model = _tiny_model_dir(tmp_path / "model", architecture)
    loaded = export.load_model(tmp_path / "model")
    assert type(loaded).__name__ == architecture
    path = export.export_onnx(loaded, tmp_path / "model.onnx")
    result = export.compare(model, export.onnxruntime_runner(path), "onnxruntime",
                            shapes=((1, 3), (5, 11), (2, 40)))
    assert set(result.max_abs_diff) == set(export.OUTPUT_NAMES[architecture])
    assert result.passed(atol=1e-5), result.summary()


def test_onnx_graph_declares_dynamic_batch_and_sequence_axes(tmp_path):
    onnx = pytest.importorskip("onnx", reason="onnx is not installed (pip install onnx)")
    model = _tiny_model_dir(tmp_path / "model", "BertForQuestionAnswering")
    graph = onnx.load(str(export.export_onnx(model, tmp_path / "qa.onnx"))).graph
    dims = {v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
            for v in [*graph.input, *graph.output]}
    assert dims == {name: ["batch", "sequence"] for name in
                    ("input_ids", "attention_mask", "token_type_ids", "start_logits", "end_logits")}


def test_export_leaves_the_model_unpadding_and_in_eval_mode(tmp_path):
    model = _tiny_model_dir(tmp_path / "model", "BertModel")
    export.export_torchscript(model, tmp_path / "m.pt")
    assert model.speed.unpadding and not model.training


def test_torchscript_equals_pytorch_on_unseen_shapes(tmp_path):
    model = _tiny_model_dir(tmp_path / "model", "BertForTokenClassification")
    path = export.export_torchscript(model, tmp_path / "ner.pt")
    result = export.compare(model, export.torchscript_runner(path, ("logits",)), "torch.jit",
                            shapes=((1, 4), (6, 23)))
    assert result.passed(atol=1e-5), result.summary()


def test_minilm_onnx_command_writes_a_servable_directory_equal_in_onnxruntime_and_openvino(minilm_dir, tmp_path,
                                                                                           capsys):
    pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (pip install onnxruntime)")
    out = tmp_path / "onnx"
    assert main(["export", "--model", str(minilm_dir), "--format", "onnx", "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "onnxruntime: max |difference| to PyTorch" in printed and "FAILED" not in printed
    assert {"model.onnx", "config.json", "vocab.txt", "tokenizer.json", "modules.json"} <= {
        p.name for p in out.iterdir()}
    model = export.load_model(minilm_dir)
    shapes = ((2, 9), (3, 70))
    assert export.compare(model, export.onnxruntime_runner(out / "model.onnx"), "ort", shapes).passed(atol=1e-4)
    try:
        runner = export.openvino_runner(out / "model.onnx")
    except ImportError:
        pytest.skip("openvino is not installed (pip install openvino); onnxruntime was checked")
    result = export.compare(model, runner, "openvino", shapes)
    assert result.passed(atol=1e-4), result.summary()


def test_hf_directory_loads_in_transformers_with_equal_outputs(tmp_path):
    transformers = pytest.importorskip("transformers")
    model = _tiny_model_dir(tmp_path / "model", "BertForSequenceClassification")
    assert main(["export", "--model", str(tmp_path / "model"), "--format", "hf", "--output",
                 str(tmp_path / "hf")]) == 0
    reference = transformers.AutoModelForSequenceClassification.from_pretrained(str(tmp_path / "hf")).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "hf"))
    batch = tokenizer(["the cat sat on the mat .", "john lives in paris"], ["a dog", "the cats"],
                      padding=True, return_tensors="pt")
    assert batch["input_ids"][0, :4].tolist() == [2, 5, 7, 9]  # [CLS] the cat sat: the vocab travelled
    with torch.no_grad():
        expected = reference(**batch).logits
        ours = model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"]).logits
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=1e-5)
    assert reference.config.id2label == {0: "O", 1: "B-PER", 2: "I-PER"}


def test_minilm_hf_directory_loads_in_transformers_automodel(minilm_dir, tmp_path):
    transformers = pytest.importorskip("transformers")
    out = export.export_hf(minilm_dir, tmp_path / "hf")
    reference = transformers.AutoModel.from_pretrained(str(out)).eval()
    inputs = export.random_batch(reference.config, 3, 21)
    expected = export.torch_outputs(export.load_model(minilm_dir), inputs)
    with torch.no_grad():
        got = reference(**{k: torch.from_numpy(v) for k, v in inputs.items()})
    real = inputs["attention_mask"].astype(bool)
    np.testing.assert_allclose(got.last_hidden_state.numpy()[real], expected["last_hidden_state"][real], atol=1e-5)
    np.testing.assert_allclose(got.pooler_output.numpy(), expected["pooler_output"], atol=1e-5)


def test_export_refuses_to_write_into_the_model_directory(tmp_path, capsys):
    _tiny_model_dir(tmp_path / "model", "BertModel")
    assert main(["export", "--model", str(tmp_path / "model"), "--format", "hf", "--output",
                 str(tmp_path / "model" / "hf")]) == 2
    assert "would write into the model directory" in capsys.readouterr().err
    # A single file beside the weights is fine.
    assert main(["export", "--model", str(tmp_path / "model"), "--format", "torchscript", "--output",
                 str(tmp_path / "model" / "model.pt")]) == 0
