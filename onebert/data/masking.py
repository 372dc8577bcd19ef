"""Masked-LM masking at batch time: a fresh mask every epoch, reproducible without stored RNG state.

BERT's recipe (Devlin et al. 2019, section 3.1 and appendix A.1): choose 15% of the real tokens
(never [CLS], [SEP], [PAD] or [MASK]); replace 80% of those with [MASK], 10% with a random
vocabulary token (never a special or [unusedN] token) and keep 10%; the labels are the original
ids there and -100 everywhere else. Like Google's script, each sequence gets exactly
`k = min(max_predictions_per_seq, max(1, round(mlm_probability * real_tokens)))` predictions
(here `round` is stochastic rounding, so the expected rate is exactly `mlm_probability` rather
than biased by sequence lengths). Whole-word masking picks words (a start piece and its "##"
continuations) in random order until about k tokens are chosen, never part of a word.

Randomness comes from a counter-based hash of (seed, epoch, instance id, position) rather than a
generator: the mask of an instance does not depend on the batch it lands in, its padding, the
rank that reads it or the gradient-accumulation split, so resume is exact, two ranks with batch
B mask exactly as one rank with batch 2B, and no RNG state needs to be saved. Everything is
vectorised over the batch with numpy; there is no Python loop per token.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from onebert.errors import OneBertError
from onebert.model.config import IGNORE_INDEX
_UINT64 = np.uint64
_GOLDEN = _UINT64(0x9E3779B97F4A7C15)


@dataclass
class MaskingConfig:
    """How tokens are chosen for the MLM loss."""

    mlm_probability: float = 0.15
    max_predictions_per_seq: int | None = None   # None: round(mlm_probability * max_seq_length)
    whole_word: bool = False
    mask_fraction: float = 0.8                    # of the chosen tokens, replaced by [MASK]
    random_fraction: float = 0.1                  # replaced by a random token; the rest stay unchanged

    def validate(self) -> None:
        if not 0.0 < self.mlm_probability < 1.0:
            raise OneBertError(f"mlm_probability must be in (0, 1), got {self.mlm_probability}")
        if self.max_predictions_per_seq is not None and self.max_predictions_per_seq < 1:
            raise OneBertError(f"max_predictions_per_seq must be >= 1, got {self.max_predictions_per_seq}")
        if not 0 <= self.mask_fraction <= 1 or not 0 <= self.random_fraction <= 1 \
                or self.mask_fraction + self.random_fraction > 1:  # written so that nan fails too
            raise OneBertError(f"mask_fraction {self.mask_fraction} and random_fraction {self.random_fraction} "
                               "must be >= 0 and sum to at most 1")

    def max_predictions(self, max_seq_length: int) -> int:
        if self.max_predictions_per_seq is not None:
            return self.max_predictions_per_seq
        return max(1, round(self.mlm_probability * max_seq_length))


@dataclass
class MaskingVocab:
    """What masking needs to know about the vocabulary."""

    mask_token_id: int
    never_mask_ids: np.ndarray      # ids that are never chosen ([CLS], [SEP], [PAD], [MASK])
    random_token_ids: np.ndarray    # ids a chosen token may be replaced with
    word_start: np.ndarray | None   # bool [vocab]: False for "##" pieces; needed for whole-word masking

    @classmethod
    def from_tokenizer(cls, tokenizer) -> "MaskingVocab":
        never = sorted({tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.pad_token_id,
                        tokenizer.mask_token_id})
        tokens = tokenizer.convert_ids_to_tokens(range(tokenizer.vocab_size))
        bracketed = re.compile(r"^\[[^\]]*\]$")  # [unused0] ... and the special tokens themselves
        special = set(tokenizer.special_token_ids)
        random_ids = np.array([i for i, t in enumerate(tokens) if i not in special and not bracketed.match(t)],
                              dtype=np.int64)
        if random_ids.size == 0:
            raise OneBertError("the vocabulary has no ordinary tokens to use as random replacements")
        return cls(mask_token_id=tokenizer.mask_token_id, never_mask_ids=np.array(never, dtype=np.int64),
                   random_token_ids=random_ids, word_start=tokenizer.word_start_mask())


# ----------------------------------------------------------------------------------------------
# Counter-based random numbers
# ----------------------------------------------------------------------------------------------

def splitmix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser: a bijective mixer of 64-bit integers (uint64 arithmetic wraps on purpose)."""
    with np.errstate(over="ignore"):
        x = x + _GOLDEN
        x = (x ^ (x >> _UINT64(30))) * _UINT64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> _UINT64(27))) * _UINT64(0x94D049BB133111EB)
        return x ^ (x >> _UINT64(31))


