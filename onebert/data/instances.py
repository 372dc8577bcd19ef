"""NSP training instances from tokenized documents, following Google's create_pretraining_data.py.

For each document (and `dupe_factor` times over all documents), sentences are packed into chunks
of up to `max_seq_length - 3` tokens (with probability `short_seq_prob` a document gets a random
shorter target in [2, max]); each chunk is cut at a random sentence boundary into A and B. With
probability 1/2 B is the true continuation (IsNext, label 0); otherwise B is read from a random
point of a random *other* document (NotNext, label 1) and the chunk's unused sentences are put
back, so they start the next chunk. The longer of A and B then loses tokens from a random end
until `[CLS] A [SEP] B [SEP]` fits.

Instances are kept as token *spans* into the documents (document, start, end for A and for B),
which makes them cheap to build, lets tests check provenance (every IsNext B follows its A in
the same document, every NotNext B comes from another one), and turns into token arrays once.

Two deliberate differences from Google's script, both about the NSP labels:

- the random document is drawn among the *other* documents (Google retries 10 times and may,
  with few documents, pick the same one and label it NotNext anyway);
- a chunk of a single sentence cannot be cut at a sentence boundary, and Google then always makes
  it NotNext. Long sentences, document ends and short targets make such chunks common enough that
  Google's data has clearly fewer than 50% IsNext pairs. Here such a chunk is IsNext with
  probability 1/2 too, with A and B cut inside the sentence at a random token (B still the true
  continuation of A), so the labels are balanced as the BERT paper describes.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

IS_NEXT = 0       # B continues A (HuggingFace's next_sentence_label convention)
NOT_NEXT = 1      # B comes from another document


@dataclass
class TokenizedDocument:
    """A document's token ids, all sentences concatenated; `bounds[i]:bounds[i+1]` is sentence i."""

    doc_id: int
    tokens: np.ndarray
    bounds: list[int]

    @property
    def num_sentences(self) -> int:
        return len(self.bounds) - 1

    @classmethod
    def from_sentences(cls, doc_id: int, sentences: Sequence[Sequence[int]]) -> "TokenizedDocument":
        bounds = [0]
        for sentence in sentences:
            bounds.append(bounds[-1] + len(sentence))
        tokens = np.fromiter((t for s in sentences for t in s), dtype=np.int32, count=bounds[-1])
        return cls(doc_id, tokens, bounds)


@dataclass
class InstanceSpans:
    """Instances as spans: A = doc_a[a_start:a_end], B = doc_b[b_start:b_end] (indices into the document list).

    `split` is the token offset in doc_a where the chunk was cut into A and B before truncation
    (for IsNext, A ends at or before it and B starts at or after it).
    """

    doc_a: list[int] = field(default_factory=list)
    a_start: list[int] = field(default_factory=list)
    a_end: list[int] = field(default_factory=list)
    doc_b: list[int] = field(default_factory=list)
    b_start: list[int] = field(default_factory=list)
    b_end: list[int] = field(default_factory=list)
    split: list[int] = field(default_factory=list)
    label: list[int] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.label)

    def add(self, doc_a: int, a: tuple[int, int], doc_b: int, b: tuple[int, int], split: int, label: int) -> None:
        self.doc_a.append(doc_a)
        self.a_start.append(a[0])
        self.a_end.append(a[1])
        self.doc_b.append(doc_b)
        self.b_start.append(b[0])
        self.b_end.append(b[1])
        self.split.append(split)
        self.label.append(label)


def truncate_seq_pair(a: list[int], b: list[int], max_num_tokens: int, rng: random.Random) -> None:
    """Trim the longer of spans `a` and `b` ([start, end], in place) one token at a time from a random end.

    Google's truncate_seq_pair, on spans: removing from both ends rather than only the back is a
    little noise that keeps the model from learning that truncated sequences end abruptly.
    """
    while (a[1] - a[0]) + (b[1] - b[0]) > max_num_tokens:
        trunc = a if (a[1] - a[0]) > (b[1] - b[0]) else b
        if rng.random() < 0.5:
            trunc[0] += 1
        else:
            trunc[1] -= 1


