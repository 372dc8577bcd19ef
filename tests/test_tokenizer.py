"""WordPiece tokenizer: parity with transformers' BertTokenizerFast on real data, training, save/load, errors, CLI."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import pytest

from onebert.cli import main
from onebert.errors import OneBertError
from onebert.tokenizer import SPECIAL_TOKENS, Tokenizer, TrainingStats, _read_text_lines

transformers = pytest.importorskip("transformers")

# Texts that exercise the normalizer and pre-tokenizer: accents, CJK, control characters, an
# in-text special token, a word over BERT's 100-character limit, emoji, empty and blank input.
TRICKY = [
    "Héllo, Wörld! naïve café résumé",
    "北京大学 is in 北京 (Beijing).",
    "tab\tseparated\u00a0and\u200bzero width\x00control",
    "the [MASK] sat on the [SEP] mat",
    "a" * 120 + " short",
    "emoji 🤗 and ﬁligature",
    "",
    "   ",
]


# ---------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def mrpc_pairs(shared_data: Path) -> tuple[list[str], list[str]]:
    rows = (shared_data / "mrpc" / "dev.tsv").read_text(encoding="utf-8-sig").split("\n")[1:]
    fields = [row.split("\t") for row in rows if row]
    return [f[3] for f in fields[:200]], [f[4] for f in fields[:200]]


@pytest.fixture(scope="module")
def sst2_sentences(shared_data: Path) -> list[str]:
    rows = (shared_data / "sst2" / "dev.tsv").read_text(encoding="utf-8").split("\n")[1:]
    return [row.split("\t")[0] for row in rows[:200] if row] + TRICKY


@pytest.fixture(scope="module")
def squad_examples(shared_data: Path) -> tuple[list[str], list[str]]:
    data = json.loads((shared_data / "squad" / "squad_v2_dev_subset.json").read_text(encoding="utf-8"))
    questions, contexts = [], []
    for paragraph in data["data"][0]["paragraphs"][:12]:
        for qa in paragraph["qas"][:4]:
            questions.append(qa["question"])
            contexts.append(paragraph["context"])
    return questions, contexts


@pytest.fixture(scope="module")
def vocab_only_dir(minilm_dir: Path, tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("vocab_only")
    shutil.copy(minilm_dir / "vocab.txt", directory / "vocab.txt")
    shutil.copy(minilm_dir / "tokenizer_config.json", directory / "tokenizer_config.json")
    return directory


@pytest.fixture(scope="module")
def reference(vocab_only_dir: Path):
    """transformers' tokenizer built from the MiniLM vocab.txt (the bert-base-uncased vocabulary)."""
    return transformers.BertTokenizerFast.from_pretrained(str(vocab_only_dir))


@pytest.fixture(scope="module", params=["tokenizer.json", "vocab.txt"])
def minilm(request, minilm_dir: Path, vocab_only_dir: Path) -> Tokenizer:
    return Tokenizer.from_pretrained(minilm_dir if request.param == "tokenizer.json" else vocab_only_dir)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, shared_data: Path) -> Path:
    """About 9,000 lines of two books: enough text for a 600-token vocabulary in a fraction of a second."""
    directory = tmp_path_factory.mktemp("corpus")
    books = shared_data / "pretrain" / "gutenberg"
    text = "\n".join((books / name).read_text(encoding="utf-8-sig")[20_000:220_000]
                     for name in ("11-0.txt", "35-0.txt"))
    text += "\nCafé Zürich, naïve résumé. Alice ALICE alice. 北京\n"
    (directory / "books.txt").write_text(text, encoding="utf-8")
    return directory / "books.txt"


@pytest.fixture(scope="module")
def trained(corpus: Path) -> Tokenizer:
    return Tokenizer.train([corpus], vocab_size=600, min_frequency=2)


# ---------------------------------------------------------------------- helpers


def assert_same_as_reference(ours: dict, theirs, with_words: bool = True) -> None:
    for key in ("input_ids", "token_type_ids", "attention_mask"):
        assert ours[key] == theirs[key], key
    assert ours["offset_mapping"] == [[tuple(o) for o in row] for row in theirs["offset_mapping"]]
    if with_words:
        for i in range(len(ours["input_ids"])):
            assert ours["word_ids"][i] == theirs.word_ids(i)
            assert ours["sequence_ids"][i] == theirs.sequence_ids(i)


