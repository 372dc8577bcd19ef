"""Building a pretraining data directory: corpus -> documents -> NSP instances -> shards (`onebert prepare`).

The corpus is read once as a stream of documents (onebert.data.corpus). Documents go, in corpus
order, into *blocks* of about `shard_size` characters of text (at least two documents each);
every block is one shard and one task for a worker process, which splits sentences, tokenizes,
creates the instances (onebert.data.instances) and writes the shard's arrays. So:

- memory is bounded by the shard size, not the corpus size: the main process holds at most two
  blocks per split plus the blocks in flight (two per worker);
- the NotNext document pool is the block: B of a negative pair comes from another document of
  the same shard. With the default 4 MB shards that is a few hundred documents (chapters of
  several books). The pool depends only on the corpus, its order and `shard_size`;
- the result is deterministic: each block's random generator is seeded from (seed, split, block
  index), so the same corpus, tokenizer, seed and shard size give bit-identical shards for any
  number of workers. (With --vocab-size the vocabulary itself may differ between runs, see
  `Tokenizer.train`; the trained tokenizer is saved in DATA_DIR/tokenizer, and passing it back
  with --tokenizer reproduces the shards exactly.)

Validation: a document goes to the held-out split when a hash of (seed, document index) falls
below `validation_fraction`; held-out documents form their own blocks (NotNext partners come from
held-out documents only, so no held-out text leaks into training) and are used once
(dupe_factor 1). If fewer than two documents are selected, they go back to training and the
validation split is empty (reported).

Everything is written into a temporary directory beside the output, which is renamed into place
only when complete: a failure or Ctrl-C leaves no half-written data directory.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import shutil
from collections import deque
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from onebert.data.corpus import CorpusSummary, Document, has_text, read_documents, resolve_corpus_paths
from onebert.data.format import (FORMAT_NAME, FORMAT_VERSION, METADATA_FILE, SHARD_DIR, TOKENIZER_DIR,
                                 tokenizer_fingerprint, write_shard)
from onebert.errors import OneBertError

logger = logging.getLogger(__name__)

MIN_SEQ_LENGTH = 9          # [CLS] A [SEP] B [SEP] needs room for a few tokens of each
MAX_SEQ_LENGTH = 512        # BERT's position embeddings; the training command checks the model's own
DEFAULT_SHARD_SIZE = 4_000_000
ENCODE_BATCH = 4096


@dataclass
class PrepareConfig:
    """Settings of `onebert prepare` that shape the instances (all stored in metadata.json)."""

    max_seq_length: int = 128
    dupe_factor: int = 5
    short_seq_prob: float = 0.1
    seed: int = 12345
    shard_size: int = DEFAULT_SHARD_SIZE      # characters of corpus text per shard
    validation_fraction: float = 0.01
    format: str = "auto"
    text_field: str = "text"

    def validate(self) -> None:
        if not MIN_SEQ_LENGTH <= self.max_seq_length <= MAX_SEQ_LENGTH:
            raise OneBertError(f"--max-seq-length {self.max_seq_length}: must be between {MIN_SEQ_LENGTH} and "
                               f"{MAX_SEQ_LENGTH} (BERT's position embeddings)")
        if self.dupe_factor < 1:
            raise OneBertError(f"--dupe-factor {self.dupe_factor}: must be >= 1")
        if not 0.0 <= self.short_seq_prob <= 1.0:
            raise OneBertError(f"--short-seq-prob {self.short_seq_prob}: must be between 0 and 1")
        if not 0.0 <= self.validation_fraction < 0.5:
            raise OneBertError(f"--validation-fraction {self.validation_fraction}: must be in [0, 0.5)")
        if self.shard_size < 1000:
            raise OneBertError(f"--shard-size {self.shard_size}: must be at least 1000 characters")


def _unit_hash(*values: Any) -> float:
    digest = hashlib.blake2b(":".join(map(str, values)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") / 2.0**64


def _block_seed(seed: int, split: str, index: int) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}:{split}:{index}".encode()).digest()[:8], "little")


# ----------------------------------------------------------------------------------------------
# Blocks of documents (one per shard)
# ----------------------------------------------------------------------------------------------

@dataclass
class _Block:
    split: str
    documents: list[tuple[int, Document]] = field(default_factory=list)
    chars: int = 0


class _BlockBuilder:
    """Groups a split's documents into blocks of >= `size` characters and >= 2 documents.

    The last full block is held back until the next one is complete, so a final block with a
    single document can be merged into it (NSP needs two documents in a pool).
    """

    def __init__(self, split: str, size: int):
        self.split = split
        self.size = size
        self.current = _Block(split)
        self.held: _Block | None = None
        self.documents = 0

    def add(self, doc_id: int, document: Document) -> list[_Block]:
        self.current.documents.append((doc_id, document))
        self.current.chars += document.num_chars
        self.documents += 1
        if self.current.chars >= self.size and len(self.current.documents) >= 2:
            ready = [self.held] if self.held is not None else []
            self.held, self.current = self.current, _Block(self.split)
            return ready
        return []

    def finish(self) -> list[_Block]:
        """The remaining blocks; a lone final document joins the held block (or stays, for the caller)."""
        blocks = [b for b in (self.held, self.current) if b is not None and b.documents]
        if len(blocks) == 2 and len(blocks[1].documents) < 2:
            blocks[0].documents.extend(blocks[1].documents)
            blocks[0].chars += blocks[1].chars
            blocks.pop()
        self.held, self.current = None, _Block(self.split)
        return blocks


# ----------------------------------------------------------------------------------------------
# Worker side: one block -> one shard
# ----------------------------------------------------------------------------------------------

@dataclass
class ShardTask:
    split: str
    index: int
    documents: list[tuple[int, Document]]
    output: str
    seed: int
    max_seq_length: int
    short_seq_prob: float
    dupe_factor: int


@dataclass
class ShardResult:
    split: str
    name: str
    instances: int
    tokens: int
    is_next: int
    documents: int
    sentences: int
    corpus_tokens: int
    sentences_without_text: int
    sha256: str


_worker_tokenizer = None


def _init_worker(tokenizer_dir: str, parallel_tokenizer: bool) -> None:
    """Load the tokenizer once per worker process."""
    global _worker_tokenizer
    if not parallel_tokenizer:
        # Several worker processes already use the cores; Rust threads on top only oversubscribe them.
        os.environ["TOKENIZERS_PARALLELISM"] = "false"
    from onebert.tokenizer import Tokenizer

    _worker_tokenizer = Tokenizer.from_pretrained(tokenizer_dir)


def tokenize_documents(tokenizer, documents: Sequence[tuple[int, Document]]):
    """Split sentences and tokenize a pool of documents; returns (TokenizedDocuments, sentences, dropped)."""
    from onebert.data.instances import TokenizedDocument

    per_document: list[list[str]] = []
    dropped = 0
    for _, document in documents:
        sentences = []
        for sentence in document.sentences():
            if has_text(sentence):
                sentences.append(sentence)
            else:
                dropped += 1
        per_document.append(sentences)
    flat = [s for sentences in per_document for s in sentences]
    ids: list[list[int]] = []
    for start in range(0, len(flat), ENCODE_BATCH):
        ids.extend(tokenizer.encode_ids(flat[start:start + ENCODE_BATCH]))
    tokenized = []
    position = 0
    for (doc_id, document), sentences in zip(documents, per_document):
        pieces = [p for p in ids[position:position + len(sentences)] if p]
        dropped += len(sentences) - len(pieces)
        position += len(sentences)
        if pieces:
            tokenized.append(TokenizedDocument.from_sentences(doc_id, pieces))
    return tokenized, len(flat), dropped


def build_shard(task: ShardTask, tokenizer=None) -> ShardResult:
    """Tokenize one block, create its NSP instances and write them as shard `<split>-<index>`."""
    import numpy as np

    from onebert.data.instances import create_instances, materialize

    tokenizer = tokenizer if tokenizer is not None else _worker_tokenizer
    documents, sentences, dropped = tokenize_documents(tokenizer, task.documents)
    if len(documents) < 2:
        sources = ", ".join(d.source for _, d in task.documents[:3])
        raise OneBertError(f"{sources}: fewer than two documents with text in this part of the corpus; "
                           "next-sentence prediction needs two")
    rng = random.Random(_block_seed(task.seed, task.split, task.index))
    spans = create_instances(documents, task.max_seq_length, task.short_seq_prob, task.dupe_factor, rng)
    dtype = np.uint16 if tokenizer.vocab_size <= 65536 else np.int32
    arrays = materialize(spans, documents, tokenizer.cls_token_id, tokenizer.sep_token_id, dtype)
    name = f"{task.split}-{task.index:05d}"
    sha = write_shard(Path(task.output), name, {"tokens": arrays.tokens, "offsets": arrays.offsets,
                                                "a_lengths": arrays.a_lengths, "labels": arrays.labels})
    return ShardResult(split=task.split, name=name, instances=len(arrays), tokens=int(arrays.offsets[-1]),
                       is_next=int((arrays.labels == 0).sum()), documents=len(documents), sentences=sentences,
                       corpus_tokens=sum(len(d.tokens) for d in documents), sentences_without_text=dropped,
                       sha256=sha)


def _run_task(task: ShardTask) -> ShardResult:
    return build_shard(task)


# ----------------------------------------------------------------------------------------------
# Main side
# ----------------------------------------------------------------------------------------------

class _Progress:
    def __init__(self, total: int, enabled: bool):
        self.bar = None
        if enabled:
            from tqdm import tqdm

            # disable=None: a bar only when stderr is a terminal (not into a pipe or a log file)
            self.bar = tqdm(total=total, unit="B", unit_scale=True, desc="prepare", dynamic_ncols=True,
                            disable=None)

    def bytes(self, n: int) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def note(self, **values: Any) -> None:
        if self.bar is not None:
            self.bar.set_postfix(values, refresh=False)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _describe(paths: Sequence[str | os.PathLike]) -> str:
    names = [str(p) for p in paths]
    return ", ".join(names[:3]) + (f" (+{len(names) - 3} more)" if len(names) > 3 else "")


def is_data_dir(directory: Path) -> bool:
    """A data directory `onebert prepare` wrote, holding nothing else: what --overwrite may replace whole."""
    from onebert.io_utils import holds_only

    try:
        metadata = json.loads((directory / METADATA_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(metadata, dict) and metadata.get("format") == FORMAT_NAME \
        and holds_only(directory, (METADATA_FILE, SHARD_DIR, TOKENIZER_DIR))


def _check_output(output: Path, overwrite: bool, corpus: Sequence[str | os.PathLike] = (),
                  tokenizer_dir: str | os.PathLike | None = None) -> None:
    """The output may be new, empty, or (with --overwrite) a data directory prepare made; never one that
    is or holds the corpus or the tokenizer, never a directory of the user's (io_utils.check_output_dir)."""
    from onebert.io_utils import check_output_dir

    check_output_dir(output, "--output", inputs=[*corpus, *([tokenizer_dir] if tokenizer_dir else [])],
                     made_by_onebert=is_data_dir, kind="data directory")
    if output.is_dir() and any(output.iterdir()) and not overwrite:
        raise OneBertError(f"{output}: already holds prepared data; choose another --output "
                           f"or pass --overwrite to replace it")


