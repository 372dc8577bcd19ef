"""`onebert predict`: run a fine-tuned model over a file (or stdin) and write one JSON line per input."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from onebert import ranges
from onebert.cli.options import add_runtime_options

HELP = "predict with a fine-tuned model: JSON lines out, one per input"
FORMATS = ("auto", "text", "tsv", "csv", "jsonl", "json", "parquet", "datasets", "conll", "squad")
DESCRIPTION = (
    "Run a fine-tuned model over inputs and write JSON lines, one per input in input order. Inputs "
    "(--format auto decides by the file suffix and content): classification: plain text lines (.txt, stdin), "
    "or TSV/CSV/JSONL with the text (and pair) columns of fine-tuning; ner: plain text lines or CoNLL (words "
    "in the first column; detected by -DOCSTART- or a tag column); qa: SQuAD JSON, or JSON lines "
    '{"question": ..., "context": ..., "id": ...} (.jsonl, stdin); for each task also Parquet, a JSON array (.json '
    "starting with [) or a `datasets` save_to_disk directory (a DatasetDict gives its test split). "
    'Outputs: classification {"label", "score", '
    '"scores"} ({"score"} for regression); ner {"text", "words", "tags", "entities": [{"entity", "word", '
    '"start", "end", "score"}]}; qa {"id", "answer", "start", "end", "score"}. '
    "Example: onebert predict --model runs/conll --input news.txt --output entities.jsonl")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", metavar="DIR", help="fine-tuned model directory, or a run directory (its best/, else final/) (required)")
    parser.add_argument("--input", metavar="FILE|-", help="inputs; - reads stdin (required)")
    parser.add_argument("--output", metavar="FILE|-", default="-",
                        help="JSON lines; - writes stdout. An existing file is replaced only if it holds JSON lines "
                             "(never the --input)")
    parser.add_argument("--format", choices=FORMATS, default="auto", help="input format")
    parser.add_argument("--batch-size", type=ranges.POSITIVE_INT, default=64, help="sequences per batch")
    parser.add_argument("--text-column", default=None, help="classification tables: text column")
    parser.add_argument("--text-pair-column", default=None, help="classification tables: second text column")
    add_runtime_options(parser, bf16_alias=True, inference=True)


def run(args: argparse.Namespace) -> int:
    import json
    import tempfile
    import time

    from onebert.errors import OneBertError
    from onebert.io_utils import atomic_write_text, check_output_file, is_json_lines
    from onebert.infer.engines import ran_on, stderr_log
    from onebert.infer.predictor import Predictor

    for name in ("model", "input"):
        if not getattr(args, name):
            raise OneBertError(f"--{name} is required")
    if args.output != "-":  # checked before the model is loaded: never the input, never a file of the user's
        check_output_file(args.output, "--output", inputs=[args.input, args.model], made_by_onebert=is_json_lines,
                          kind="JSON-lines predictions file")
    predictor = Predictor.load(args.model, device=args.device, batch_size=args.batch_size, precision=args.precision,
                               runtime=args.runtime, log=stderr_log)
    predictor.progress = True
    start = time.perf_counter()
    if args.input == "-":
        # The readers read files; stdin goes through a temporary one, and errors name <stdin>.
        with tempfile.TemporaryDirectory() as tmp:
            suffix = {"tsv": ".tsv", "csv": ".csv", "jsonl": ".jsonl", "squad": ".json", "json": ".json",
                      "parquet": ".parquet"}.get(args.format, ".txt")
            if args.format == "datasets":
                raise OneBertError("--input -: a datasets directory cannot come from stdin; give its path")
            path = Path(tmp) / f"stdin{suffix}"
            path.write_bytes(sys.stdin.buffer.read())
            try:
                records = predict_file(predictor, path, args, stdin=True)
            except OneBertError as exc:
                raise OneBertError(str(exc).replace(str(path), "<stdin>")) from None
    else:
        records = predict_file(predictor, Path(args.input), args)
    text = "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records)
    seconds = time.perf_counter() - start
    if args.output == "-":
        sys.stdout.write(text)
        sys.stdout.flush()
    else:
        atomic_write_text(args.output, text)
    print(f"predict: {len(records):,} {predictor.spec.task} predictions in {seconds:.1f}s -> "
          f"{'stdout' if args.output == '-' else args.output} ({ran_on(predictor)})", file=sys.stderr)
    return 0


def predict_file(predictor, path: Path, args: argparse.Namespace, stdin: bool = False) -> list[dict[str, Any]]:
    from onebert.cli.commands.evaluate import columns

    task = predictor.spec.handler
    fmt = input_format(task, path, args.format, stdin)
    return task.predict_records(predictor.predict, path, fmt, columns(predictor.spec, args))


def input_format(task, path: Path, given: str, stdin: bool) -> str:
    from onebert.errors import OneBertError

    if given != "auto":
        if given not in task.input_formats:
            raise OneBertError(f"--format {given} does not fit a {task.name} model; use one of "
                               f"{', '.join(task.input_formats)}")
        return given
    return task.guess_format(path, stdin)