def encode_both(ours: Tokenizer, theirs, texts, pairs=None, **kwargs):
    return (ours(texts, pairs, return_tensors=None, return_offsets_mapping=True, return_word_ids=True, **kwargs),
            theirs(texts, pairs, return_offsets_mapping=True, **kwargs))


# ---------------------------------------------------------------------- parity with transformers


@pytest.mark.parametrize("truncation", ["longest_first", "only_first", "only_second"])
@pytest.mark.parametrize("max_length", [24, 40, 64, 512])
@pytest.mark.parametrize("padding", [True, "max_length"])
def test_mrpc_pairs_encode_exactly_as_transformers(minilm, reference, mrpc_pairs, truncation, max_length, padding):
    first, second = mrpc_pairs
    try:
        expected = reference(first, second, truncation=truncation, max_length=max_length, padding=padding,
                             return_offsets_mapping=True)
    except Exception:  # noqa: BLE001 - transformers cannot cut this batch either
        with pytest.raises(OneBertError, match=f"max_length={max_length}"):
            minilm(first, second, truncation=truncation, max_length=max_length, padding=padding)
        return
    ours = minilm(first, second, truncation=truncation, max_length=max_length, padding=padding, return_tensors=None,
                  return_offsets_mapping=True, return_word_ids=True)
    assert_same_as_reference(ours, expected)


def test_some_truncation_settings_are_impossible_and_raise_onebert_error(minilm, mrpc_pairs):
    # Both MRPC sentences need ~25 tokens: cutting only the first cannot reach 24 tokens.
    first, second = mrpc_pairs
    with pytest.raises(OneBertError, match="only_first"):
        minilm(first, second, truncation="only_first", max_length=24)


@pytest.mark.filterwarnings("ignore:`max_length` is ignored")  # transformers, for truncation=False
@pytest.mark.parametrize("max_length,truncation", [(8, True), (16, True), (512, True), (16, False)])
@pytest.mark.parametrize("padding", [True, "max_length", False])
def test_single_sentences_encode_exactly_as_transformers(minilm, reference, sst2_sentences, max_length, truncation,
                                                         padding):
    ours, theirs = encode_both(minilm, reference, sst2_sentences, max_length=max_length, truncation=truncation,
                               padding=padding)
    assert_same_as_reference(ours, theirs)


def test_tensors_match_transformers_tensors(minilm, reference, mrpc_pairs):
    import torch

    first, second = mrpc_pairs
    ours = minilm(first[:32], second[:32], max_length=48, return_offsets_mapping=True, return_word_ids=True)
    theirs = reference(first[:32], second[:32], max_length=48, truncation=True, padding=True,
                       return_offsets_mapping=True, return_tensors="pt")
    for key in ("input_ids", "token_type_ids", "attention_mask", "offset_mapping"):
        assert ours[key].dtype == torch.long
        assert torch.equal(ours[key], theirs[key]), key
    assert ours["offset_mapping"].shape == (32, ours["input_ids"].shape[1], 2)
    assert ours["word_ids"][0].tolist() == [-1 if w is None else w for w in theirs.word_ids(0)]


def test_default_return_holds_only_the_model_inputs_transformers_returns(minilm, reference, mrpc_pairs):
    first, second = mrpc_pairs
    ours = minilm(first[:8], second[:8], return_tensors="pt", padding=True)
    theirs = reference(first[:8], second[:8], return_tensors="pt", padding=True)
    assert sorted(ours) == sorted(theirs) == ["attention_mask", "input_ids", "token_type_ids"]


# transformers' calling forms, each given to both tokenizers as is (return_tensors=None: lists to compare).
CALLING_FORMS = [
    dict(padding=True, truncation=True, max_length=24),
    dict(padding="max_length", truncation=True, max_length=40),
    dict(padding="longest"),
    dict(padding=False),
    dict(padding=True, return_offsets_mapping=True),
    dict(padding=True, return_token_type_ids=False),
    dict(padding=True, return_attention_mask=False),
    dict(padding=True, return_token_type_ids=True, return_attention_mask=True, return_offsets_mapping=False),
]


