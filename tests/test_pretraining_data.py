"""NSP instance creation, `onebert prepare`, and reading the shards back: order, resume, ranks, bad input."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest

from onebert.cli import main
from onebert.data.instances import IS_NEXT, NOT_NEXT, TokenizedDocument, create_instances, materialize
from onebert.data.prepare import PrepareConfig, prepare_pretraining_data, tokenize_documents
from onebert.data.shards import PretrainingData, permuted_indices
from onebert.errors import OneBertError

WORDS = ("the a cat dog sat ran on under over mat house garden river tree bird sang quickly slowly red green "
         "blue old young small large happy sad morning evening night day king queen city village road").split()


def write_corpus(path, documents=40, sentences=12, seed=0):
    """A one-sentence-per-line corpus of random sentences, blank lines between documents.

    Every sentence of document d names the year 1800 + d (one token in BERT's vocabulary), so a
    token tells which document it came from.
    """
    rng = random.Random(seed)
    docs = []
    for d in range(documents):
        lines = [f"In {1800 + d} " + " ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 14))) + "."
                 for _ in range(sentences)]
        docs.append("\n".join(lines))
    path.write_text("\n\n".join(docs) + "\n")
    return path


def synthetic_documents(count=60, seed=0):
    """Documents whose every token id is unique, so an id tells which document and position it came from."""
    rng = random.Random(seed)
    docs, next_id = [], 1000
    for doc_id in range(count):
        sentences = []
        for _ in range(rng.randint(1, 30)):
            length = rng.choice([rng.randint(1, 30), rng.randint(30, 200)]) if rng.random() < 0.1 else rng.randint(3, 30)
            sentences.append(list(range(next_id, next_id + length)))
            next_id += length
        docs.append(TokenizedDocument.from_sentences(doc_id, sentences))
    return docs


def where(docs):
    """token id -> (document index, position in the document)."""
    table = {}
    for d, doc in enumerate(docs):
        for pos, token in enumerate(doc.tokens.tolist()):
            table[token] = (d, pos)
    return table


# ---------------------------------------------------------------------------------------------- instances

def test_isnext_b_continues_a_and_notnext_b_comes_from_another_document_rebuilt_from_token_ids():
    docs = synthetic_documents()
    spans = create_instances(docs, max_seq_length=64, short_seq_prob=0.1, dupe_factor=3, rng=random.Random(1))
    arrays = materialize(spans, docs, cls_id=1, sep_id=2, dtype=np.int32)
    origin = where(docs)
    sentence_starts = [set(doc.bounds) for doc in docs]
    labels = arrays.labels.tolist()
    for i in range(len(arrays)):
        tokens = arrays.instance(i).tolist()
        a_len = int(arrays.a_lengths[i])
        assert len(tokens) <= 64 and tokens[0] == 1 and tokens[a_len + 1] == 2 and tokens[-1] == 2
        a, b = tokens[1:a_len + 1], tokens[a_len + 2:-1]
        assert a and b and 1 not in a + b and 2 not in a + b
        a_origin, b_origin = [origin[t] for t in a], [origin[t] for t in b]
        for part in (a_origin, b_origin):  # each segment is one contiguous run of one document
            assert len({d for d, _ in part}) == 1
            assert [p for _, p in part] == list(range(part[0][1], part[0][1] + len(part)))
        doc_a, doc_b = a_origin[0][0], b_origin[0][0]
        if labels[i] == IS_NEXT:
            assert doc_a == doc_b and b_origin[0][1] > a_origin[-1][1]
            # nothing between A and B but the chunk's cut point (and what truncation trimmed)
            assert a_origin[-1][1] < spans.split[i] <= b_origin[0][1]
            assert spans.split[i] in sentence_starts[doc_a] or not any(
                a_origin[0][1] < s < b_origin[-1][1] + 1 for s in sentence_starts[doc_a])
        else:
            assert labels[i] == NOT_NEXT and doc_a != doc_b


@pytest.fixture(scope="module")
def real_books(shared_data, minilm_dir):
    from onebert.data.corpus import read_documents
    from onebert.tokenizer import Tokenizer

    tok = Tokenizer.from_pretrained(minilm_dir)
    names = ["11-0.txt", "pg1661.txt", "1155-0.txt", "46-0.txt"]
    documents = list(enumerate(read_documents([shared_data / "pretrain/gutenberg" / n for n in names])))
    tokenized, _, _ = tokenize_documents(tok, documents)
    return tokenized


def test_nsp_positives_are_50_percent_and_provenance_holds_on_real_books(real_books):
    spans = create_instances(real_books, max_seq_length=128, short_seq_prob=0.1, dupe_factor=10,
                             rng=random.Random(12345))
    labels = np.asarray(spans.label)
    assert len(labels) >= 30_000  # the standard error of the rate is then 0.3%
    assert abs((labels == IS_NEXT).mean() - 0.5) <= 0.01
    for i in range(len(spans)):
        if spans.label[i] == IS_NEXT:
            assert spans.doc_a[i] == spans.doc_b[i] and spans.a_end[i] <= spans.split[i] <= spans.b_start[i]
        else:
            assert spans.doc_a[i] != spans.doc_b[i]
        length = (spans.a_end[i] - spans.a_start[i]) + (spans.b_end[i] - spans.b_start[i]) + 3
        assert length <= 128 and spans.a_end[i] > spans.a_start[i] and spans.b_end[i] > spans.b_start[i]


def test_short_seq_prob_gives_shorter_targets_and_dupe_factor_repeats_passes(real_books):
    docs = real_books[:20]
    mean = {}
    for prob in (0.0, 1.0):
        arrays = materialize(create_instances(docs, 128, prob, 1, random.Random(0)), docs, 101, 102, np.uint16)
        mean[prob] = np.diff(arrays.offsets).mean()
    assert mean[0.0] > 110 and mean[1.0] < 0.75 * mean[0.0]
    once = len(create_instances(docs, 128, 0.1, 1, random.Random(0)))
    thrice = len(create_instances(docs, 128, 0.1, 3, random.Random(0)))
    assert abs(thrice / once - 3) < 0.2


# ---------------------------------------------------------------------------------------------- prepare

@pytest.fixture(scope="module")
def small_data(tmp_path_factory, minilm_dir):
    root = tmp_path_factory.mktemp("prepared")
    corpus = write_corpus(root / "corpus.txt", documents=60)
    out = root / "data"
    prepare_pretraining_data([corpus], out, PrepareConfig(max_seq_length=64, dupe_factor=2, shard_size=3000,
                                                          validation_fraction=0.1, seed=7),
                             tokenizer_dir=minilm_dir)
    return PretrainingData.open(out)


def shard_bytes(directory):
    return {p.name: p.read_bytes() for p in sorted((directory / "shards").iterdir())}


def test_same_seed_gives_bit_identical_shards_for_any_worker_count_and_another_seed_differs(tmp_path, minilm_dir):
    corpus = write_corpus(tmp_path / "c.txt", documents=30)
    built = {}
    for name, seed, workers in (("a", 1, 1), ("b", 1, 2), ("c", 2, 1)):
        prepare_pretraining_data([corpus], tmp_path / name, PrepareConfig(max_seq_length=64, shard_size=4000, seed=seed),
                                 tokenizer_dir=minilm_dir, workers=workers)
        built[name] = shard_bytes(tmp_path / name)
    assert len(built["a"]) >= 3 * 4  # several shards (4 files each)
    assert built["a"] == built["b"]
    assert built["a"].keys() == built["c"].keys() and built["a"] != built["c"]
    meta = json.loads((tmp_path / "a" / "metadata.json").read_text())
    assert meta == json.loads((tmp_path / "b" / "metadata.json").read_text())


def test_metadata_records_tokenizer_settings_counts_and_validation_split(small_data):
    meta = small_data.metadata
    tok = small_data.tokenizer
    assert meta["format"] == "onebert-pretraining-data" and meta["format_version"] == 1
    assert meta["tokenizer"]["vocab_size"] == tok.vocab_size == 30522
    assert meta["tokenizer"]["special_ids"] == {"pad": 0, "unk": 100, "cls": 101, "sep": 102, "mask": 103}
    assert meta["max_seq_length"] == 64 and meta["settings"]["seed"] == 7
    train, validation = meta["splits"]["train"], meta["splits"]["validation"]
    assert train["documents"] + validation["documents"] == 60 and validation["documents"] >= 2
    assert train["instances"] == len(small_data.train) and validation["instances"] == len(small_data.validation)
    small_data.check_compatible(tokenizer=tok, vocab_size=30522, max_position_embeddings=512)


def test_held_out_documents_never_reach_the_training_shards(small_data):
    tok = small_data.tokenizer
    year_ids = dict(zip(tok.convert_tokens_to_ids([str(1800 + d) for d in range(60)]), range(60)))

    def documents_in(store):
        seen = set()
        for shard in store.shards:
            seen.update(year_ids[t] for t in np.unique(shard.tokens).tolist() if t in year_ids)
        return seen

    train, held_out = documents_in(small_data.train), documents_in(small_data.validation)
    assert len(held_out) == small_data.metadata["splits"]["validation"]["documents"] >= 2
    assert not train & held_out and len(train | held_out) == 60


def test_blocks_hold_at_least_two_documents_and_a_lone_last_document_joins_the_previous_block():
    from onebert.data.corpus import Document
    from onebert.data.prepare import _BlockBuilder

    builder = _BlockBuilder("train", size=100)
    released = []
    for i in range(7):
        released += builder.add(i, Document(["x" * 60], f"doc{i}"))
        assert builder.held is None or len(builder.held.documents) >= 2  # at most one block held back
    released += builder.finish()
    assert [[i for i, _ in b.documents] for b in released] == [[0, 1], [2, 3], [4, 5, 6]]


# ---------------------------------------------------------------------------------------------- reading back

def test_feistel_shuffle_is_a_permutation_for_any_size():
    for n in (1, 2, 3, 10, 1000, 4097, 65_537):
        perm = permuted_indices(np.arange(n), n, key=42)
        assert sorted(perm.tolist()) == list(range(n))
    assert not np.array_equal(permuted_indices(np.arange(1000), 1000, 1), permuted_indices(np.arange(1000), 1000, 2))


def batches_equal(x, y):
    return x.keys() == y.keys() and all(np.array_equal(x[k], y[k]) for k in x)


def take(iterator, n):
    return [batch for _, batch in zip(range(n), iterator)]


def test_resume_from_state_dict_yields_exactly_the_remaining_batches_across_an_epoch_end(small_data):
    batch_size = 32
    reference = small_data.train_batches(batch_size, seed=3, return_tensors=None)
    per_epoch = reference.batches_per_epoch
    expected = take(reference, per_epoch + 4)

    first = small_data.train_batches(batch_size, seed=3, return_tensors=None)
    seen = take(iter(first), per_epoch - 2)
    state = json.loads(json.dumps(first.state_dict()))  # survives a checkpoint round trip
    resumed = small_data.train_batches(batch_size, seed=3, return_tensors=None)
    resumed.load_state_dict(state)
    rest = take(resumed, 6)
    assert all(batches_equal(a, b) for a, b in zip(seen + rest, expected))
    assert resumed.state_dict()["epoch"] == 1
    # the next epoch is shuffled differently
    assert not batches_equal(expected[0], expected[per_epoch])


def test_two_ranks_read_disjoint_halves_of_each_global_batch_exactly_as_one_rank_with_twice_the_batch(small_data):
    one = small_data.train_batches(16, seed=9, return_tensors=None)
    ranks = [small_data.train_batches(8, seed=9, rank=r, world_size=2, return_tensors=None) for r in range(2)]
    assert ranks[0].batches_per_epoch == ranks[1].batches_per_epoch == one.batches_per_epoch
    covered = []
    for step in range(one.batches_per_epoch):
        parts = [r.indices(0, step) for r in ranks]
        assert not set(parts[0]) & set(parts[1])
        assert np.array_equal(np.concatenate(parts), one.indices(0, step))
        covered.extend(np.concatenate(parts).tolist())
    assert len(set(covered)) == len(covered) == one.batches_per_epoch * 16
    assert len(small_data.train) - len(covered) < 16  # only the last incomplete global batch is left out
    whole = one.make_batch(0, 0)
    halves = [r.make_batch(0, 0) for r in ranks]
    for key in whole:
        if whole[key].ndim == 2:
            width = whole[key].shape[1]
            halves_padded = [np.pad(h[key], ((0, 0), (0, width - h[key].shape[1])),
                                    constant_values=0 if key != "labels" else -100) for h in halves]
            assert np.array_equal(np.concatenate(halves_padded), whole[key])
        else:
            assert np.array_equal(np.concatenate([h[key] for h in halves]), whole[key])


def test_resume_accepts_another_split_of_the_same_global_batch_and_refuses_another_seed_or_batch(small_data):
    single = small_data.train_batches(16, seed=9, return_tensors=None)
    take(single, 3)
    state = single.state_dict()
    rank1 = small_data.train_batches(8, seed=9, rank=1, world_size=2, return_tensors=None)
    rank1.load_state_dict(state)
    assert np.array_equal(rank1.indices(rank1.epoch, rank1.batch), single.indices(0, 3)[8:])
    for other in (small_data.train_batches(16, seed=10), small_data.train_batches(8, seed=9)):
        with pytest.raises(OneBertError, match="cannot resume the data position"):
            other.load_state_dict(state)


def test_batches_are_padded_long_tensors_ready_for_bert_for_pretraining(small_data):
    import torch

    from onebert.model import BertForPreTraining
    from onebert.model.config import BertConfig

    batch = next(iter(small_data.train_batches(4, seed=0)))
    assert set(batch) == {"input_ids", "token_type_ids", "attention_mask", "labels", "next_sentence_label"}
    assert all(t.dtype == torch.long for t in batch.values())
    mask = batch["attention_mask"].bool()
    assert mask[:, -1].any()  # padded to the longest row, no further
    assert ((batch["token_type_ids"] == 1) <= mask).all()
    config = BertConfig(vocab_size=small_data.vocab_size, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=37, max_position_embeddings=64)
    out = BertForPreTraining(config)(**batch)
    assert torch.isfinite(out.loss)


def test_validation_batches_are_fixed_and_cover_the_held_out_split(small_data):
    first = list(small_data.validation_batches(16, return_tensors=None))
    again = list(small_data.validation_batches(16, return_tensors=None))
    assert all(batches_equal(a, b) for a, b in zip(first, again))
    assert sum(len(b["next_sentence_label"]) for b in first) == small_data.num_validation_instances > 0
    halves = [list(small_data.validation_batches(16, rank=r, world_size=2)) for r in range(2)]
    assert sum(len(b["next_sentence_label"]) for h in halves for b in h) == small_data.num_validation_instances


# ---------------------------------------------------------------------------------------------- bad input

def run_cli(capsys, *args):
    try:
        code = main(["prepare", *map(str, args)])
    except SystemExit as exit:  # argparse's own one-line errors (an option outside its range)
        code = exit.code
    err = capsys.readouterr().err.strip().splitlines()
    return code, err


@pytest.mark.parametrize("case", ["empty", "binary", "one_document", "too_long", "missing"])
def test_bad_input_is_a_one_line_error_naming_the_file_and_writes_nothing(case, tmp_path, capsys, minilm_dir):
    corpus = tmp_path / "corpus.txt"
    options = ["--max-seq-length", "64"]
    expected = str(corpus)
    if case == "empty":
        corpus.write_text("\n\n")
        message = "holds no text"
    elif case == "binary":
        corpus = tmp_path / "data.bin"
        corpus.write_bytes(b"\x00\xff" * 500)
        expected, message = str(corpus), "binary"
    elif case == "one_document":
        corpus.write_text("Only one document.\nWith two sentences.\n")
        message = "single document"
    elif case == "too_long":
        write_corpus(corpus)
        options = ["--max-seq-length", "1024"]
        expected, message = "argument --max-seq-length", "9..512, got '1024'"
    else:
        corpus = tmp_path / "missing.txt"
        expected, message = str(corpus), "no such file"
    out = tmp_path / "out"
    code, err = run_cli(capsys, "--corpus", corpus, "--tokenizer", minilm_dir, "--output", out, *options)
    assert code == 2
    assert len(err) == 1 and err[0].startswith("onebert prepare: error: ")
    assert expected in err[0] and message in err[0]
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary left behind


def test_an_existing_output_is_never_overwritten_without_asking_and_a_users_directory_never(tmp_path, capsys,
                                                                                           minilm_dir):
    corpus = write_corpus(tmp_path / "c.txt", documents=10)
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    for overwrite in ((), ("--overwrite",)):  # a directory prepare did not make: not even with --overwrite
        code, err = run_cli(capsys, "--corpus", corpus, "--tokenizer", minilm_dir, "--output", out, *overwrite)
        assert code == 2 and "not a data directory onebert made" in err[0] and (out / "keep.txt").read_text() == "mine"
    data = tmp_path / "data"
    assert run_cli(capsys, "--corpus", corpus, "--tokenizer", minilm_dir, "--output", data, "--workers", "1")[0] == 0
    code, err = run_cli(capsys, "--corpus", corpus, "--tokenizer", minilm_dir, "--output", data)
    assert code == 2 and "already holds prepared data" in err[0] and "--overwrite" in err[0]
    code, _ = run_cli(capsys, "--corpus", corpus, "--tokenizer", minilm_dir, "--output", data, "--overwrite",
                      "--workers", "1")
    assert code == 0 and (data / "metadata.json").is_file()


def test_opening_a_bad_data_directory_is_a_one_line_error_naming_it(small_data, tmp_path):
    with pytest.raises(OneBertError, match="no such data directory"):
        PretrainingData.open(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(OneBertError, match=r"metadata\.json: missing"):
        PretrainingData.open(tmp_path / "empty")
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(small_data.directory, copy)
    meta = json.loads((copy / "metadata.json").read_text())
    meta["format_version"] = 99
    (copy / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(OneBertError, match="format version 99"):
        PretrainingData.open(copy)
    meta["format_version"] = 1
    (copy / "metadata.json").write_text(json.dumps(meta))
    tokens = copy / "shards" / "train-00000.tokens.npy"
    tokens.write_bytes(tokens.read_bytes()[:100])
    with pytest.raises(OneBertError, match="train-00000.tokens.npy"):
        PretrainingData.open(copy)


def test_a_model_with_another_vocabulary_or_fewer_positions_is_refused(small_data, tmp_path):
    from onebert.tokenizer import Tokenizer

    other = Tokenizer.train([write_corpus(tmp_path / "t.txt")], vocab_size=120)
    with pytest.raises(OneBertError, match="another vocabulary"):
        small_data.check_compatible(tokenizer=other)
    with pytest.raises(OneBertError, match="max_position_embeddings 32"):
        small_data.check_compatible(max_position_embeddings=32)


# ---------------------------------------------------------------------------------------------- CLI smoke

def test_cli_prepare_trains_a_tokenizer_with_vocab_size(tmp_path, capsys):
    corpus = write_corpus(tmp_path / "corpus.txt", documents=40)
    out = tmp_path / "data"
    code = main(["prepare", "--corpus", str(corpus), "--vocab-size", "150", "--max-seq-length", "32",
                 "--output", str(out), "--workers", "1", "--validation-fraction", "0.1"])
    assert code == 0
    assert "training instances" in capsys.readouterr().out
    data = PretrainingData.open(out)
    assert 40 < data.vocab_size <= 150 and (out / "tokenizer" / "vocab.txt").is_file()
    batch = next(iter(data.train_batches(8, seed=0)))
    assert batch["input_ids"].shape[1] <= 32 and int(batch["input_ids"].max()) < data.vocab_size


def test_cli_prepare_on_gutenberg_and_wikitext_with_the_minilm_vocabulary(shared_data, minilm_dir, tmp_path, capsys):
    out = tmp_path / "data"
    code = main(["prepare", "--corpus", str(shared_data / "pretrain/gutenberg/11-0.txt"),
                 str(shared_data / "pretrain/gutenberg/46-0.txt"), str(shared_data / "pretrain/wikitext-2-raw"),
                 "--tokenizer", str(minilm_dir), "--output", str(out), "--workers", "2", "--dupe-factor", "1",
                 "--shard-size", "500K", "--validation-fraction", "0.05"])
    printed = capsys.readouterr()
    assert code == 0, printed.err
    data = PretrainingData.open(out)
    meta = data.metadata
    assert meta["corpus"]["summary"]["formats"] == {"prose": 2, "wikitext": 1}
    assert meta["splits"]["train"]["documents"] > 60 and len(data.validation) > 0
    assert abs(meta["splits"]["train"]["is_next_fraction"] - 0.5) < 0.05
    tokens, a_len, label = data.train.instance(0)
    text = data.tokenizer.decode(tokens)
    assert "gutenberg" not in text.lower() and "@-@" not in text
