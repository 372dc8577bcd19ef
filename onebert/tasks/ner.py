"""Token classification (NER): words -> word pieces with labels on first pieces -> one tag per word.

Labels sit on the first piece of every word; the other pieces and [CLS]/[SEP] get -100 (the
loss ignores them), as in the BERT paper's CoNLL set-up and transformers' run_ner.

Long sentences are split into several windows rather than cut. Windows break between words.
Each window "owns" a run of whole words (labels and predictions come only from those), and
after the first it also carries up to `context_pieces` pieces of the preceding words as left
context (label -100), so a word near a window boundary still sees its left neighbours. Every
word is owned by exactly one window, so it gets exactly one prediction. A word that alone has
more pieces than a window holds keeps its first pieces (its label is on the first one) and the
cut is counted in `NerFeatures.cut_words`. A word the tokenizer turns into no pieces at all
(e.g. a lone zero-width space) is fed as [UNK], so it too gets a prediction.
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from onebert.tasks.readers import NerExample
from onebert.errors import OneBertError
from onebert.tasks.base import Task, kind_of, text_lines
from onebert.tasks.features import IGNORE_INDEX, Features, logit_rows
from onebert.tasks.metrics import entity_scores, get_entities

logger = logging.getLogger(__name__)


@dataclass
class NerFeatures(Features):
    # word_index[i][t]: the word whose first piece is token t of row i, if row i owns it; else -1.
    word_index: list[list[int]] = field(default_factory=list)
    split_sentences: int = 0  # sentences that needed more than one window
    cut_words: int = 0  # words longer than a window, cut to their first pieces


@dataclass
class NerPrediction:
    tags: list[str]  # one per word
    scores: list[float]  # softmax probability of each chosen tag

    def entities(self, words: Sequence[str]) -> list[dict[str, Any]]:
        """Entities as {"type", "start", "end" (word indices, end exclusive), "text", "score" (mean)}."""
        return [{"type": kind, "start": first, "end": last + 1, "text": " ".join(words[first:last + 1]),
                 "score": float(np.mean(self.scores[first:last + 1]))}
                for kind, first, last in get_entities(self.tags)]


def build_tag_list(examples: Sequence[NerExample]) -> list[str]:
    """The tags of a training set, sorted (the classifier's output order)."""
    tags = {tag for example in examples for tag in (example.tags or ())}
    if not tags:
        raise OneBertError("no tags in the training data")
    return sorted(tags)


def ner_features(tokenizer, examples: Sequence[NerExample], max_seq_length: int = 128,
                 tag_list: Sequence[str] | None = None, context_pieces: int | None = None,
                 with_labels: bool = True) -> NerFeatures:
    """Word pieces, windows and first-piece labels of every sentence (see the module docstring).

    context_pieces: left context of a continuation window, default max_seq_length // 4.
    """
    if max_seq_length < 3:
        raise ValueError(f"max_seq_length must be at least 3, got {max_seq_length}")
    capacity = max_seq_length - 2  # [CLS] ... [SEP]
    if context_pieces is None:
        context_pieces = max_seq_length // 4
    tag_index = {tag: i for i, tag in enumerate(tag_list)} if tag_list is not None else None
    if with_labels and tag_index is None:
        raise ValueError("tag_list is needed to turn tags into label ids")

    encodings = tokenizer.backend.encode_batch([example.words for example in examples], is_pretokenized=True,
                                               add_special_tokens=False)
    features = NerFeatures()
    input_ids, labels = [], []
    for e, (example, encoding) in enumerate(zip(examples, encodings)):
        pieces = _pieces_per_word(encoding, len(example.words), tokenizer.unk_token_id)
        if with_labels:
            if example.tags is None:
                raise OneBertError(f"{example.source}: no tags in this sentence")
            word_labels = []
            for tag in example.tags:
                if tag not in tag_index:  # type: ignore[operator]
                    raise OneBertError(f"{example.source}: tag {tag!r} is unknown to the model, which knows "
                                       f"{', '.join(tag_list)}")  # type: ignore[arg-type]
                word_labels.append(tag_index[tag])  # type: ignore[index]
        windows = _windows([len(p) for p in pieces], capacity, context_pieces)
        features.split_sentences += len(windows) > 1
        for context_start, start, end in windows:
            ids = [tokenizer.cls_token_id]
            row_labels = [IGNORE_INDEX]
            row_words = [-1]
            for w in range(context_start, end):
                owned = w >= start
                word_pieces = pieces[w]
                if len(word_pieces) > capacity - (len(ids) - 1):
                    word_pieces = word_pieces[:capacity - (len(ids) - 1)]
                    features.cut_words += owned
                ids.extend(word_pieces)
                row_words.extend([w if owned else -1] + [-1] * (len(word_pieces) - 1))
                if with_labels:
                    row_labels.extend([word_labels[w] if owned else IGNORE_INDEX]
                                      + [IGNORE_INDEX] * (len(word_pieces) - 1))
            ids.append(tokenizer.sep_token_id)
            row_words.append(-1)
            row_labels.append(IGNORE_INDEX)
            input_ids.append(ids)
            labels.append(row_labels)
            features.word_index.append(row_words)
            features.example_index.append(e)
    features.columns["input_ids"] = input_ids
    features.columns["token_type_ids"] = [[0] * len(ids) for ids in input_ids]
    if with_labels:
        features.columns["labels"] = labels
    if features.split_sentences or features.cut_words:
        logger.info("NER features: %d of %d sentences split into several windows of %d tokens; %d words cut "
                    "to %d pieces", features.split_sentences, len(examples), max_seq_length, features.cut_words,
                    capacity)
    return features


def _pieces_per_word(encoding, num_words: int, unk_token_id: int) -> list[list[int]]:
    pieces: list[list[int]] = [[] for _ in range(num_words)]
    for token_id, word in zip(encoding.ids, encoding.word_ids):
        if word is not None:
            pieces[word].append(token_id)
    return [p if p else [unk_token_id] for p in pieces]


def _windows(counts: Sequence[int], capacity: int, context_pieces: int) -> list[tuple[int, int, int]]:
    """(context_start, start, end) word ranges: words [start, end) are owned, [context_start, start) context."""
    windows = []
    start = 0
    while start < len(counts):
        context_start, used = start, 0
        if start > 0:
            while context_start > 0 and used + counts[context_start - 1] <= context_pieces:
                context_start -= 1
                used += counts[context_start]
            if used + counts[start] > capacity:  # the left context must not crowd out the next word
                context_start, used = start, 0
        end = start
        while end < len(counts) and (end == start or used + counts[end] <= capacity):
            used += counts[end]
            end += 1
        windows.append((context_start, start, end))
        start = end
    return windows


def decode_ner(logits: Any, features: NerFeatures, examples: Sequence[NerExample],
               tag_list: Sequence[str]) -> list[NerPrediction]:
    """Per-token logits of every feature row -> one tag (and its probability) per word of every example.

    logits: [rows, seq, num_tags] (torch or numpy, padded rows are fine), or a list of per-batch
    [batch, seq, num_tags] or per-row [seq, num_tags] arrays, in the order of `features`.
    """
    tags: list[list[str | None]] = [[None] * len(example.words) for example in examples]
    scores: list[list[float]] = [[0.0] * len(example.words) for example in examples]
    rows = logit_rows(logits, row_ndim=2)
    if len(rows) != len(features.word_index):
        raise ValueError(f"got logits for {len(rows)} rows, the features have {len(features.word_index)}")
    for row, words, e in zip(rows, features.word_index, features.example_index):
        positions = [t for t, w in enumerate(words) if w >= 0]
        if not positions:
            continue
        chosen = row[positions]
        probabilities = np.exp(chosen - chosen.max(axis=-1, keepdims=True))
        probabilities /= probabilities.sum(axis=-1, keepdims=True)
        best = probabilities.argmax(axis=-1)
        for t, k, p in zip(positions, best, probabilities):
            tags[e][words[t]] = tag_list[int(k)]
            scores[e][words[t]] = float(p[k])
    missing = sum(tag is None for sentence in tags for tag in sentence)
    if missing:
        raise ValueError(f"{missing} words got no prediction: features and examples do not match")
    return [NerPrediction(tags=t, scores=s) for t, s in zip(tags, scores)]  # type: ignore[arg-type]


def evaluate_ner(predictions: Sequence[NerPrediction], examples: Sequence[NerExample]) -> dict:
    """Entity-level precision / recall / f1 (conlleval), token accuracy, and per-type scores."""
    gold = []
    for example in examples:
        if example.tags is None:
            raise OneBertError(f"{example.source}: no tags to evaluate against")
        gold.append(example.tags)
    return entity_scores(gold, [p.tags for p in predictions])


_TAG = re.compile(r"^(O|[BIES]-\S+)$")


def looks_like_conll(path: Path) -> bool:
    """-DOCSTART- lines, or token lines whose last column is a tag: a CoNLL file, not lines of text."""
    from onebert.tasks.readers import read_text_file

    lines = [line for line in read_text_file(path).split("\n")[:200] if line.strip()]
    if any(line.startswith("-DOCSTART-") for line in lines):
        return True
    fields = [line.split() for line in lines[:50]]
    return bool(fields) and all(len(f) >= 2 and _TAG.match(f[-1]) for f in fields) \
        and len({len(f) for f in fields}) == 1


def split_words(text: str) -> tuple[list[str], list[tuple[int, int]]]:
    """Words of a raw text as BERT splits them (whitespace, then punctuation: CoNLL-like tokens), with
    their character spans in the text."""
    from tokenizers.pre_tokenizers import BertPreTokenizer

    pieces = BertPreTokenizer().pre_tokenize_str(text)
    return [word for word, _ in pieces], [span for _, span in pieces]


def joined_words(words: Sequence[str]) -> tuple[str, list[tuple[int, int]]]:
    """Pre-split words (CoNLL input) as one text with single spaces, and each word's span in it."""
    spans, position = [], 0
    for word in words:
        spans.append((position, position + len(word)))
        position += len(word) + 1
    return " ".join(words), spans


def _predict_texts_with_words(predict, examples: Sequence[NerExample]) -> list[NerPrediction | None]:
    """One prediction per example, None for a text without words (empty, only spaces): it has no
    entities and needs no model call. Shared by `onebert predict` and the pipeline."""
    filled = [i for i, example in enumerate(examples) if example.words]
    predictions: list[NerPrediction | None] = [None] * len(examples)
    for i, prediction in zip(filled, predict([examples[i] for i in filled])):
        predictions[i] = prediction
    return predictions


def entity_records(prediction: NerPrediction, words: Sequence[str], text: str,
                   spans: Sequence[tuple[int, int]]) -> list[dict[str, Any]]:
    """Entities with character offsets into `text`; spans[i] = (start, end) of word i in it."""
    records = []
    for entity in prediction.entities(words):
        start, end = spans[entity["start"]][0], spans[entity["end"] - 1][1]
        records.append({"entity": entity["type"], "word": text[start:end], "start": start, "end": end,
                        "score": entity["score"]})
    return records


class NerTask(Task):
    """A tag per word (CoNLL-2003): entity-level precision / recall / F1 (conlleval)."""

    name = "ner"
    auto_bf16 = True
    model_class_name = "BertForTokenClassification"
    metrics = ("f1", "precision", "recall", "accuracy")
    # No length grouping: NER's loss is a mean over the batch's labelled tokens, so in length-grouped batches
    # a token of a short sentence would weigh several times one of a long sentence (2.6 F1 on CoNLL-2003;
    # see BENCHMARKS.md). Its batches are random (a mega-batch of one batch).
    group_size = 1
    example_unit = "sentences"
    input_formats = ("text", "conll", "jsonl", "json", "parquet", "datasets")
    data_formats = ("conll", "jsonl", "json", "parquet", "datasets")
    plots = True

    def describe(self) -> str:
        return f"{len(self.spec.labels)} tags"

    @classmethod
    def training_spec(cls, args, train_examples, validation_examples, max_seq_length, log=print):

        tags = build_tag_list(train_examples)
        unseen = sorted({t for e in validation_examples or () for t in e.tags or () if t not in tags})
        if unseen:
            log(f"note: {args.validation}: tags {', '.join(unseen)} do not occur in {args.train}; the model "
                "cannot predict them")
        return dict(labels=tags, max_seq_length=max_seq_length)

    def read(self, path, columns=None, options=None) -> list[NerExample]:
        return self.read_examples(path, options, labelled=True)

    def read_examples(self, path, options, labelled: bool) -> list[NerExample]:
        """CoNLL, or records with `tokens` and `ner_tags` (JSON lines, a JSON array, Parquet, a saved dataset)."""
        from onebert.tasks.readers import ReadOptions, read_conll
        from onebert.tasks.records import check_format, is_json_lines, ner_records, record_format

        options = options or ReadOptions()
        check_format(self.name, options.file_format, self.data_formats)
        fmt = record_format(path, options.file_format) or ("jsonl" if is_json_lines(path, options.file_format)
                                                           else None)
        if fmt is not None:
            return ner_records(path, fmt, options, labelled=labelled)
        if options.label_names is not None:
            raise OneBertError(f"--label-names names the integer ner_tags of record files; {path} is CoNLL, "
                               "whose tags are written out")
        return read_conll(path, labelled=labelled)

    def features(self, tokenizer, examples, with_labels: bool) -> NerFeatures:
        return ner_features(tokenizer, examples, max_seq_length=self.spec.max_seq_length, tag_list=self.spec.labels,
                            with_labels=with_labels)

    # The mean loss is over labelled tokens (first pieces of words), so batches count them.
    def loss_count_key(self) -> str:
        return "labelled"

    def loss_count(self, batch) -> int:
        return batch["num_labelled"]

    def batch_counts(self, batch) -> None:
        batch["num_labelled"] = int((batch["labels"] != IGNORE_INDEX).sum())

    def training_stats(self, out, batch):
        import torch

        labels = batch["labels"]
        return {"correct": ((out.logits.argmax(-1) == labels) & (labels != IGNORE_INDEX)).sum(),
                "predicted": torch.full((), float(batch["num_labelled"]), device=out.logits.device)}

    def decode(self, outputs, features, examples) -> list[NerPrediction]:
        return decode_ner(outputs.get("logits", []), features, examples, self.spec.labels)

    def score(self, predictions, examples) -> dict[str, Any]:
        return evaluate_ner(predictions, examples)

    def guess_format(self, path: Path, stdin: bool) -> str:
        from onebert.tasks.records import is_json_lines, record_format

        if not stdin and (record_format(path) or is_json_lines(path, None)):
            return record_format(path) or "jsonl"
        if path.suffix.lower() in (".conll", ".iob", ".iob2", ".bio", ".conllu"):
            return "conll"
        return "conll" if looks_like_conll(path) else "text"

    def predict_records(self, predict, path, fmt, columns) -> list[dict[str, Any]]:
        from onebert.tasks.readers import ReadOptions
        from onebert.tasks.records import DEFAULT_SPLITS

        if fmt != "text":
            examples = self.read_examples(path, ReadOptions(file_format=fmt, split=DEFAULT_SPLITS["input"]),
                                          labelled=False)
            texts = [joined_words(e.words) for e in examples]
        else:
            texts, examples = [], []
            for n, line in enumerate(text_lines(path), 1):
                words, spans = split_words(line)
                texts.append((line, spans))
                examples.append(NerExample(words=words, source=f"{path}: line {n}"))
        predictions = _predict_texts_with_words(predict, examples)
        records = []
        for example, prediction, (text, spans) in zip(examples, predictions, texts):
            records.append({"text": text, "words": example.words, "tags": prediction.tags if prediction else [],
                            "entities": entity_records(prediction, example.words, text, spans) if prediction else []})
        return records

    @classmethod
    def count_windows(cls, tokenizer, items, spec) -> int:
        """Windows of `max_seq_length - 2` pieces, each after the first with `max_seq_length // 4` pieces of
        left context (as `ner_features` cuts them; counted on the text's pieces, not its words)."""
        length = spec.max_seq_length
        capacity = length - 2
        step = max(1, capacity - length // 4)
        pieces = [len(ids) for ids in tokenizer.encode_ids(list(items))]
        return sum(1 + math.ceil(max(0, n - capacity) / step) for n in pieces)

    def pipeline_outputs(self, predict, items) -> list[list[dict[str, Any]]]:
        split = []
        for i, item in enumerate(items):
            if not isinstance(item, str):
                raise OneBertError(f"input {i}: expected a text, got {kind_of(item)}")
            split.append(split_words(item))
        examples = [NerExample(words=words, source=f"input {i}") for i, (words, _) in enumerate(split)]
        predictions = _predict_texts_with_words(predict, examples)
        return [entity_records(prediction, words, item, spans) if prediction else []
                for prediction, (words, spans), item in zip(predictions, split, items)]