@pytest.mark.parametrize("kwargs", CALLING_FORMS, ids=lambda kw: ",".join(f"{k}={v}" for k, v in kw.items()))
@pytest.mark.parametrize("form", ["positional", "keywords"])
def test_transformers_calling_forms_return_what_transformers_returns(minilm, reference, mrpc_pairs, kwargs, form):
    first, second = mrpc_pairs[0][:16], mrpc_pairs[1][:16]
    if form == "positional":
        ours, theirs = minilm(first, second, return_tensors=None, **kwargs), reference(first, second, **kwargs)
    else:
        ours = minilm(text=first, text_pair=second, return_tensors=None, **kwargs)
        theirs = reference(text=first, text_pair=second, **kwargs)
    assert sorted(ours) == sorted(theirs)
    for key in theirs:
        assert ours[key] == [[tuple(v) if isinstance(v, (list, tuple)) else v for v in row] for row in theirs[key]], key


def test_text_given_twice_is_a_type_error(minilm):
    with pytest.raises(TypeError, match="text_pairs and text_pair"):
        minilm(["a"], ["b"], text_pair=["c"])


def test_ragged_batch_cannot_become_tensors(minilm):
    with pytest.raises(ValueError, match="different lengths"):
        minilm(["short", "a much longer sentence than the first"], padding=False, return_tensors="pt")


def test_encode_ids_match_transformers_without_special_tokens(minilm, reference, sst2_sentences):
    assert minilm.encode_ids(sst2_sentences) == reference(sst2_sentences, add_special_tokens=False)["input_ids"]


def test_settings_stored_in_tokenizer_json_do_not_truncate_or_pad(minilm_dir):
    # MiniLM's tokenizer.json fixes truncation and padding at 128: a loaded tokenizer must not apply them.
    tokenizer = Tokenizer.from_pretrained(minilm_dir)
    long_text = "word " * 300
    assert len(tokenizer(long_text, truncation=False, return_tensors=None)["input_ids"][0]) == 302
    assert len(tokenizer.encode_ids(["two words"])[0]) == 2
    assert tokenizer.backend.truncation is None and tokenizer.backend.padding is None


def test_tokenizer_config_do_lower_case_overrides_tokenizer_json_as_in_transformers(minilm_dir, tmp_path):
    shutil.copy(minilm_dir / "tokenizer.json", tmp_path / "tokenizer.json")
    (tmp_path / "tokenizer_config.json").write_text('{"do_lower_case": false, "model_max_length": 128}')
    ours = Tokenizer.from_pretrained(tmp_path)
    theirs = transformers.BertTokenizerFast.from_pretrained(str(tmp_path))
    assert ours.do_lower_case is False and ours.model_max_length == 128
    assert ours("Hello World", return_tensors=None)["input_ids"] == [theirs("Hello World")["input_ids"]]


def test_attributes_of_the_bert_uncased_vocabulary(minilm):
    assert (minilm.pad_token_id, minilm.unk_token_id, minilm.cls_token_id, minilm.sep_token_id,
            minilm.mask_token_id) == (0, 100, 101, 102, 103)
    assert minilm.special_token_ids == {0, 100, 101, 102, 103}
    assert len(minilm) == minilm.vocab_size == 30522
    assert minilm.do_lower_case is True and minilm.model_max_length == 512


def test_word_start_mask_is_false_exactly_for_continuation_pieces(minilm):
    mask = minilm.word_start_mask()
    assert mask.shape == (30522,) and mask.dtype == bool
    tokens = minilm.convert_ids_to_tokens(range(30522))
    assert [not t.startswith("##") for t in tokens] == mask.tolist()
    assert mask[minilm.convert_tokens_to_ids("##ing")] == False  # noqa: E712 - numpy bool
    assert mask[minilm.cls_token_id]


def test_token_id_conversions_and_decode_match_transformers(minilm, reference, sst2_sentences):
    ids = minilm(sst2_sentences[:20], padding=False, return_tensors=None)["input_ids"]
    for row in ids:
        assert minilm.convert_ids_to_tokens(row) == reference.convert_ids_to_tokens(row)
        assert minilm.decode(row) == reference.decode(row, skip_special_tokens=True)
        assert minilm.decode(row, skip_special_tokens=False) == reference.decode(row)
    assert minilm.convert_tokens_to_ids(["hello", "no-such-token"]) == [7592, 100]
    assert minilm.convert_tokens_to_ids("[MASK]") == 103
    assert minilm.tokenize("unaffable") == ["una", "##ffa", "##ble"]
    with pytest.raises(ValueError, match="outside the vocabulary"):
        minilm.convert_ids_to_tokens([30522])


# ---------------------------------------------------------------------- QA windows