def _train_tokenizer(corpus: Sequence[str | os.PathLike], config: PrepareConfig, work: Path, vocab_size: int,
                     lowercase: bool, min_frequency: int, log: Callable[[str], None]):
    """Pass 1: write the corpus text as read (units, one a line) and train a WordPiece vocabulary on it."""
    from onebert.tokenizer import Tokenizer

    text_file = work / "tokenizer-training.txt"
    summary = CorpusSummary()
    documents = 0
    first_source = None
    with open(text_file, "w", encoding="utf-8") as handle:
        for document in read_documents(corpus, format=config.format, text_field=config.text_field,
                                       summary=summary, warn=False):
            documents += 1
            first_source = first_source or document.source
            for unit in document.units:
                handle.write(unit)
                handle.write("\n")
    _check_document_count(corpus, documents, first_source, summary)
    log(f"training a WordPiece vocabulary of {vocab_size} tokens on {documents} documents")
    tokenizer = Tokenizer.train([text_file], vocab_size=vocab_size, lowercase=lowercase, min_frequency=min_frequency)
    text_file.unlink()
    return tokenizer


def _check_document_count(corpus: Sequence[str | os.PathLike], documents: int, first_source: str | None,
                          summary: CorpusSummary) -> None:
    if documents == 0:
        details = "; ".join(summary.report_lines()) or f"{summary.files} file(s) read"
        raise OneBertError(f"{_describe(corpus)}: the corpus holds no text ({details})")
    if documents == 1:
        raise OneBertError(f"{first_source}: the corpus holds a single document; next-sentence prediction needs "
                           "at least two (separate documents with a blank line in one-sentence-per-line files, "
                           "or give more files)")


