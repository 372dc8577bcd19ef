"""Deterministic stand-in pretraining batches for the training-loop tests.

Example g of the stream depends only on (seed, g): its length, tokens, masked positions and NSP
label. Rank r's i-th micro-batch holds examples [(i*W + r)*B, (i*W + r + 1)*B), so one process with
batch 2B, one with batch B and two accumulation steps, and two processes with batch B all see the
same global batches with the same masks; only the split differs.
"""

from __future__ import annotations

import random
from pathlib import Path

import torch

MASK_ID, CLS_ID, SEP_ID, FIRST_WORD_ID = 4, 2, 3, 5


class SyntheticBatches:
    def __init__(self, vocab_size: int, max_length: int, batch_size: int, rank: int = 0, world_size: int = 1,
                 seed: int = 0, crash_at_batch: int | None = None):
        self.vocab_size, self.max_length, self.batch_size = vocab_size, max_length, batch_size
        self.rank, self.world_size, self.seed = rank, world_size, seed
        self.crash_at_batch = crash_at_batch
        self.position = 0  # micro-batches this rank has handed out

    def example(self, index: int) -> dict[str, torch.Tensor]:
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + index)
        length = int(torch.randint(8, self.max_length + 1, (1,), generator=gen))
        # A learnable pattern: token t+1 = token t + 1 (mod the word range), from a random start.
        start = int(torch.randint(FIRST_WORD_ID, self.vocab_size, (1,), generator=gen))
        words = FIRST_WORD_ID + (start - FIRST_WORD_ID + torch.arange(length)) % (self.vocab_size - FIRST_WORD_ID)
        ids = words.clone()
        ids[0], ids[-1] = CLS_ID, SEP_ID
        chosen = (torch.rand(length, generator=gen) < 0.25)
        chosen[0] = chosen[-1] = False
        labels = torch.where(chosen, ids, torch.full_like(ids, -100))
        inputs = torch.where(chosen, torch.full_like(ids, MASK_ID), ids)
        token_type = (torch.arange(length) >= length // 2).long()
        nsp = torch.randint(0, 2, (1,), generator=gen)
        return {"input_ids": inputs, "token_type_ids": token_type, "labels": labels, "next_sentence_label": nsp}

    def batch(self, position: int) -> dict[str, torch.Tensor]:
        first = (position * self.world_size + self.rank) * self.batch_size
        examples = [self.example(first + i) for i in range(self.batch_size)]
        longest = max(len(e["input_ids"]) for e in examples)
        out = {"input_ids": torch.zeros(len(examples), longest, dtype=torch.long),
               "token_type_ids": torch.zeros(len(examples), longest, dtype=torch.long),
               "attention_mask": torch.zeros(len(examples), longest, dtype=torch.long),
               "labels": torch.full((len(examples), longest), -100, dtype=torch.long)}
        for row, e in enumerate(examples):
            n = len(e["input_ids"])
            out["input_ids"][row, :n] = e["input_ids"]
            out["token_type_ids"][row, :n] = e["token_type_ids"]
            out["attention_mask"][row, :n] = 1
            out["labels"][row, :n] = e["labels"]
        out["next_sentence_label"] = torch.cat([e["next_sentence_label"] for e in examples])
        return out

    def __iter__(self):
        while True:
            if self.crash_at_batch is not None and self.position == self.crash_at_batch:
                raise RuntimeError("simulated crash")
            batch = self.batch(self.position)
            self.position += 1
            yield batch

    def state_dict(self) -> dict:
        return {"position": self.position}

    def load_state_dict(self, state: dict) -> None:
        self.position = int(state["position"])

    def eval_batches(self, count: int = 2):
        """Held-out examples (a disjoint index range), the same on every call."""
        held_out = SyntheticBatches(self.vocab_size, self.max_length, self.batch_size, self.rank, self.world_size,
                                    seed=self.seed + 7919)
        return lambda: [held_out.batch(10_000 + i) for i in range(count)]


WORDS = ("the a one cat dog bird fish sat ran flew swam on under over near mat tree river house hill red "
         "green small big old new quickly slowly and then because while after before it they we").split()


def prepare_small_corpus(root: Path) -> Path:
    """40 documents of made-up sentences, prepared by `onebert prepare` into root/data (48-token instances)."""
    from onebert.cli import main

    rng = random.Random(0)
    documents = []
    for _ in range(40):
        sentences = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 14))).capitalize() + "."
                     for _ in range(rng.randint(8, 16))]
        documents.append("\n".join(sentences))
    (root / "corpus.txt").write_text("\n\n".join(documents) + "\n")
    assert main(["prepare", "--corpus", str(root / "corpus.txt"), "--format", "lines", "--vocab-size", "1000",
                 "--max-seq-length", "48", "--validation-fraction", "0.2", "--workers", "1", "--no-progress",
                 "--output", str(root / "data")]) == 0
    return root / "data"