def test_qa_windows_match_transformers_overflowing_tokens(minilm, reference, squad_examples):
    questions, contexts = squad_examples
    ours = minilm.encode_windows(questions, contexts, max_length=96, stride=32, padding="max_length",
                                 return_tensors=None)
    theirs = reference(questions, contexts, truncation="only_second", max_length=96, stride=32,
                       return_overflowing_tokens=True, return_offsets_mapping=True, padding="max_length")
    assert len(ours["input_ids"]) > 2 * len(questions)  # contexts really are split
    assert ours["example_index"] == theirs["overflow_to_sample_mapping"]
    assert_same_as_reference(ours, theirs)


def test_qa_windows_cover_every_context_token_with_stride_overlap(minilm, squad_examples):
    questions, contexts = squad_examples
    windows = minilm.encode_windows(questions[:8], contexts[:8], max_length=64, stride=16, return_tensors=None)
    full = minilm(questions[:8], contexts[:8], truncation=False, padding=False, return_tensors=None,
                  return_offsets_mapping=True, return_word_ids=True)
    for example in range(8):
        context_spans = [
            [o for o, s in zip(offsets, sequence) if s == 1]
            for offsets, sequence, index in zip(windows["offset_mapping"], windows["sequence_ids"],
                                                windows["example_index"]) if index == example]
        expected = [o for o, s in zip(full["offset_mapping"][example], full["sequence_ids"][example]) if s == 1]
        rebuilt = context_spans[0]
        for previous, span in zip(context_spans, context_spans[1:]):
            assert span[:16] == previous[-16:]  # consecutive windows share `stride` tokens
            rebuilt += span[16:]
        assert rebuilt == expected


def test_every_qa_window_has_token_type_1_exactly_on_context_and_final_sep(minilm, squad_examples):
    questions, contexts = squad_examples
    for max_query_length in (None, 6):
        windows = minilm.encode_windows(questions, contexts, max_length=64, stride=16, padding=False,
                                        max_query_length=max_query_length, return_tensors=None)
        for types, sequence, mask in zip(windows["token_type_ids"], windows["sequence_ids"],
                                         windows["attention_mask"]):
            last = len(types) - 1
            assert types == [1 if s == 1 or i == last else 0 for i, s in enumerate(sequence)]
            assert sequence.count(None) == 3 and sequence[-1] is None and all(mask)


def test_qa_windows_cut_questions_to_max_query_length(minilm, squad_examples):
    questions, contexts = squad_examples
    cut = minilm.encode_windows(questions, contexts, max_length=96, stride=32, max_query_length=5,
                                return_tensors=None)
    uncut = minilm.encode_windows(questions, contexts, max_length=96, stride=32, return_tensors=None)
    question_ids = minilm.encode_ids(questions)
    for ids, sequence, index in zip(cut["input_ids"], cut["sequence_ids"], cut["example_index"]):
        assert [i for i, s in zip(ids, sequence) if s == 0] == question_ids[index][:5]
    # Shorter questions leave more room for context: never more windows, and every example keeps one.
    assert len(cut["input_ids"]) <= len(uncut["input_ids"])
    assert sorted(set(cut["example_index"])) == list(range(len(questions)))
    # A limit no question reaches changes nothing.
    roomy = minilm.encode_windows(questions, contexts, max_length=96, stride=32, max_query_length=64,
                                  return_tensors=None)
    assert roomy == uncut


def test_qa_window_with_no_room_for_context_names_the_question(minilm):
    question = "what " * 40
    with pytest.raises(OneBertError, match="question 1 has 40 tokens.*max_query_length"):
        minilm.encode_windows(["short?", question], ["some context", "more context"], max_length=48, stride=8)
    windows = minilm.encode_windows(["short?", question], ["some context", "more context"], max_length=48,
                                    stride=8, max_query_length=16)
    assert windows["example_index"].tolist() == [0, 1]


# ---------------------------------------------------------------------- training, saving, loading


def test_trained_tokenizer_puts_special_tokens_at_ids_0_to_4(trained):
    assert trained.convert_ids_to_tokens([0, 1, 2, 3, 4]) == list(SPECIAL_TOKENS)
    assert (trained.pad_token_id, trained.unk_token_id, trained.cls_token_id, trained.sep_token_id,
            trained.mask_token_id) == (0, 1, 2, 3, 4)
    assert trained.vocab_size == 600
    assert trained.training_stats.lines_with_text > 5000


