"""`onebert prepare`: turn raw text into a pretraining data directory (tokenizer + NSP instance shards)."""

from __future__ import annotations

import argparse
import os
import re

from onebert import ranges

HELP = "build pretraining data (MLM + NSP instances) from text files"
DESCRIPTION = (
    "Read a corpus (files, directories, globs, .gz; one-sentence-per-line, prose, Project Gutenberg, "
    "WikiText or JSONL), split it into documents and sentences, tokenize it and write NSP instances "
    "([CLS] A [SEP] B [SEP]) as memory-mapped shards plus a copy of the tokenizer. Masking happens "
    "later, at training time. Example: onebert prepare --corpus books/ --vocab-size 30522 "
    "--max-seq-length 128 --output data/")


def _size(text: str) -> int:
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kKmMgG]?)\s*[bB]?\s*", str(text))
    if not match:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (examples: 4000000, 4M, 512K)")
    scale = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9}[match.group(2).lower()]
    return int(float(match.group(1)) * scale)


_SHARD_SIZE = ranges.integer(1000, parse=_size, what="a size", unit="characters")  # PrepareConfig's minimum


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from onebert.data.corpus import FORMATS

    parser.add_argument("--corpus", nargs="+", metavar="PATH", required=True,
                        help="text files, directories (read recursively), glob patterns or .gz files")
    parser.add_argument("--output", metavar="DATA_DIR", required=True, help="the data directory to create")
    vocab = parser.add_mutually_exclusive_group()
    vocab.add_argument("--tokenizer", metavar="DIR", help="use this tokenizer (a model or tokenizer directory)")
    vocab.add_argument("--vocab-size", type=ranges.VOCAB_SIZE, metavar="N",
                       help="train a WordPiece vocabulary of N tokens on the corpus")
    parser.add_argument("--cased", action="store_true", help="with --vocab-size: a cased vocabulary (otherwise text is lower-cased)")
    parser.add_argument("--min-frequency", type=ranges.NON_NEGATIVE_INT, default=2,
                        help="with --vocab-size: minimum pair frequency")
    parser.add_argument("--max-seq-length", type=ranges.PREPARE_SEQ_LENGTH, default=128,
                        help="tokens per instance, [CLS] and [SEP]s included")
    parser.add_argument("--dupe-factor", type=ranges.POSITIVE_INT, default=5,
                        help="passes over the corpus, each with different A/B cuts (training split)")
    parser.add_argument("--short-seq-prob", type=ranges.PROBABILITY, default=0.1,
                        help="probability that a document gets a random shorter target length")
    parser.add_argument("--seed", type=ranges.SEED, default=12345,
                        help="seeds the A/B cuts, the NotNext partners and the choice of held-out documents")
    parser.add_argument("--workers", type=ranges.POSITIVE_INT, default=min(4, os.cpu_count() or 1),
                        help="worker processes (the output does not depend on it)")
    parser.add_argument("--shard-size", type=_SHARD_SIZE, default="4M",
                        help="characters of corpus text per shard (bounds memory; sets the NotNext document pool)")
    parser.add_argument("--validation-fraction", type=ranges.number(0, 0.5, max_inclusive=False), default=0.01,
                        help="fraction of documents held out for validation")
    parser.add_argument("--format", choices=FORMATS, default="auto", help="input layout (auto: detected per file)")
    parser.add_argument("--text-field", default="text", help="JSONL field holding the text")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing data directory made by `onebert prepare` (never another "
                             "directory, nor one that holds the corpus)")
    parser.add_argument("--no-progress", "--quiet", action="store_true", dest="no_progress",
                        help="no progress bar (--quiet is the same option)")


def run(args: argparse.Namespace) -> int:
    import sys
    import time

    from onebert.data.prepare import PrepareConfig, prepare_pretraining_data
    from onebert.errors import OneBertError

    if args.tokenizer is None and args.vocab_size is None:
        raise OneBertError("give --tokenizer DIR (an existing vocabulary) or --vocab-size N (train one on the corpus)")
    config = PrepareConfig(max_seq_length=args.max_seq_length, dupe_factor=args.dupe_factor,
                           short_seq_prob=args.short_seq_prob, seed=args.seed, shard_size=args.shard_size,
                           validation_fraction=args.validation_fraction, format=args.format,
                           text_field=args.text_field)

    def log(message: str) -> None:
        print(message, file=sys.stderr)

    started = time.perf_counter()
    metadata = prepare_pretraining_data(
        args.corpus, args.output, config, tokenizer_dir=args.tokenizer, vocab_size=args.vocab_size,
        lowercase=not args.cased, min_frequency=args.min_frequency, workers=args.workers,
        overwrite=args.overwrite, progress=not args.no_progress and sys.stderr.isatty(), log=log)
    seconds = time.perf_counter() - started
    train, validation = metadata["splits"]["train"], metadata["splits"]["validation"]
    corpus_tokens = train["corpus_tokens"] + validation["corpus_tokens"]
    summary = metadata["corpus"]["summary"]
    print(f"wrote {args.output}: {train['instances']:,} training instances ({train['tokens']:,} tokens, "
          f"{len(train['shards'])} shard(s), IsNext {train['is_next_fraction']:.1%}) from {train['documents']:,} "
          f"documents; {validation['instances']:,} validation instances from {validation['documents']:,} documents")
    print(f"read {summary['files']} file(s), {summary['bytes'] / 1e6:.1f} MB, {corpus_tokens:,} corpus tokens "
          f"in {seconds:.1f} s ({corpus_tokens / max(seconds, 1e-9):,.0f} tokens/s, {args.workers} worker(s))")
    return 0
