"""`onebert embed`: one text per line in, a [lines, hidden] float32 .npy out, rows in line order."""

from __future__ import annotations

import argparse

from onebert import ranges
from onebert.cli.options import add_runtime_options, model_or_run_dir

HELP = "embed texts (one per line) into sentence vectors saved as .npy"
DESCRIPTION = (
    "Embed every line of a text file (or stdin with '-') and save a float32 array [lines, hidden] as .npy, "
    "row i for line i. Pooling and normalisation default to what a sentence-transformers checkpoint declares "
    "(modules.json, 1_Pooling), else mean pooling without normalisation. Lines longer than the model's "
    "maximum length are cut to it and counted in the summary.")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, metavar="DIR", help="model directory (config.json, weights, tokenizer), or a run directory (its best/, else final/)")
    parser.add_argument("--input", required=True, metavar="FILE", help="UTF-8 text file, one text per line; '-' for stdin")
    parser.add_argument("--output", required=True, metavar="FILE.npy", help="where to write the embeddings: a new file, or one an earlier embed wrote "
                             "(a 2-D float32 .npy); never an input or a model's file")
    parser.add_argument("--pooling", choices=("mean", "cls", "pooler"), default=None,
                        help="mean of token states, the [CLS] state, or the tanh pooler output "
                             "(default: the checkpoint's, else mean)")
    parser.add_argument("--normalize", action=argparse.BooleanOptionalAction, default=None,
                        help="L2-normalise each vector (default: the checkpoint's, else no)")
    parser.add_argument("--batch-size", type=ranges.POSITIVE_INT, default=64, help="texts per forward pass")
    parser.add_argument("--max-seq-length", "--max-length", type=ranges.TEXT_LENGTH, default=None, dest="max_length",
                        metavar="N", help="cut texts to this many tokens (default: the model's limit); "
                                          "--max-length is the same option")
    add_runtime_options(parser, inference=True)
    parser.add_argument("--no-progress", "--quiet", action="store_true", dest="no_progress",
                        help="do not show a progress bar (--quiet is the same option)")


def read_lines(path: str) -> list[str]:
    """Lines without their line ends; a final newline does not make an extra empty text."""
    import sys

    from onebert.text_input import check_input_file, decode_utf8

    if path == "-":
        data, name = sys.stdin.buffer.read(), "<stdin>"
    else:
        file = check_input_file(path, "--input")  # a directory or /dev/urandom is named as what it is
        data, name = file.read_bytes(), str(file)
    text = decode_utf8(data, name, "embed reads UTF-8 text files")
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [line.removesuffix("\r") for line in lines]


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from onebert.infer.embedder import Embedder
    from onebert.infer.engines import ran_on, stderr_log
    from onebert.errors import OneBertError
    from onebert.io_utils import atomic_path, check_output_file, is_embedding_array

    args.model = model_or_run_dir(args.model, "onebert embed")
    check_output_file(args.output, inputs=[args.input, args.model], suffix=".npy",
                      made_by_onebert=is_embedding_array, kind="embeddings file")
    texts = read_lines(args.input)
    if not texts:
        raise OneBertError(f"{args.input}: no lines to embed")
    embedder = Embedder(args.model, pooling=args.pooling, normalize=args.normalize, max_length=args.max_length,
                        device=args.device, precision=args.precision, runtime=args.runtime, log=stderr_log)
    result = embedder.encode_result(texts, batch_size=args.batch_size, progress=False if args.no_progress else None)
    with atomic_path(args.output) as tmp:
        with open(tmp, "wb") as handle:  # a file object: np.save would append .npy to a bare temp name
            np.save(handle, result.embeddings)
    empty = sum(1 for text in texts if not text.strip())
    print(f"embedded {len(texts)} lines -> {args.output} {list(result.embeddings.shape)} float32 "
          f"(pooling {embedder.pooling}, {'L2-normalised' if embedder.normalize else 'not normalised'}; "
          f"{ran_on(embedder)})")
    if result.truncated:
        print(f"{len(result.truncated)} lines were longer than {result.max_length} tokens and were cut to it "
              f"(first: line {result.truncated[0] + 1})")
    if empty:
        print(f"{empty} empty lines were embedded as empty texts (rows kept so row i is line i)")
    return 0