def hash_key(*values: int) -> np.uint64:
    """One 64-bit key from a few integers (seed, epoch, ...)."""
    h = np.array([0x6A09E667F3BCC908], dtype=_UINT64)
    for v in values:
        h = splitmix64(h ^ np.array([int(v) & 0xFFFFFFFFFFFFFFFF], dtype=_UINT64))
    return h[0]


def _token_hashes(row_keys: np.ndarray, length: int, stream: int) -> np.ndarray:
    positions = np.arange(length, dtype=_UINT64) * _UINT64(4) + _UINT64(stream)
    with np.errstate(over="ignore"):
        return splitmix64(row_keys[:, None] ^ splitmix64(positions)[None, :])


def _uniform(hashes: np.ndarray) -> np.ndarray:
    return (hashes >> _UINT64(11)).astype(np.float64) * (1.0 / (1 << 53))


# ----------------------------------------------------------------------------------------------
# Masking
# ----------------------------------------------------------------------------------------------

def mask_tokens(input_ids: np.ndarray, attention_mask: np.ndarray, instance_ids: np.ndarray, *, seed: int,
                epoch: int, config: MaskingConfig, vocab: MaskingVocab,
                max_predictions: int) -> tuple[np.ndarray, np.ndarray]:
    """Return (masked input ids, labels) for a padded batch [B, S]; `instance_ids` [B] name the sequences."""
    ids = np.asarray(input_ids, dtype=np.int64)
    batch, length = ids.shape
    candidates = np.asarray(attention_mask).astype(bool) & ~np.isin(ids, vocab.never_mask_ids)
    real = candidates.sum(axis=1)
    base = hash_key(seed, epoch)
    row_keys = splitmix64(np.asarray(instance_ids, dtype=np.int64).astype(_UINT64) ^ base)

    # k predictions per sequence, stochastically rounded so the expected rate is exactly mlm_probability.
    rounding = _uniform(splitmix64(row_keys ^ _UINT64(0x5851F42D4C957F2D)))
    k = np.floor(config.mlm_probability * real + rounding).astype(np.int64)
    k = np.where(real > 0, np.clip(k, 1, max_predictions), 0)

    keys = _token_hashes(row_keys, length, 0)
    positions = np.arange(length)
    if config.whole_word:
        if vocab.word_start is None:
            raise OneBertError("whole-word masking needs the tokenizer's word_start_mask")
        previous = np.zeros_like(candidates)
        previous[:, 1:] = candidates[:, :-1]
        starts = candidates & (vocab.word_start[np.clip(ids, 0, len(vocab.word_start) - 1)] | ~previous)
        start_pos = np.maximum.accumulate(np.where(starts, positions, -1), axis=1)
        keys = np.take_along_axis(keys, np.clip(start_pos, 0, None), axis=1)
        word_index = np.cumsum(starts, axis=1) - 1 + (np.arange(batch) * length)[:, None]
        flat_words = np.where(candidates, word_index, batch * length).ravel()
        word_sizes = np.bincount(flat_words, minlength=batch * length + 1)
        word_len = word_sizes[flat_words].reshape(batch, length)
        offset = positions[None, :] - start_pos
    else:
        word_len = np.ones_like(ids)
        offset = np.zeros_like(ids)
    keys = np.where(candidates, keys, np.iinfo(np.uint64).max)
    order = np.argsort(keys, axis=1, kind="stable")  # tokens of one word share a key: adjacent, in order
    counted = np.cumsum(np.take_along_axis(candidates, order, axis=1), axis=1)
    count_through = np.empty_like(counted)
    np.put_along_axis(count_through, order, counted, axis=1)
    word_end = count_through + (word_len - offset - 1)     # chosen tokens once this whole word is taken
    word_begin = word_end - word_len
    # Take a word while its middle is inside the first k tokens (exactly k when words are single tokens).
    chosen = candidates & (2 * word_begin + word_len < 2 * k[:, None]) & (word_end <= max_predictions)

    action = _uniform(_token_hashes(row_keys, length, 1))
    to_mask = chosen & (action < config.mask_fraction)
    to_random = chosen & (action >= config.mask_fraction) & (action < config.mask_fraction + config.random_fraction)
    random_pick = (_uniform(_token_hashes(row_keys, length, 2)) * len(vocab.random_token_ids)).astype(np.int64)
    masked = np.where(to_mask, vocab.mask_token_id, ids)
    masked = np.where(to_random, vocab.random_token_ids[random_pick], masked)
    labels = np.where(chosen, ids, IGNORE_INDEX)
    return masked, labels
