"""NER features: first-piece labels, long sentences split into windows, one prediction per word."""

from __future__ import annotations

import numpy as np
import pytest

from onebert.tasks.readers import NerExample, read_conll
from onebert.tasks import IGNORE_INDEX, collate
from onebert.tasks.ner import build_tag_list, decode_ner, evaluate_ner, ner_features


@pytest.fixture(scope="module")
def tokenizer(minilm_dir):
    from onebert.tokenizer import Tokenizer

    return Tokenizer.from_pretrained(minilm_dir)


@pytest.fixture(scope="module")
def conll_train(shared_data):
    return read_conll(shared_data / "conll2003" / "train.txt")


def _one_hot_logits(features, num_tags: int) -> np.ndarray:
    """Logits that favour each row's gold label (and tag 0 where there is none)."""
    length = max(features.lengths())
    logits = np.zeros((len(features), length, num_tags), dtype=np.float32)
    for r, labels in enumerate(features.columns["labels"]):
        for t, label in enumerate(labels):
            logits[r, t, label if label != IGNORE_INDEX else 0] = 5.0
    return logits


def _check_windows(tokenizer, examples, features, tag_list, max_length):
    owners = [[0] * len(e.words) for e in examples]
    for r, (e, ids, labels, words) in enumerate(zip(features.example_index, features.columns["input_ids"],
                                                    features.columns["labels"], features.word_index)):
        assert ids[0] == tokenizer.cls_token_id and ids[-1] == tokenizer.sep_token_id
        assert len(ids) <= max_length
        tokens = tokenizer.convert_ids_to_tokens(ids)
        for t, (label, w) in enumerate(zip(labels, words)):
            if w >= 0:
                owners[e][w] += 1
                # The label sits on the word's first piece, and is that word's tag.
                assert not tokens[t].startswith("##")
                assert tag_list[label] == examples[e].tags[w]
            else:
                assert label == IGNORE_INDEX  # continuation pieces, context words and specials
    assert all(count == 1 for sentence in owners for count in sentence), "every word owned by exactly one window"


def test_every_conll_word_gets_exactly_one_labelled_first_piece_when_windows_are_small(tokenizer, conll_train):
    examples = conll_train[:3000]
    tag_list = build_tag_list(conll_train)
    assert tag_list == ["B-LOC", "B-MISC", "B-ORG", "B-PER", "I-LOC", "I-MISC", "I-ORG", "I-PER", "O"]
    features = ner_features(tokenizer, examples, max_seq_length=24, tag_list=tag_list, context_pieces=6)
    assert features.split_sentences > 500  # 24-token windows split many sentences
    _check_windows(tokenizer, examples, features, tag_list, 24)
    # Decoding logits that favour the gold labels gives back every gold tag, once per word.
    logits = _one_hot_logits(features, len(tag_list))
    predictions = decode_ner(logits, features, examples, tag_list)
    assert [p.tags for p in predictions] == [e.tags for e in examples]
    assert evaluate_ner(predictions, examples)["f1"] == 1.0
    # Per-batch torch outputs, each padded to its own length, decode the same.
    import torch

    batches = [torch.from_numpy(logits[i:i + 64, :max(features.lengths()[i:i + 64])])
               for i in range(0, len(features), 64)]
    assert [p.tags for p in decode_ner(batches, features, examples, tag_list)] == [e.tags for e in examples]


def test_full_conll_train_at_128_tokens_keeps_every_word(tokenizer, conll_train):
    tag_list = build_tag_list(conll_train)
    features = ner_features(tokenizer, conll_train, max_seq_length=128, tag_list=tag_list)
    assert features.cut_words == 0
    assert len(features) == len(conll_train) + features.split_sentences  # the long ones need two windows
    _check_windows(tokenizer, conll_train, features, tag_list, 128)


def test_windows_carry_left_context_without_labels(tokenizer):
    words = [f"w{i}" for i in range(12)]  # "w0" ... : two pieces each ("w", "##0")
    example = NerExample(words=words, tags=["O"] * 12, source="test")
    features = ner_features(tokenizer, [example], max_seq_length=10, tag_list=["O"], context_pieces=4)
    _check_windows(tokenizer, [example], features, ["O"], 10)
    first, second = features.word_index[0], features.word_index[1]
    assert [w for w in first if w >= 0] == [0, 1, 2, 3]
    # The second window repeats words 2 and 3 (4 pieces) as unlabelled context, then owns 4 and 5.
    assert tokenizer.convert_ids_to_tokens(features.columns["input_ids"][1])[1:5] == ["w", "##2", "w", "##3"]
    assert [w for w in second if w >= 0] == [4, 5]


def test_word_without_pieces_becomes_unk_and_an_overlong_word_is_cut(tokenizer):
    example = NerExample(words=["Paris", "\u200b", "pneumonoultramicroscopicsilicovolcanoconiosis"],
                         tags=["B-LOC", "O", "B-MISC"], source="test")
    tags = ["B-LOC", "B-MISC", "O"]
    features = ner_features(tokenizer, [example], max_seq_length=8, tag_list=tags, context_pieces=0)
    assert tokenizer.unk_token_id in features.columns["input_ids"][0]
    assert features.cut_words == 1
    assert all(len(ids) <= 8 for ids in features.columns["input_ids"])
    predictions = decode_ner(_one_hot_logits(features, 3), features, [example], tags)
    assert predictions[0].tags == example.tags
    assert predictions[0].entities(example.words)[0] == {"type": "LOC", "start": 0, "end": 1, "text": "Paris",
                                                          "score": pytest.approx(predictions[0].scores[0])}


def test_unknown_tag_at_evaluation_names_the_sentence(tokenizer, tmp_path):
    from onebert.errors import OneBertError

    path = tmp_path / "dev.txt"
    path.write_text("EU B-ORG\n\nBonn B-GPE\n")
    with pytest.raises(OneBertError, match=rf"^{path}: line 3: tag 'B-GPE' is unknown to the model"):
        ner_features(tokenizer, read_conll(path), tag_list=["B-ORG", "O"])


def test_collate_pads_token_labels_with_ignore_index(tokenizer):
    examples = [NerExample(words=["EU"], tags=["B-ORG"]),
                NerExample(words=["EU", "rejects", "it"], tags=["B-ORG", "O", "O"])]
    features = ner_features(tokenizer, examples, tag_list=["B-ORG", "O"])
    batch = collate([features[0], features[1]], pad_token_id=tokenizer.pad_token_id)
    assert batch["input_ids"].shape == batch["labels"].shape == batch["attention_mask"].shape
    assert batch["labels"][0].tolist()[-1] == IGNORE_INDEX and batch["attention_mask"][0].tolist()[-1] == 0
    assert batch["labels"][1].tolist()[1] == 0  # "EU" -> B-ORG
