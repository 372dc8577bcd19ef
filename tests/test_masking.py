"""MLM masking statistics on real text (>= 100k tokens) and the reproducibility that exact resume relies on."""

from __future__ import annotations

import numpy as np
import pytest

from onebert.data.masking import IGNORE_INDEX, MaskingConfig, MaskingVocab, mask_tokens

MAX_LEN = 128


@pytest.fixture(scope="module")
def real_data(shared_data, minilm_dir, tmp_path_factory):
    """A prepared data directory from two real books, tokenized with the real uncased BERT vocabulary."""
    from onebert.data.prepare import PrepareConfig, prepare_pretraining_data
    from onebert.data.shards import PretrainingData

    out = tmp_path_factory.mktemp("masking") / "data"
    books = [shared_data / "pretrain/gutenberg/11-0.txt", shared_data / "pretrain/gutenberg/pg1661.txt"]
    prepare_pretraining_data(books, out, PrepareConfig(max_seq_length=MAX_LEN, dupe_factor=1,
                                                       validation_fraction=0.0), tokenizer_dir=minilm_dir)
    return PretrainingData.open(out)


@pytest.fixture(scope="module")
def vocab(real_data):
    return MaskingVocab.from_tokenizer(real_data.tokenizer)


def mask_all(data, vocab, config, *, seed=0, epoch=0, count=1200, batch_size=200):
    """Unmasked and masked batches over the first `count` instances (>= 100k real tokens)."""
    out = []
    for start in range(0, count, batch_size):
        ids = np.arange(start, start + batch_size)
        batch = data.train.collate(ids, data.pad_token_id)
        masked, labels = mask_tokens(batch["input_ids"], batch["attention_mask"], ids, seed=seed, epoch=epoch,
                                     config=config, vocab=vocab, max_predictions=config.max_predictions(MAX_LEN))
        out.append((batch, masked, labels))
    return out


def test_mask_rate_is_15_percent_and_split_80_10_10_over_100k_tokens(real_data, vocab):
    special = [vocab.mask_token_id, *vocab.never_mask_ids.tolist()]
    real = chosen = to_mask = to_random = kept = 0
    for batch, masked, labels in mask_all(real_data, vocab, MaskingConfig()):
        original = batch["input_ids"]
        candidates = (batch["attention_mask"] == 1) & ~np.isin(original, special)
        picked = labels != IGNORE_INDEX
        real += int(candidates.sum())
        chosen += int(picked.sum())
        to_mask += int((picked & (masked == vocab.mask_token_id)).sum())
        kept += int((picked & (masked == original)).sum())
        to_random += int((picked & (masked != vocab.mask_token_id) & (masked != original)).sum())
        assert np.array_equal(labels[picked], original[picked])
        assert np.array_equal(masked[~picked], original[~picked])
    assert real >= 100_000
    assert abs(chosen / real - 0.15) <= 0.005
    assert abs(to_mask / chosen - 0.8) <= 0.01
    assert abs(to_random / chosen - 0.1) <= 0.01
    assert abs(kept / chosen - 0.1) <= 0.01


def test_never_selects_cls_sep_or_padding_and_never_inserts_special_tokens(real_data, vocab):
    tok = real_data.tokenizer
    forbidden = {tok.cls_token_id, tok.sep_token_id, tok.pad_token_id}
    unused = {i for i, t in enumerate(tok.convert_ids_to_tokens(range(tok.vocab_size))) if t.startswith("[")}
    padded_rows = 0
    for batch, masked, labels in mask_all(real_data, vocab, MaskingConfig()):
        original = batch["input_ids"]
        picked = labels != IGNORE_INDEX
        assert not np.isin(original[picked], list(forbidden)).any()
        assert (batch["attention_mask"][picked] == 1).all()
        replaced = picked & (masked != vocab.mask_token_id) & (masked != original)
        assert not np.isin(masked[replaced], list(unused)).any()
        padded_rows += int((batch["attention_mask"] == 0).any(axis=1).sum())
    assert padded_rows > 0  # the batches did contain padding to avoid