def test_trained_tokenizer_builds_cls_a_sep_b_sep_with_token_types(trained):
    batch = trained("Alice was [MASK] tired", "of sitting by her sister", return_tensors=None)
    ids, types = batch["input_ids"][0], batch["token_type_ids"][0]
    a = trained.encode_ids(["Alice was"])[0]
    b = trained.encode_ids(["of sitting by her sister"])[0]
    assert ids == [2, *a, 4, *trained.encode_ids(["tired"])[0], 3, *b, 3]
    first_sep = ids.index(3)
    assert types == [0] * (first_sep + 1) + [1] * (len(ids) - first_sep - 1)


def test_saved_tokenizer_loads_in_transformers_with_identical_encodings(trained, tmp_path, mrpc_pairs):
    trained.save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["special_tokens_map.json", "tokenizer.json",
                                                          "tokenizer_config.json", "vocab.txt"]
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    assert config["tokenizer_class"] == "BertTokenizer" and config["do_lower_case"] is True
    assert config["model_max_length"] == 512
    theirs = transformers.BertTokenizerFast.from_pretrained(str(tmp_path))
    first, second = mrpc_pairs
    ours, expected = encode_both(trained, theirs, first[:100], second[:100], max_length=40, truncation=True,
                                 padding=True)
    assert_same_as_reference(ours, expected)
    # transformers builds from vocab.txt alone the same way.
    (tmp_path / "tokenizer.json").unlink()
    from_vocab = transformers.BertTokenizerFast.from_pretrained(str(tmp_path))
    assert from_vocab(first[:100], second[:100])["input_ids"] == ours_unpadded(trained, first[:100], second[:100])


def ours_unpadded(tokenizer: Tokenizer, first, second):
    return tokenizer(first, second, padding=False, truncation=False, return_tensors=None)["input_ids"]


def test_save_and_load_round_trip_keeps_vocabulary_and_encodings(trained, tmp_path, mrpc_pairs):
    trained.save_pretrained(tmp_path)
    loaded = Tokenizer.from_pretrained(tmp_path)
    first, second = mrpc_pairs
    assert loaded.convert_ids_to_tokens(range(600)) == trained.convert_ids_to_tokens(range(600))
    assert (loaded.do_lower_case, loaded.vocab_size, loaded.special_token_ids) == (True, 600, {0, 1, 2, 3, 4})
    assert loaded(first, second, return_tensors=None) == trained(first, second, return_tensors=None)
    (tmp_path / "tokenizer.json").unlink()
    from_vocab = Tokenizer.from_pretrained(tmp_path)
    assert from_vocab(first, second, return_tensors=None) == trained(first, second, return_tensors=None)
    assert not list(tmp_path.glob(".*.tmp"))


def test_lowercase_vocabulary_folds_case_and_accents_and_cased_keeps_them(corpus, trained):
    cased = Tokenizer.train([corpus], vocab_size=600, lowercase=False)
    assert cased.do_lower_case is False
    assert trained.tokenize("Alice ALICE") == trained.tokenize("alice alice")
    assert trained.tokenize("Café") == trained.tokenize("cafe")
    assert cased.tokenize("Alice") != cased.tokenize("alice")
    assert cased.tokenize("Café") != cased.tokenize("Cafe")
    tokens = cased.convert_ids_to_tokens(range(cased.vocab_size))
    assert "Alice" in tokens and not any(t != t.lower() for t in trained.convert_ids_to_tokens(range(5, 600)))


def test_training_reads_gzip_files_like_plain_ones(corpus, tmp_path):
    packed = tmp_path / "books.txt.gz"
    packed.write_bytes(gzip.compress(corpus.read_bytes()))
    plain_stats, gzip_stats = TrainingStats(), TrainingStats()
    assert list(_read_text_lines([packed], gzip_stats)) == list(_read_text_lines([corpus], plain_stats))
    assert gzip_stats == plain_stats and plain_stats.lines_with_text > 5000
    # Training itself is not bit-reproducible (tokenizers#1794: merge ties follow hash-map order),
    # so compare what the vocabulary contains, not the order of ids.
    from_gzip = Tokenizer.train([packed], vocab_size=600, min_frequency=2)
    from_plain = Tokenizer.train([corpus], vocab_size=600, min_frequency=2)
    assert from_gzip.training_stats == from_plain.training_stats
    tokens = set(from_gzip.convert_ids_to_tokens(range(600)))
    assert len(tokens & set(from_plain.convert_ids_to_tokens(range(600)))) > 570
    assert {"alice", "the", "##ing"} <= tokens


