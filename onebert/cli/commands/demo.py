"""`onebert demo`: the whole pretraining pipeline on a built-in corpus, with no arguments and no downloads.

It runs the same commands a user would (prepare -> pretrain -> plot), then asks the trained model
to fill in masked words, so a new user sees every stage work and where each output lands.
"""

from __future__ import annotations

import argparse

from onebert import ranges

HELP = "pretrain a small BERT end to end on a built-in corpus (no downloads) and show what it learned"
DESCRIPTION = (
    "Writes a corpus (the English docstrings of Python's standard library, one document per module, "
    "or --corpus), trains a WordPiece vocabulary, prepares NSP/MLM instances, pretrains a BERT for "
    "--minutes with periodic evaluation, plots the curves and fills in masked words with the result. "
    "Everything goes under --output.")

_PROBES = (
    "Return the [MASK] of the list.",
    "Raise a [MASK] if the file does not exist.",
    "This module provides functions for working with [MASK] and directories.",
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--output", default="demo_run", metavar="DIR",
                        help="where everything is written: new, empty or an earlier demo's (whose corpus/, data/ "
                             "and run/ are replaced); never a directory holding other files")
    parser.add_argument("--corpus", nargs="+", metavar="PATH", default=None,
                        help="your own text instead of the built-in corpus")
    parser.add_argument("--minutes", type=ranges.number(0, 60 * 24 * 366, min_inclusive=False), default=4.0,
                        help="pretraining time budget")
    parser.add_argument("--model-config", default="mini", metavar="NAME|FILE", help="model preset or config.json")
    parser.add_argument("--vocab-size", type=ranges.VOCAB_SIZE, default=8000, help="WordPiece vocabulary to train")
    parser.add_argument("--max-seq-length", type=ranges.PREPARE_SEQ_LENGTH, default=128,
                        help="tokens per pretraining instance")
    parser.add_argument("--batch-size", type=ranges.POSITIVE_INT, default=32, help="sequences per batch")
    parser.add_argument("--lr", type=ranges.POSITIVE, default=1e-3,
                        help="peak learning rate (small models take a high one)")


def run(args: argparse.Namespace) -> int:
    import shutil
    from pathlib import Path

    from onebert.cli import main as onebert
    from onebert.io_utils import check_output_dir

    out = check_output_dir(args.output, "--output", inputs=args.corpus or (), made_by_onebert=is_demo_dir,
                           kind="demo directory")
    # Only now, with the whole directory known to be an earlier demo's, are its parts replaced.
    if (out / "run").exists():
        shutil.rmtree(out / "run")  # is_demo_dir checked that it holds nothing but a run's files
    out.mkdir(parents=True, exist_ok=True)
    corpus = args.corpus
    if corpus is None:
        from onebert.demo_corpus import write_stdlib_corpus

        corpus_dir = out / "corpus"
        if corpus_dir.exists():
            shutil.rmtree(corpus_dir)  # the built-in corpus of an earlier demo (is_demo_dir checked)
        documents, words = write_stdlib_corpus(corpus_dir)
        print(f"[demo] built-in corpus: {documents} documents, {words:,} words of Python standard-library "
              f"docstrings -> {corpus_dir}", flush=True)
        corpus = [str(corpus_dir)]
    steps = [
        ["prepare", "--corpus", *corpus, "--vocab-size", str(args.vocab_size), "--max-seq-length",
         str(args.max_seq_length), "--validation-fraction", "0.05", "--output", str(out / "data"), "--overwrite"],
        ["pretrain", "--data", str(out / "data"), "--model-config", args.model_config, "--output", str(out / "run"),
         "--max-time", f"{args.minutes}m", "--batch-size", str(args.batch_size), "--lr", str(args.lr),
         "--warmup-ratio", "0.1", "--eval-every", "100", "--log-every", "20", "--save-every", "200"],
        ["plot", str(out / "run")],
    ]
    for step in steps:
        print(f"\n[demo] onebert {' '.join(step)}", flush=True)
        code = onebert(step)
        if code:
            return code
    _show_fill_mask(out / "run" / "final")
    print(f"\n[demo] done. Model: {out / 'run' / 'final'} (HuggingFace layout); curves: {out / 'run'}/*.png; "
          f"metrics: {out / 'run' / 'metrics.jsonl'}")
    return 0


def is_demo_dir(directory) -> bool:
    """An earlier demo's --output holding nothing of the user's: only corpus/ (the built-in corpus'
    module_NNNN.txt files), data/ (prepared data) and run/ (a run's files). A re-run replaces those."""
    from onebert.data.prepare import is_data_dir
    from onebert.io_utils import holds_only, is_replaceable_run_dir

    if not holds_only(directory, ("corpus", "data", "run")):
        return False
    corpus, data, run = directory / "corpus", directory / "data", directory / "run"
    return ((not corpus.exists() or (corpus.is_dir() and holds_only(corpus, (), [r"module_\d{4}\.txt"])))
            and (not data.exists() or (data.is_dir() and (is_data_dir(data) or not any(data.iterdir()))))
            and (not run.exists() or (run.is_dir() and (is_replaceable_run_dir(run) or not any(run.iterdir())))))


def _show_fill_mask(model_dir) -> None:
    from onebert.infer.fill_mask import fill_mask, load_masked_lm

    model, tokenizer, device = load_masked_lm(model_dir, device="cpu")
    print("\n[demo] the pretrained model fills in [MASK]:")
    for probe, guesses in zip(_PROBES, fill_mask(model, tokenizer, list(_PROBES), top_k=5, device=device)):
        shown = ", ".join(f"{guess['token_str']} ({guess['score']:.0%})" for guess in guesses)
        print(f"  {probe}\n      -> {shown}")