def prepare_pretraining_data(corpus: Sequence[str | os.PathLike], output: str | os.PathLike,
                             config: PrepareConfig | None = None, *, tokenizer_dir: str | os.PathLike | None = None,
                             vocab_size: int | None = None, lowercase: bool = True, min_frequency: int = 2,
                             workers: int = 1, overwrite: bool = False, progress: bool = False,
                             log: Callable[[str], None] = logger.info) -> dict[str, Any]:
    """Build the data directory `output` from `corpus` and return its metadata.

    Exactly one of `tokenizer_dir` (an existing tokenizer) and `vocab_size` (train one on the corpus).
    """
    config = config or PrepareConfig()
    config.validate()
    if (tokenizer_dir is None) == (vocab_size is None):
        raise OneBertError("give exactly one of --tokenizer DIR and --vocab-size N")
    if workers < 1:
        raise OneBertError(f"--workers {workers}: must be >= 1")
    output = Path(output)
    resolve_corpus_paths(corpus)  # fail on a missing path before any work
    if tokenizer_dir is not None and not Path(tokenizer_dir).exists():
        raise OneBertError(f"{tokenizer_dir}: no such tokenizer directory")
    _check_output(output, overwrite, corpus, tokenizer_dir)

    output.parent.mkdir(parents=True, exist_ok=True)
    work = output.parent / f".{output.name}.partial-{os.getpid()}"
    shutil.rmtree(work, ignore_errors=True)
    (work / SHARD_DIR).mkdir(parents=True)
    try:
        if tokenizer_dir is not None:
            from onebert.tokenizer import Tokenizer

            tokenizer = Tokenizer.from_pretrained(tokenizer_dir)
        else:
            tokenizer = _train_tokenizer(corpus, config, work, vocab_size, lowercase, min_frequency, log)
        tokenizer.save_pretrained(work / TOKENIZER_DIR)
        metadata = _build_shards(corpus, work, config, tokenizer, workers, progress, log)
        from onebert.io_utils import atomic_write_text

        atomic_write_text(work / METADATA_FILE, json.dumps(metadata, indent=2) + "\n")
        _move_into_place(work, output)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return metadata


