"""`onebert predict`: run a fine-tuned model over a file (or stdin) and write one JSON line per input."""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Any

from onebert import ranges

HELP = "predict with a fine-tuned model: JSON lines out, one per input"
FORMATS = ("auto", "text", "tsv", "csv", "jsonl", "conll", "squad")
DESCRIPTION = (
    "Run a fine-tuned model over inputs and write JSON lines, one per input in input order. Inputs "
    "(--format auto decides by the file suffix and content): classification: plain text lines (.txt, stdin), "
    "or TSV/CSV/JSONL with the text (and pair) columns of fine-tuning; ner: plain text lines or CoNLL (words "
    "in the first column; detected by -DOCSTART- or a tag column); qa: SQuAD JSON, or JSON lines "
    '{"question": ..., "context": ..., "id": ...} (.jsonl, stdin). Outputs: classification {"label", "score", '
    '"scores"} ({"score"} for regression); ner {"text", "words", "tags", "entities": [{"entity", "word", '
    '"start", "end", "score"}]}; qa {"id", "answer", "start", "end", "score"}. '
    "Example: onebert predict --model runs/conll --input news.txt --output entities.jsonl")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", metavar="DIR", help="fine-tuned model directory (required)")
    parser.add_argument("--input", metavar="FILE|-", help="inputs; - reads stdin (required)")
    parser.add_argument("--output", metavar="FILE|-", default="-",
                        help="JSON lines; - writes stdout. An existing file is replaced only if it holds JSON lines "
                             "(never the --input)")
    parser.add_argument("--format", choices=FORMATS, default="auto", help="input format")
    parser.add_argument("--batch-size", type=ranges.POSITIVE_INT, default=64, help="sequences per batch")
    parser.add_argument("--text-column", default=None, help="classification tables: text column")
    parser.add_argument("--text-pair-column", default=None, help="classification tables: second text column")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda", "xpu", "mps"), default="auto")
    parser.add_argument("--precision", choices=("auto", "fp32", "bf16", "fp16"), default="fp32")
    parser.add_argument("--bf16", action="store_true", help="shorthand for --precision bf16")


def run(args: argparse.Namespace) -> int:
    import json
    import tempfile
    import time

    from onebert.errors import OneBertError
    from onebert.io_utils import atomic_write_text, check_output_file, is_json_lines
    from onebert.predict import Predictor

    for name in ("model", "input"):
        if not getattr(args, name):
            raise OneBertError(f"--{name} is required")
    if args.output != "-":  # checked before the model is loaded: never the input, never a file of the user's
        check_output_file(args.output, "--output", inputs=[args.input, args.model], made_by_onebert=is_json_lines,
                          kind="JSON-lines predictions file")
    precision = "bf16" if args.bf16 else args.precision
    predictor = Predictor.load(args.model, device=args.device, batch_size=args.batch_size, precision=precision)
    predictor.progress = True
    start = time.perf_counter()
    if args.input == "-":
        # The readers read files; stdin goes through a temporary one, and errors name <stdin>.
        with tempfile.TemporaryDirectory() as tmp:
            suffix = {"tsv": ".tsv", "csv": ".csv", "jsonl": ".jsonl", "squad": ".json"}.get(args.format, ".txt")
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
          f"{'stdout' if args.output == '-' else args.output}", file=sys.stderr)
    return 0


def predict_file(predictor, path: Path, args: argparse.Namespace, stdin: bool = False) -> list[dict[str, Any]]:
    from onebert.predict import classification_record, entity_records, joined_words

    spec = predictor.spec
    fmt = input_format(spec.task, path, args.format, stdin)
    if spec.task == "classification":
        if fmt == "text":
            from onebert.data.tasks import TextExample

            examples = [TextExample(text=line, source=f"{path}: line {n}") for n, line in enumerate(_text_lines(path), 1)]
        else:
            from onebert.data.tasks import read_classification

            from onebert.commands.evaluate import columns

            chosen = {k: v for k, v in columns(spec, args).items() if k != "label_column"}
            examples = read_classification(path, file_format=fmt, labelled=False, **chosen)
        return [classification_record(p, spec) for p in predictor.predict(examples)]
    if spec.task == "ner":
        from onebert.data.tasks import NerExample, read_conll
        from onebert.predict import split_words

        if fmt == "conll":
            examples = read_conll(path, labelled=False)
            texts = [joined_words(e.words) for e in examples]
        else:
            texts, examples = [], []
            for n, line in enumerate(_text_lines(path), 1):
                words, spans = split_words(line)
                texts.append((line, spans))
                examples.append(NerExample(words=words, source=f"{path}: line {n}"))
        filled = [i for i, e in enumerate(examples) if e.words]
        predictions = dict(zip(filled, predictor.predict([examples[i] for i in filled])))
        records = []
        for i, (example, (text, spans)) in enumerate(zip(examples, texts)):
            prediction = predictions.get(i)
            records.append({"text": text, "words": example.words, "tags": prediction.tags if prediction else [],
                            "entities": entity_records(prediction, example.words, text, spans) if prediction else []})
        return records
    from onebert.predict import answer_record

    examples = read_squad_input(path, fmt)
    return [{"id": p.id, **answer_record(p)} for p in predictor.predict(examples)]


