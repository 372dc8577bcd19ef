"""Sentence embeddings: equal to sentence-transformers on the real MiniLM checkpoint, in input order,
long texts cut and counted, and the `onebert embed` command."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from onebert.cli import main
from onebert.embeddings import Embedder, checkpoint_settings, embed
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
    return Embedder.from_checkpoint(minilm_dir, device="cpu")


def test_checkpoint_settings_follow_sentence_transformers_files(minilm_dir):
    settings = checkpoint_settings(minilm_dir)
    assert (settings.pooling, settings.normalize, settings.max_length) == ("mean", True, 256)


def test_mean_pooled_normalised_embeddings_equal_sentence_transformers(minilm_dir, minilm_embedder, monkeypatch):
    """The reference is sentence-transformers itself, run offline on the same checkpoint directory."""
    sentence_transformers = pytest.importorskip(
        "sentence_transformers", reason="sentence-transformers is not installed (pip install sentence-transformers)")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    reference = sentence_transformers.SentenceTransformer(str(minilm_dir), device="cpu")
    expected = reference.encode(TEXTS, batch_size=4, convert_to_numpy=True)
    result = minilm_embedder.encode(TEXTS, batch_size=4)
    assert result.embeddings.shape == (len(TEXTS), 384) and result.embeddings.dtype == np.float32
    np.testing.assert_allclose(result.embeddings, expected, atol=2e-6, rtol=0)
    np.testing.assert_allclose(np.linalg.norm(result.embeddings, axis=1), 1.0, atol=1e-6)


def test_cls_and_pooler_pooling_equal_transformers_bert(minilm_dir):
    transformers = pytest.importorskip("transformers")
    reference = transformers.BertModel.from_pretrained(str(minilm_dir)).eval()
    texts = TEXTS[:5]
    from onebert.tokenizer import Tokenizer

    batch = Tokenizer.from_pretrained(minilm_dir)(texts, return_offsets_mapping=False, return_word_ids=False)
    with torch.no_grad():
        out = reference(**batch)
    cls = embed(minilm_dir, texts, pooling="cls", batch_size=2, device="cpu")
    pooler = embed(minilm_dir, texts, pooling="pooler", normalize=True, batch_size=2, device="cpu")
    np.testing.assert_allclose(cls, out.last_hidden_state[:, 0].numpy(), atol=2e-5, rtol=0)
    np.testing.assert_allclose(pooler, torch.nn.functional.normalize(out.pooler_output).numpy(), atol=2e-6, rtol=0)


def test_rows_come_back_in_input_order_whatever_the_batching(minilm_embedder):
    batched = minilm_embedder.encode(TEXTS, batch_size=3).embeddings
    one_by_one = np.concatenate([minilm_embedder.encode([t], batch_size=1).embeddings for t in TEXTS])
    np.testing.assert_allclose(batched, one_by_one, atol=2e-6, rtol=0)


def test_texts_longer_than_the_model_are_cut_counted_and_logged(minilm_dir, caplog):
    result = Embedder(minilm_dir, max_length=16, device="cpu").encode(TEXTS)
    assert result.max_length == 16 and result.truncated == [2, 5]
    with caplog.at_level(logging.WARNING, logger="onebert.embeddings"):
        embed(minilm_dir, TEXTS, device="cpu")
    assert "1 of 6 texts were longer than 256 tokens" in caplog.text
    # The checkpoint's 256 is a default; the 512 positions are the hard limit.
    assert Embedder(minilm_dir, max_length=512, device="cpu").encode(TEXTS).truncated == []
    with pytest.raises(OneBertError, match=r"max_length must be in 2\.\.512"):
        Embedder(minilm_dir, max_length=513, device="cpu")


def test_empty_input_gives_an_empty_matrix(minilm_embedder):
    assert minilm_embedder.encode([]).embeddings.shape == (0, 384)


def test_embed_command_writes_rows_in_line_order(minilm_dir, minilm_embedder, tmp_path, capsys):
    source = tmp_path / "texts.txt"
    source.write_text("\r\n".join(TEXTS) + "\n", encoding="utf-8")
    output = tmp_path / "vectors.npy"
    assert main(["embed", "--model", str(minilm_dir), "--input", str(source), "--output", str(output),
                 "--batch-size", "2", "--no-progress"]) == 0
    saved = np.load(output)
    np.testing.assert_allclose(saved, minilm_embedder.encode(TEXTS).embeddings, atol=2e-6, rtol=0)
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