def create_instances_from_document(documents: Sequence[TokenizedDocument], index: int, max_seq_length: int,
                                   short_seq_prob: float, rng: random.Random, out: InstanceSpans) -> None:
    """Google's create_instances_from_document (see the module docstring for the two label fixes)."""
    document = documents[index]
    bounds = document.bounds
    n = document.num_sentences
    max_num_tokens = max_seq_length - 3
    target_seq_length = max_num_tokens
    if rng.random() < short_seq_prob:
        target_seq_length = rng.randint(2, max_num_tokens)

    chunk_start = 0
    current_length = 0
    i = 0
    while i < n:
        current_length += bounds[i + 1] - bounds[i]
        if i == n - 1 or current_length >= target_seq_length:
            chunk_len = i - chunk_start + 1
            start, end = bounds[chunk_start], bounds[i + 1]
            if chunk_len >= 2:
                a_end = rng.randint(1, chunk_len - 1)
                split = bounds[chunk_start + a_end]
                random_next = rng.random() < 0.5
            else:
                # One sentence: IsNext still half the time, cut inside the sentence (see module docstring).
                split = end
                random_next = end - start < 2 or rng.random() < 0.5
                if not random_next:
                    split = start + rng.randint(1, end - start - 1)
            a = [start, split]
            if random_next:
                label = NOT_NEXT
                target_b_length = target_seq_length - (split - start)
                other = rng.randint(0, len(documents) - 2)
                if other >= index:
                    other += 1
                other_doc = documents[other]
                j = rng.randint(0, other_doc.num_sentences - 1)
                b_start = b_end = other_doc.bounds[j]
                while j < other_doc.num_sentences:
                    b_end = other_doc.bounds[j + 1]
                    if b_end - b_start >= target_b_length:
                        break
                    j += 1
                b = [b_start, b_end]
                doc_b = other
                if chunk_len >= 2:
                    i -= chunk_len - a_end  # put the unused sentences back
            else:
                label = IS_NEXT
                b = [split, end]
                doc_b = index
            truncate_seq_pair(a, b, max_num_tokens, rng)
            out.add(index, (a[0], a[1]), doc_b, (b[0], b[1]), split, label)
            chunk_start = i + 1
            current_length = 0
        i += 1


def create_instances(documents: Sequence[TokenizedDocument], max_seq_length: int, short_seq_prob: float,
                     dupe_factor: int, rng: random.Random) -> InstanceSpans:
    """All instances of a pool of documents: `dupe_factor` passes, each with fresh random cuts."""
    if len(documents) < 2:
        raise ValueError("NSP needs at least two documents in a pool")
    out = InstanceSpans()
    for _ in range(dupe_factor):
        for index in range(len(documents)):
            create_instances_from_document(documents, index, max_seq_length, short_seq_prob, rng, out)
    return out


@dataclass
class InstanceArrays:
    """Instances as flat arrays, the on-disk shard layout.

    `tokens[offsets[i]:offsets[i+1]]` is `[CLS] A [SEP] B [SEP]` of instance i; `a_lengths[i]` is the
    number of A tokens (so segment 0 is the first a_length + 2 positions); `labels[i]` is 0 IsNext / 1 NotNext.
    """

    tokens: np.ndarray
    offsets: np.ndarray
    a_lengths: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)

    def instance(self, i: int) -> np.ndarray:
        return self.tokens[self.offsets[i]:self.offsets[i + 1]]


def materialize(spans: InstanceSpans, documents: Sequence[TokenizedDocument], cls_id: int, sep_id: int,
                dtype: np.dtype) -> InstanceArrays:
    """Write `[CLS] A [SEP] B [SEP]` for every span into one flat token array."""
    a_len = np.asarray(spans.a_end, dtype=np.int64) - np.asarray(spans.a_start, dtype=np.int64)
    b_len = np.asarray(spans.b_end, dtype=np.int64) - np.asarray(spans.b_start, dtype=np.int64)
    lengths = a_len + b_len + 3
    offsets = np.zeros(len(spans) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    tokens = np.empty(int(offsets[-1]), dtype=dtype)
    for i in range(len(spans)):
        o = int(offsets[i])
        la = int(a_len[i])
        lb = int(b_len[i])
        tokens[o] = cls_id
        tokens[o + 1:o + 1 + la] = documents[spans.doc_a[i]].tokens[spans.a_start[i]:spans.a_end[i]]
        tokens[o + 1 + la] = sep_id
        tokens[o + 2 + la:o + 2 + la + lb] = documents[spans.doc_b[i]].tokens[spans.b_start[i]:spans.b_end[i]]
        tokens[o + 2 + la + lb] = sep_id
    return InstanceArrays(tokens, offsets, a_len.astype(np.uint16), np.asarray(spans.label, dtype=np.uint8))
