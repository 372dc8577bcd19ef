"""`onebert tokenizer train|encode`: learn a WordPiece vocabulary from text, or see how a tokenizer splits text."""

from __future__ import annotations

import argparse

from onebert import ranges
from onebert.cli.options import HelpFormatter

HELP = "train a WordPiece vocabulary from text files, or show how a tokenizer splits a text"
DESCRIPTION = """\
train:  learn a BERT WordPiece vocabulary from plain-text files (UTF-8, optionally .gz) and write
        vocab.txt, tokenizer.json, tokenizer_config.json and special_tokens_map.json, the layout that
        `onebert` and transformers' BertTokenizerFast.from_pretrained both load.
encode: print the tokens, ids, token types and character offsets of a text or a text pair."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    actions = parser.add_subparsers(dest="tokenizer_command", metavar="ACTION", required=True)

    train = actions.add_parser("train", help="learn a WordPiece vocabulary from text files",
                               formatter_class=HelpFormatter)
    train.add_argument("--input", nargs="+", required=True, metavar="FILE",
                       help="text files (UTF-8; .gz is decompressed); every line is text to learn from")
    train.add_argument("--output", required=True, metavar="DIR",
                       help="directory to write the tokenizer to: new, empty, or one an earlier `tokenizer train` "
                            "wrote (never a model directory or a directory of other files)")
    train.add_argument("--vocab-size", type=ranges.VOCAB_SIZE, default=30522,
                       help="number of tokens, special tokens included")
    train.add_argument("--cased", action="store_true",
                       help="keep case and accents (default: lower-case and strip accents, as BERT uncased)")
    train.add_argument("--min-frequency", type=ranges.NON_NEGATIVE_INT, default=2,
                       help="a merged piece must occur this often in the corpus to enter the vocabulary")
    train.add_argument("--limit-alphabet", type=ranges.POSITIVE_INT, default=1000,
                       help="keep at most this many distinct characters; rarer ones become [UNK]")
    train.add_argument("--model-max-length", type=ranges.integer(ranges.MIN_TEXT_TOKENS, 10**6 - 1), default=512,
                       help="longest input the model will take, written to tokenizer_config.json")
    train.add_argument("--no-progress", "--quiet", action="store_true", dest="quiet",
                       help="no progress bars (--quiet is the same option)")

    encode = actions.add_parser("encode", help="print how a tokenizer splits a text or a text pair",
                                formatter_class=HelpFormatter)
    encode.add_argument("--tokenizer", required=True, metavar="DIR",
                        help="tokenizer or model directory (tokenizer.json or vocab.txt)")
    encode.add_argument("text", help="the text (first segment)")
    encode.add_argument("pair", nargs="?", default=None, help="optional second segment")
    encode.add_argument("--max-seq-length", "--max-length", type=ranges.TEXT_LENGTH, default=None, dest="max_length",
                        metavar="N",
                        help="truncate (longest segment first) to this many tokens; default: the tokenizer's limit")


def run(args: argparse.Namespace) -> int:
    if args.tokenizer_command == "train":
        return _train(args)
    return _encode(args)


def _train(args: argparse.Namespace) -> int:
    import sys
    import time

    from onebert.io_utils import check_output_dir
    from onebert.tokenizer import Tokenizer

    check_output_dir(args.output, "--output", inputs=args.input, made_by_onebert=_is_onebert_tokenizer_dir,
                     kind="tokenizer directory")
    started = time.perf_counter()
    print(f"training a {'cased' if args.cased else 'lower-cased'} WordPiece vocabulary of {args.vocab_size} "
          f"tokens on {len(args.input)} file(s)", flush=True)
    tokenizer = Tokenizer.train(args.input, vocab_size=args.vocab_size, lowercase=not args.cased,
                                min_frequency=args.min_frequency, limit_alphabet=args.limit_alphabet,
                                model_max_length=args.model_max_length,
                                show_progress=not args.quiet and sys.stderr.isatty())
    tokenizer.save_pretrained(args.output)
    stats = tokenizer.training_stats
    note = "" if tokenizer.vocab_size >= args.vocab_size else \
        f" (fewer than the {args.vocab_size} asked for: the corpus has no more pieces seen {args.min_frequency}+ times)"
    print(f"read {stats.lines_with_text:,} lines of text ({stats.lines - stats.lines_with_text:,} blank) "
          f"from {stats.files} file(s)")
    print(f"wrote {args.output}: vocabulary of {tokenizer.vocab_size:,} tokens{note} "
          f"in {time.perf_counter() - started:.1f} s")
    return 0


TOKENIZER_FILES = ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
# The keys of the tokenizer_config.json that Tokenizer.save_pretrained writes (transformers writes more).
_ONEBERT_TOKENIZER_CONFIG = {"tokenizer_class", "do_lower_case", "tokenize_chinese_chars", "strip_accents",
                             "model_max_length", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token",
                             "clean_up_tokenization_spaces"}


def _is_onebert_tokenizer_dir(directory) -> bool:
    """A directory an earlier `tokenizer train` wrote and nothing else: a re-run may replace its files.
    A model directory (weights, config.json) or a downloaded tokenizer is never replaced."""
    import json

    from onebert.io_utils import holds_only

    try:
        config = json.loads((directory / "tokenizer_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and set(config) == _ONEBERT_TOKENIZER_CONFIG \
        and holds_only(directory, TOKENIZER_FILES)


def _encode(args: argparse.Namespace) -> int:
    from onebert.errors import OneBertError
    from onebert.tokenizer import Tokenizer

    if args.pair is not None and args.max_length is not None and args.max_length < ranges.MIN_PAIR_TOKENS:
        raise OneBertError(f"--max-length {args.max_length}: a text pair needs at least {ranges.MIN_PAIR_TOKENS} "
                           "tokens ([CLS] A [SEP] B [SEP], one token of each text)")
    _check_argument(args.text, "text")
    if args.pair is not None:
        _check_argument(args.pair, "pair")
    tokenizer = Tokenizer.from_pretrained(args.tokenizer)
    batch = tokenizer(args.text, args.pair, max_length=args.max_length, padding=False, return_tensors=None,
                      return_offsets_mapping=True, return_word_ids=True)
    ids, types = batch["input_ids"][0], batch["token_type_ids"][0]
    offsets, segments = batch["offset_mapping"][0], batch["sequence_ids"][0]
    tokens = tokenizer.convert_ids_to_tokens(ids)
    texts = [args.text, args.pair]
    print(f"{len(ids)} tokens: {' '.join(tokens)}")
    print(f"{'pos':>4} {'id':>6} {'type':>4}  {'chars':<11} token")
    for position, (token, index, kind, (start, end), segment) in enumerate(zip(tokens, ids, types, offsets,
                                                                                 segments)):
        span = "" if segment is None else f"{start}:{end}"
        shown = "" if segment is None else f"  {texts[segment][start:end]!r}"
        print(f"{position:>4} {index:>6} {kind:>4}  {span:<11} {token}{shown}")
    return 0


def _check_argument(text: str, name: str) -> None:
    """Refuse a command-line text the tokenizer cannot take, before it fails with a bare TypeError.

    Python turns bytes of the command line that are not UTF-8 into lone surrogates U+DC80-U+DCFF.
    """
    from onebert.text_input import describe_surrogate, lone_surrogate
    from onebert.errors import OneBertError

    index = lone_surrogate(text)
    if index is None:
        return
    code = ord(text[index])
    if 0xDC80 <= code <= 0xDCFF:
        raise OneBertError(f"the {name} argument is not valid UTF-8 (byte 0x{code - 0xDC00:02x} at character "
                           f"{index}); check the terminal's encoding")
    raise OneBertError(f"the {name} argument: {describe_surrogate(text, index)}")
