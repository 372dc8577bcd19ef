"""`onebert plot RUN_DIR`: training curves of a run as a PNG."""

from __future__ import annotations

import argparse

HELP = "plot a run's training curves (loss, accuracy, learning rate, throughput) to a PNG"
DESCRIPTION = ("Draws every metric of RUN_DIR/metrics.jsonl against the step; a short run draws what it has. "
               "A line of metrics.jsonl that is not a JSON object with a numeric step is an error naming the "
               "line (only a torn last line, as a killed run leaves it, is skipped).")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", metavar="RUN_DIR", help="a run directory (holds metrics.jsonl)")
    parser.add_argument("--output", metavar="FILE.png", default=None,
                        help="where to write (default RUN_DIR/curves.png): a .png that is new or a PNG (a re-run "
                             "replaces its plot; never a model's or another file)")


def run(args: argparse.Namespace) -> int:
    from onebert.plot import plot_run

    path = plot_run(args.run_dir, args.output)
    print(f"wrote {path}")
    return 0