def _move_into_place(work: Path, output: Path) -> None:
    old = None
    if output.exists():
        old = output.parent / f".{output.name}.old-{os.getpid()}"
        os.replace(output, old)
    os.replace(work, output)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _build_shards(corpus: Sequence[str | os.PathLike], work: Path, config: PrepareConfig, tokenizer, workers: int,
                  progress: bool, log: Callable[[str], None]) -> dict[str, Any]:
    summary = CorpusSummary()
    files = resolve_corpus_paths(corpus)
    bar = _Progress(sum(f.stat().st_size for f in files), progress)
    builders = {"train": _BlockBuilder("train", config.shard_size),
                "validation": _BlockBuilder("validation", config.shard_size)}
    next_index = {"train": 0, "validation": 0}
    results: list[ShardResult] = []
    first_source: str | None = None

    def task_for(block: _Block) -> ShardTask:
        index = next_index[block.split]
        next_index[block.split] += 1
        dupe = config.dupe_factor if block.split == "train" else 1
        return ShardTask(block.split, index, block.documents, str(work), config.seed, config.max_seq_length,
                         config.short_seq_prob, dupe)

    def blocks() -> Iterator[_Block]:
        nonlocal first_source
        doc_id = 0
        for document in read_documents(corpus, format=config.format, text_field=config.text_field,
                                       summary=summary, on_bytes=bar.bytes):
            first_source = first_source or document.source
            held_out = config.validation_fraction > 0 and _unit_hash(config.seed, doc_id) < config.validation_fraction
            yield from builders["validation" if held_out else "train"].add(doc_id, document)
            doc_id += 1
        validation = builders["validation"].finish()
        held_out = builders["validation"].documents
        if held_out and (held_out < 2 or builders["train"].documents < 2):
            # Too few documents to hold some out (NSP needs two per split): all of them train.
            log(f"validation split left empty: only {held_out} held-out document(s) "
                f"and {builders['train'].documents} training document(s)")
            for block in validation:
                for pair in block.documents:
                    yield from builders["train"].add(*pair)
            validation = []
        train = builders["train"].finish()
        _check_document_count(corpus, builders["train"].documents, first_source, summary)
        yield from validation
        yield from train

    def collect(result: ShardResult) -> None:
        results.append(result)
        bar.note(shards=len(results), instances=sum(r.instances for r in results))

    try:
        if workers == 1:
            for block in blocks():
                collect(build_shard(task_for(block), tokenizer=tokenizer))
        else:
            import multiprocessing

            context = multiprocessing.get_context("spawn")
            with context.Pool(workers, initializer=_init_worker,
                              initargs=(str(work / TOKENIZER_DIR), False)) as pool:
                in_flight: deque = deque()
                for block in blocks():
                    in_flight.append(pool.apply_async(_run_task, (task_for(block),)))
                    while len(in_flight) >= 2 * workers:
                        collect(in_flight.popleft().get())
                while in_flight:
                    collect(in_flight.popleft().get())
    finally:
        bar.close()
    for line in summary.report_lines():
        log(line)
    return _metadata(corpus, config, tokenizer, summary, results)