# ---------------------------------------------------------------------- user errors


def write_vocab(path: Path, tokens: list[str]) -> Path:
    path.write_text("".join(t + "\n" for t in tokens), encoding="utf-8")
    return path


def test_vocab_without_special_tokens_names_file_and_missing_tokens(tmp_path):
    write_vocab(tmp_path / "vocab.txt", ["[PAD]", "[UNK]", "[SEP]", "hello"])
    with pytest.raises(OneBertError, match=r"vocab\.txt: missing special tokens \[CLS\], \[MASK\]"):
        Tokenizer.from_pretrained(tmp_path)


def test_vocab_with_duplicate_token_names_the_line(tmp_path):
    write_vocab(tmp_path / "vocab.txt", [*SPECIAL_TOKENS, "hello", "world", "hello"])
    with pytest.raises(OneBertError, match=r"vocab\.txt: line 8: duplicate token 'hello' \(first on line 6\)"):
        Tokenizer.from_pretrained(tmp_path)


def test_vocab_that_is_not_utf8_gives_one_line_error(tmp_path):
    (tmp_path / "vocab.txt").write_bytes("\n".join(SPECIAL_TOKENS).encode() + b"\ncaf\xe9\n")
    with pytest.raises(OneBertError) as error:
        Tokenizer.from_pretrained(tmp_path)
    assert "vocab.txt: line 6: not valid UTF-8" in str(error.value) and "\n" not in str(error.value)


def test_directory_without_tokenizer_files_is_named(tmp_path):
    with pytest.raises(OneBertError, match=f"{tmp_path}: neither tokenizer.json nor vocab.txt"):
        Tokenizer.from_pretrained(tmp_path)
    with pytest.raises(OneBertError, match="no such tokenizer directory"):
        Tokenizer.from_pretrained(tmp_path / "missing")


def test_broken_tokenizer_json_is_named(tmp_path):
    (tmp_path / "tokenizer.json").write_text('{"model": ')
    with pytest.raises(OneBertError, match=r"tokenizer\.json: not a tokenizers JSON file"):
        Tokenizer.from_pretrained(tmp_path)


def test_training_input_errors_name_the_file(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n")
    with pytest.raises(OneBertError, match="empty.txt: no text to train on"):
        Tokenizer.train([empty], vocab_size=100)
    with pytest.raises(OneBertError, match="missing.txt: no such file"):
        Tokenizer.train([tmp_path / "missing.txt"], vocab_size=100)
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes(b"fine line\ncaf\xe9 au lait\n")
    with pytest.raises(OneBertError, match=r"latin1.txt: line 2: not valid UTF-8"):
        Tokenizer.train([latin1], vocab_size=100)
    with pytest.raises(OneBertError, match="vocab_size must be larger than 5"):
        Tokenizer.train([latin1], vocab_size=5)


# ---------------------------------------------------------------------- CLI


def test_cli_trains_then_encodes_a_pair(corpus, tmp_path, capsys):
    output = tmp_path / "tok"
    assert main(["tokenizer", "train", "--input", str(corpus), "--vocab-size", "500", "--output", str(output),
                 "--cased", "--min-frequency", "3"]) == 0
    printed = capsys.readouterr().out
    assert "vocabulary of 500 tokens" in printed and "cased" in printed
    assert Tokenizer.from_pretrained(output).do_lower_case is False
    assert main(["tokenizer", "encode", "--tokenizer", str(output), "Alice was tired", "of sitting"]) == 0
    printed = capsys.readouterr().out
    tokens = printed.splitlines()[0]
    assert tokens.startswith(f"{tokens.count(' ') - 1} tokens: [CLS] Alice") and tokens.count("[SEP]") == 2
    assert "'Alice'" in printed  # the table shows each token's characters from the original text


def test_cli_errors_are_one_line_with_status_2(tmp_path, capsys):
    assert main(["tokenizer", "train", "--input", str(tmp_path / "nope.txt"), "--output", str(tmp_path / "o")]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "nope.txt: no such file" in error
    assert main(["tokenizer", "encode", "--tokenizer", str(tmp_path), "text"]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "neither tokenizer.json nor vocab.txt" in error
