"""Data for pretraining (the fine-tuning readers are in `onebert.tasks.readers`).

Pretraining data flows through six small modules:

- `corpus`       text files -> documents of sentences (formats, Gutenberg, WikiText, JSONL, .gz; a summary
                 of everything skipped);
- `instances`    documents -> NSP instances `[CLS] A [SEP] B [SEP]`, as Google's create_pretraining_data.py;
- `prepare`      the parallel, deterministic build of a data directory (`onebert prepare`);
- `format`       that directory's layout and names, which the writer and the reader share;
- `shards`       reading it back: memory-mapped shards, shuffled batches per rank, exact resume;
- `masking`      MLM masking at batch time (80/10/10, whole-word), reproducible without RNG state.

The training loop needs only this::

    from onebert.data import MaskingConfig, PretrainingData

    data = PretrainingData.open("data/")                  # OneBertError if missing / another format
    data.check_compatible(tokenizer=tok, vocab_size=config.vocab_size,
                          max_position_embeddings=config.max_position_embeddings)
    data.tokenizer                                        # the tokenizer the ids come from (save it with the model)
    batches = data.train_batches(batch_size, seed=seed, rank=rank, world_size=world_size,
                                 masking=MaskingConfig(mlm_probability=0.15, whole_word=False))
    batches.load_state_dict(checkpoint["data"])           # when resuming
    for batch in batches:                                 # endless; epochs advance by themselves
        out = model(**batch)                              # input_ids, token_type_ids, attention_mask,
        ...                                               # labels (-100 = not predicted), next_sentence_label
        checkpoint["data"] = batches.state_dict()         # the position after the batches consumed so far
    batches.batches_per_epoch, batches.epoch, batches.batch
    for batch in data.validation_batches(batch_size):     # fixed order, fixed masks, same keys
        ...

Batches are dicts of torch.long tensors padded to the longest sequence in the batch. Global batch g of an
epoch is the same set of instances, with the same masks, whether it is read by one rank with batch
size W*B or by W ranks with batch size B (ranks read disjoint slices), so DDP and gradient
accumulation see exactly the data of one big batch.
"""

from __future__ import annotations

from onebert.lazy import lazy_exports

_EXPORTS = {
    "PretrainingData": "onebert.data.shards",
    "TrainBatches": "onebert.data.shards",
    "MaskingConfig": "onebert.data.masking",
    "MaskingVocab": "onebert.data.masking",
    "mask_tokens": "onebert.data.masking",
    "PrepareConfig": "onebert.data.prepare",
    "prepare_pretraining_data": "onebert.data.prepare",
    "read_documents": "onebert.data.corpus",
    "split_sentences": "onebert.data.corpus",
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