def input_format(task: str, path: Path, given: str, stdin: bool) -> str:
    from onebert.errors import OneBertError

    allowed = {"classification": ("text", "tsv", "csv", "jsonl"), "ner": ("text", "conll"), "qa": ("squad", "jsonl")}
    if given != "auto":
        if given not in allowed[task]:
            raise OneBertError(f"--format {given} does not fit a {task} model; use one of {', '.join(allowed[task])}")
        return given
    suffix = path.suffix.lower()
    if task == "classification":
        if stdin or suffix in (".txt", ".text", ""):
            return "text"
        return {".tsv": "tsv", ".tab": "tsv", ".csv": "csv"}.get(suffix, "jsonl")
    if task == "ner":
        if suffix in (".conll", ".iob", ".iob2", ".bio", ".conllu"):
            return "conll"
        return "conll" if _looks_like_conll(path) else "text"
    return "squad" if suffix == ".json" else "jsonl"


_TAG = re.compile(r"^(O|[BIES]-\S+)$")


def _looks_like_conll(path: Path) -> bool:
    """-DOCSTART- lines, or token lines whose last column is a tag: a CoNLL file, not lines of text."""
    from onebert.data.tasks import read_text_file

    lines = [line for line in read_text_file(path).split("\n")[:200] if line.strip()]
    if any(line.startswith("-DOCSTART-") for line in lines):
        return True
    fields = [line.split() for line in lines[:50]]
    return bool(fields) and all(len(f) >= 2 and _TAG.match(f[-1]) for f in fields) \
        and len({len(f) for f in fields}) == 1


def _text_lines(path: Path) -> list[str]:
    """Every line is one input (an empty line too, so output line N answers input line N)."""
    from onebert.data.tasks import read_text_file

    lines = read_text_file(path).split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [line[:-1] if line.endswith("\r") else line for line in lines]


def read_squad_input(path: Path, fmt: str) -> list[Any]:
    """SQuAD JSON (answers optional), or JSON lines of {"question", "context"[, "id"]}."""
    import json

    from onebert.data.tasks import QAExample, read_squad, read_text_file
    from onebert.data.text_input import refuse_lone_surrogates
    from onebert.errors import OneBertError

    if fmt == "squad":
        return read_squad(path, labelled=False)
    examples = []
    seen: dict[str, int] = {}
    for number, line in enumerate(read_text_file(path).split("\n"), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except (ValueError, RecursionError) as exc:
            reason = exc.msg if isinstance(exc, json.JSONDecodeError) else str(exc).split(";")[0]
            raise OneBertError(f"{path}: line {number}: invalid JSON ({reason})") from None
        if not isinstance(record, dict):
            raise OneBertError(f"{path}: line {number}: expected an object with question and context")
        refuse_lone_surrogates(record, f"{path}: line {number}", line)
        for key in ("question", "context"):
            if not isinstance(record.get(key), str):
                raise OneBertError(f"{path}: line {number}: field {key!r} must be a string")
        qid = record.get("id", str(len(examples)))
        if not isinstance(qid, (str, int)) or isinstance(qid, bool):
            raise OneBertError(f"{path}: line {number}: field 'id' must be a string or an integer")
        qid = str(qid)
        if qid in seen:
            raise OneBertError(f"{path}: line {number}: duplicate id {qid!r} (also on line {seen[qid]})")
        seen[qid] = number
        examples.append(QAExample(id=qid, question=record["question"], context=record["context"],
                                  source=f"{path}: line {number}"))
    if not examples:
        raise OneBertError(f"{path}: no questions")
    return examples