def _split_metadata(results: list[ShardResult]) -> dict[str, Any]:
    instances = sum(r.instances for r in results)
    return {
        "instances": instances,
        "tokens": sum(r.tokens for r in results),
        "documents": sum(r.documents for r in results),
        "sentences": sum(r.sentences for r in results),
        "corpus_tokens": sum(r.corpus_tokens for r in results),
        "sentences_without_text": sum(r.sentences_without_text for r in results),
        "is_next_fraction": (sum(r.is_next for r in results) / instances) if instances else None,
        "shards": [{"name": r.name, "instances": r.instances, "tokens": r.tokens, "sha256": r.sha256}
                   for r in results],
    }


def _metadata(corpus: Sequence[str | os.PathLike], config: PrepareConfig, tokenizer, summary: CorpusSummary,
              results: list[ShardResult]) -> dict[str, Any]:
    from onebert import __version__

    splits = {split: _split_metadata([r for r in results if r.split == split]) for split in ("train", "validation")}
    fingerprint = hashlib.sha256()
    for split in ("train", "validation"):
        for shard in splits[split]["shards"]:
            fingerprint.update(f"{shard['name']}:{shard['sha256']}\n".encode())
    settings = asdict(config)
    return {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "created_by": f"onebert {__version__}",
        "fingerprint": fingerprint.hexdigest(),
        "max_seq_length": config.max_seq_length,
        "token_dtype": "uint16" if tokenizer.vocab_size <= 65536 else "int32",
        "settings": settings,
        "validation_dupe_factor": 1,
        "tokenizer": {
            "path": TOKENIZER_DIR,
            "vocab_size": tokenizer.vocab_size,
            "vocab_sha256": tokenizer_fingerprint(tokenizer),
            "do_lower_case": tokenizer.do_lower_case,
            "special_ids": {"pad": tokenizer.pad_token_id, "unk": tokenizer.unk_token_id,
                            "cls": tokenizer.cls_token_id, "sep": tokenizer.sep_token_id,
                            "mask": tokenizer.mask_token_id},
        },
        "corpus": {"paths": [str(p) for p in corpus], "summary": summary.as_dict()},
        "splits": splits,
    }
