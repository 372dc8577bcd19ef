"""The trivial baselines a pretraining run's held-out accuracies must beat, on the same masks.

    python -m benchmarks.pretrain_baselines DATA_DIR [--train-batches 200]

MLM: always predict the single most frequent masked token, chosen on training batches (a fair
baseline) and, as an upper bound, chosen on the held-out batches themselves. NSP: always predict
the majority class of the held-out pairs. The held-out batches are masked exactly as `onebert
pretrain` evaluates them (15%, seed 0, fixed masks).
"""

from __future__ import annotations

import argparse
import json

import numpy as np


def masked_label_counts(batches, vocab_size: int) -> np.ndarray:
    counts = np.zeros(vocab_size, dtype=np.int64)
    for batch in batches:
        labels = batch["labels"]
        counts += np.bincount(labels[labels >= 0], minlength=vocab_size)
    return counts


def main() -> None:
    from onebert.data.masking import MaskingConfig
    from onebert.data.shards import PretrainingData

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data", help="a data directory from `onebert prepare`")
    parser.add_argument("--train-batches", type=int, default=200, help="training batches of 32 to count tokens on")
    args = parser.parse_args()

    data = PretrainingData.open(args.data)
    tokenizer = data.tokenizer
    held_out = list(data.validation_batches(64, masking=MaskingConfig(), return_tensors=None))
    held = masked_label_counts(held_out, data.vocab_size)
    train = iter(data.train_batches(32, seed=1, masking=MaskingConfig(), return_tensors=None))
    trained = masked_label_counts((next(train) for _ in range(args.train_batches)), data.vocab_size)
    nsp = np.concatenate([b["next_sentence_label"] for b in held_out])
    fair, best = int(trained.argmax()), int(held.argmax())
    print(json.dumps({
        "held_out_instances": int(len(nsp)), "held_out_masked_tokens": int(held.sum()),
        "mlm_most_frequent_training_token": tokenizer.convert_ids_to_tokens([fair])[0],
        "mlm_baseline_accuracy": float(held[fair] / held.sum()),
        "mlm_best_single_token_on_held_out": tokenizer.convert_ids_to_tokens([best])[0],
        "mlm_best_single_token_accuracy": float(held[best] / held.sum()),
        "nsp_majority_accuracy": float(max(nsp.mean(), 1 - nsp.mean())),
    }, indent=1))


if __name__ == "__main__":
    main()
