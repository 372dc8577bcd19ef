"""Sentence embeddings: equal to sentence-transformers on the real MiniLM checkpoint (its `encode` API:
a string, a list, normalize_embeddings, tensors), in input order, long texts cut and counted, the
checkpoint's pooling and Normalize module honoured by `embed()` too, and the `onebert embed` command."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from onebert.cli import main
from onebert.infer.embedder import Embedder, checkpoint_settings, embed
from onebert.errors import OneBertError

TEXTS = [
    "A man is eating food.",
    "",
    "The quick brown fox jumps over the lazy dog; ÜNICODE, café and naïve résumé — all lower-cased.",
    "short",
    "Sentence embeddings place similar meanings close together in vector space.",
    "word " * 300,  # 300 word pieces: longer than MiniLM's 256-token limit
]


@pytest.fixture(scope="module")
def minilm_embedder(minilm_dir):
    return Embedder(minilm_dir, device="cpu")


@pytest.fixture(scope="module")
def reference(minilm_dir):
    """sentence-transformers itself, run offline on the same checkpoint directory."""
    sentence_transformers = pytest.importorskip(
        "sentence_transformers", reason="sentence-transformers is not installed (pip install sentence-transformers)")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_HUB_OFFLINE", "1")
        return sentence_transformers.SentenceTransformer(str(minilm_dir), device="cpu")


def test_checkpoint_settings_follow_sentence_transformers_files(minilm_dir):
    settings = checkpoint_settings(minilm_dir)
    assert (settings.pooling, settings.normalize, settings.max_length) == ("mean", True, 256)


def test_mean_pooled_normalised_embeddings_equal_sentence_transformers(minilm_embedder, reference):
    expected = reference.encode(TEXTS, batch_size=4, convert_to_numpy=True)
    vectors = minilm_embedder.encode(TEXTS, batch_size=4)
    assert vectors.shape == (len(TEXTS), 384) and vectors.dtype == np.float32
    np.testing.assert_allclose(vectors, expected, atol=2e-6, rtol=0)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-6)


def test_encode_of_a_single_string_gives_one_vector_as_sentence_transformers(minilm_embedder, reference):
    vector = minilm_embedder.encode("hello world")  # not one vector per character
    assert vector.shape == (384,) and vector.dtype == np.float32
    np.testing.assert_allclose(vector, reference.encode("hello world"), atol=1e-5, rtol=0)


@pytest.mark.parametrize("normalize", [False, True])
def test_encode_normalize_embeddings_equals_sentence_transformers(minilm_embedder, reference, normalize):
    """MiniLM has a Normalize module: sentence-transformers normalises whatever normalize_embeddings says."""
    got = minilm_embedder.encode(TEXTS[:4], normalize_embeddings=normalize)
    np.testing.assert_allclose(got, reference.encode(TEXTS[:4], normalize_embeddings=normalize), atol=1e-5, rtol=0)


def test_normalize_embeddings_normalises_a_checkpoint_without_a_normalize_module(minilm_dir):
    plain = Embedder(minilm_dir, normalize=False, device="cpu")
    assert np.linalg.norm(plain.encode("hello world")) > 2
    np.testing.assert_allclose(np.linalg.norm(plain.encode(TEXTS[:3], normalize_embeddings=True), axis=1), 1.0,
                               atol=1e-6)


def test_encode_returns_tensors_as_sentence_transformers(minilm_embedder, reference):
    listed = minilm_embedder.encode(TEXTS[:3], convert_to_numpy=False)
    expected = reference.encode(TEXTS[:3], convert_to_numpy=False)
    assert isinstance(listed, list) and isinstance(expected, list) and len(listed) == 3
    for have, want in zip(listed, expected):
        torch.testing.assert_close(have, want.cpu(), atol=1e-5, rtol=0)
    stacked = minilm_embedder.encode(TEXTS[:3], convert_to_tensor=True)
    assert isinstance(stacked, torch.Tensor) and stacked.shape == (3, 384)
    torch.testing.assert_close(stacked, reference.encode(TEXTS[:3], convert_to_tensor=True).cpu(), atol=1e-5, rtol=0)
    single = minilm_embedder.encode("hello world", convert_to_numpy=False)
    assert isinstance(single, torch.Tensor) and single.shape == (384,)


def test_embed_function_follows_the_checkpoint_normalize_module(minilm_dir):
    vectors = embed(minilm_dir, ["hello world", TEXTS[2]], device="cpu")
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-6)
    raw = embed(minilm_dir, ["hello world"], normalize=False, device="cpu")
    assert np.linalg.norm(raw) > 2  # asked for explicitly: the raw mean


def test_embedder_is_exported_at_the_top_level():
    import onebert

    assert onebert.Embedder is Embedder and "Embedder" in onebert.__all__


def test_bf16_precision_runs_under_autocast_and_stays_close(minilm_dir, minilm_embedder):
    bf16 = Embedder(minilm_dir, device="cpu", precision="bf16")
    assert bf16.precision == "bf16"
    vectors = bf16.encode(TEXTS[:4])
    assert vectors.dtype == np.float32
    np.testing.assert_allclose(vectors, minilm_embedder.encode(TEXTS[:4]), atol=3e-2, rtol=0)
    assert not np.allclose(vectors, minilm_embedder.encode(TEXTS[:4]), atol=1e-6)  # autocast really ran


def test_cls_and_pooler_pooling_equal_transformers_bert(minilm_dir):
    transformers = pytest.importorskip("transformers")
    reference = transformers.BertModel.from_pretrained(str(minilm_dir)).eval()
    texts = TEXTS[:5]
    from onebert.tokenizer import Tokenizer

    batch = Tokenizer.from_pretrained(minilm_dir)(texts, return_offsets_mapping=False, return_word_ids=False)
    with torch.no_grad():
        out = reference(**batch)
    cls = embed(minilm_dir, texts, pooling="cls", normalize=False, batch_size=2, device="cpu")
    pooler = embed(minilm_dir, texts, pooling="pooler", normalize=True, batch_size=2, device="cpu")
    np.testing.assert_allclose(cls, out.last_hidden_state[:, 0].numpy(), atol=2e-5, rtol=0)
    np.testing.assert_allclose(pooler, torch.nn.functional.normalize(out.pooler_output).numpy(), atol=2e-6, rtol=0)


def test_rows_come_back_in_input_order_whatever_the_batching(minilm_embedder):
    batched = minilm_embedder.encode(TEXTS, batch_size=3)
    one_by_one = np.stack([minilm_embedder.encode(t, batch_size=1) for t in TEXTS])
    np.testing.assert_allclose(batched, one_by_one, atol=2e-6, rtol=0)


def test_texts_longer_than_the_model_are_cut_counted_and_logged(minilm_dir, caplog):
    result = Embedder(minilm_dir, max_length=16, device="cpu").encode_result(TEXTS)
    assert result.max_length == 16 and result.truncated == [2, 5]
    with caplog.at_level(logging.WARNING, logger="onebert.infer.embedder"):
        embed(minilm_dir, TEXTS, device="cpu")
    assert "1 of 6 texts were longer than 256 tokens" in caplog.text
    # The checkpoint's 256 is a default; the 512 positions are the hard limit.
    assert Embedder(minilm_dir, max_length=512, device="cpu").encode_result(TEXTS).truncated == []
    with pytest.raises(OneBertError, match=r"max_length must be in 2\.\.512"):
        Embedder(minilm_dir, max_length=513, device="cpu")


def test_empty_input_gives_an_empty_matrix(minilm_embedder):
    assert minilm_embedder.encode([]).shape == (0, 384)


def test_embed_command_writes_rows_in_line_order(minilm_dir, minilm_embedder, tmp_path, capsys):
    source = tmp_path / "texts.txt"
    source.write_text("\r\n".join(TEXTS) + "\n", encoding="utf-8")
    output = tmp_path / "vectors.npy"
    assert main(["embed", "--model", str(minilm_dir), "--input", str(source), "--output", str(output),
                 "--batch-size", "2", "--no-progress"]) == 0
    saved = np.load(output)
    np.testing.assert_allclose(saved, minilm_embedder.encode(TEXTS), atol=2e-6, rtol=0)
    out = capsys.readouterr().out
    assert "embedded 6 lines" in out and "L2-normalised" in out
    assert "1 lines were longer than 256 tokens" in out and "(first: line 6)" in out
    assert "1 empty lines" in out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["texts.txt", "vectors.npy"]  # no temp file left


def test_embed_command_names_the_bad_line_and_refuses_other_suffixes(minilm_dir, tmp_path, capsys):
    source = tmp_path / "bad.txt"
    source.write_bytes(b"fine\nalso fine\n\xff broken\n")
    assert main(["embed", "--model", str(minilm_dir), "--input", str(source), "--output",
                 str(tmp_path / "x.npy")]) == 2
    assert "bad.txt: line 3: not valid UTF-8" in capsys.readouterr().err
    assert main(["embed", "--model", str(minilm_dir), "--input", str(source), "--output",
                 str(tmp_path / "x.txt")]) == 2
    assert "must end in .npy" in capsys.readouterr().err


def test_a_tokenizer_larger_than_the_model_is_refused_by_name(minilm_dir, tmp_path):
    from onebert.model import BertModel
    from onebert.model.config import BertConfig

    BertModel(BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                         intermediate_size=37)).save_pretrained(tmp_path)
    (tmp_path / "vocab.txt").write_bytes((minilm_dir / "vocab.txt").read_bytes())
    with pytest.raises(OneBertError, match="the tokenizer has 30522 tokens but the model's vocab_size is 100"):
        Embedder(tmp_path, device="cpu")


def test_embed_command_takes_precision_as_predict_does(minilm_dir, minilm_embedder, tmp_path, capsys):
    source = tmp_path / "texts.txt"
    source.write_text("\n".join(TEXTS[:4]) + "\n", encoding="utf-8")
    output = tmp_path / "vectors.npy"
    assert main(["embed", "--model", str(minilm_dir), "--input", str(source), "--output", str(output),
                 "--precision", "bf16", "--no-progress"]) == 0
    saved = np.load(output)
    assert saved.dtype == np.float32
    np.testing.assert_allclose(saved, minilm_embedder.encode(TEXTS[:4]), atol=3e-2, rtol=0)