def test_whole_word_masking_never_splits_a_word(real_data, vocab):
    starts = vocab.word_start
    real = chosen = continuation_chosen = 0
    for batch, masked, labels in mask_all(real_data, vocab, MaskingConfig(whole_word=True)):
        original = batch["input_ids"]
        picked = labels != IGNORE_INDEX
        candidates = (batch["attention_mask"] == 1) & ~np.isin(original, vocab.never_mask_ids)
        continuation = candidates & ~starts[original]
        # a "##" piece is chosen exactly when the token before it (same word) is chosen
        inner = continuation[:, 1:] & candidates[:, :-1]
        assert np.array_equal(picked[:, 1:][inner], picked[:, :-1][inner])
        real += int(candidates.sum())
        chosen += int(picked.sum())
        continuation_chosen += int((picked & continuation).sum())
    assert continuation_chosen > 100  # multi-piece words were chosen, whole
    assert abs(chosen / real - 0.15) <= 0.01


def test_masks_differ_across_epochs_and_seeds_but_repeat_for_the_same_seed_epoch_and_instance(real_data, vocab):
    config = MaskingConfig()
    first = mask_all(real_data, vocab, config, epoch=3, count=200)[0]
    again = mask_all(real_data, vocab, config, epoch=3, count=200)[0]
    other_epoch = mask_all(real_data, vocab, config, epoch=4, count=200)[0]
    other_seed = mask_all(real_data, vocab, config, seed=1, epoch=3, count=200)[0]
    assert np.array_equal(first[1], again[1]) and np.array_equal(first[2], again[2])
    for other in (other_epoch, other_seed):
        picked, picked_other = first[2] != IGNORE_INDEX, other[2] != IGNORE_INDEX
        overlap = (picked & picked_other).sum() / picked.sum()
        assert overlap < 0.3  # independent 15% choices overlap ~15%


def test_an_instance_gets_the_same_mask_in_any_batch_and_with_any_padding(real_data, vocab):
    config = MaskingConfig()
    alone_ids = np.array([7])
    mixed_ids = np.array([3, 7, 11, 500])
    alone = real_data.train.collate(alone_ids, 0)
    mixed = real_data.train.collate(mixed_ids, 0)
    length = int(alone["attention_mask"].sum())
    out_alone = mask_tokens(alone["input_ids"], alone["attention_mask"], alone_ids, seed=5, epoch=2, config=config,
                            vocab=vocab, max_predictions=19)
    out_mixed = mask_tokens(mixed["input_ids"], mixed["attention_mask"], mixed_ids, seed=5, epoch=2, config=config,
                            vocab=vocab, max_predictions=19)
    for a, b in zip(out_alone, out_mixed):
        assert np.array_equal(a[0, :length], b[1, :length])


def test_max_predictions_per_seq_caps_every_sequence(real_data, vocab):
    config = MaskingConfig(max_predictions_per_seq=3)
    assert MaskingConfig().max_predictions(MAX_LEN) == round(0.15 * MAX_LEN)
    for _, _, labels in mask_all(real_data, vocab, config, count=400):
        per_row = (labels != IGNORE_INDEX).sum(axis=1)
        assert per_row.max() == 3 and per_row.min() >= 1


def test_masking_is_vectorised_fast_enough_for_large_batches(real_data, vocab):
    import time

    ids = np.arange(512)
    batch = real_data.train.collate(ids, 0)
    started = time.perf_counter()
    for epoch in range(5):
        mask_tokens(batch["input_ids"], batch["attention_mask"], ids, seed=0, epoch=epoch, config=MaskingConfig(),
                    vocab=vocab, max_predictions=19)
    assert (time.perf_counter() - started) / 5 < 0.25  # ~10 ms on one core; a per-token Python loop takes seconds


@pytest.mark.parametrize("config, message", [
    (MaskingConfig(mlm_probability=0.0), "mlm_probability"),
    (MaskingConfig(mask_fraction=0.9, random_fraction=0.2), "sum to at most 1"),
    (MaskingConfig(max_predictions_per_seq=0), "max_predictions_per_seq"),
])
def test_invalid_masking_settings_are_one_line_errors(config, message):
    from onebert.errors import OneBertError

    with pytest.raises(OneBertError, match=message):
        config.validate()
