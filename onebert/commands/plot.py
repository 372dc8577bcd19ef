"""`onebert plot RUN_DIR`: training curves of a run as a PNG."""

from __future__ import annotations

import argparse

HELP = "plot a run's training curves (loss, accuracy, learning rate, throughput) to a PNG"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", metavar="RUN_DIR", help="a run directory (holds metrics.jsonl)")
    parser.add_argument("--output", metavar="FILE.png", default=None, help="where to write (default RUN_DIR/curves.png)")


def run(args: argparse.Namespace) -> int:
    from onebert.plot import plot_run

    path = plot_run(args.run_dir, args.output)
    print(f"wrote {path}")
    return 0
