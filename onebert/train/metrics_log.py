"""What a run reports: a JSON-lines metrics file in RUN_DIR and a progress bar on the console.

metrics.jsonl has one JSON object per line: {"split": "train"|"eval", "step": N, ...metrics}. On a
resume the records after the checkpoint's step are dropped first (they belong to steps that are
about to be redone), so the file always describes one consistent run. The same records go to the
experiment trackers of --report-to (onebert.train.tracking), if any.

Metric scales, one convention in the file, the logs and `onebert evaluate`'s JSON (the one of
transformers and of the official scoring scripts): accuracies, F1, precision/recall, MCC and
MFU are fractions 0-1, except SQuAD's exact_match and f1 (and their HasAns_/NoAns_/best_ forms),
which are percentages 0-100 as the official SQuAD script reports them. Console lines print
fractions as percentages (accuracy=59.4% f1=13.3%) and SQuAD's percentages with a percent sign
(f1=1.99%), so a line never shows the same kind of number on two scales.
"""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path
from typing import Any, Sequence, TextIO

from onebert.io_utils import atomic_write_text

METRICS_FILE = "metrics.jsonl"


def read_metrics(path: str | os.PathLike) -> list[dict[str, Any]]:
    """All records of a metrics file; a torn last line (the process was killed mid-write) is skipped."""
    records = []
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            line = line.strip()
            if not line:
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return records


class MetricsLog:
    """Append-only JSON-lines file, flushed per record so a killed run keeps what it logged."""

    def __init__(self, run_dir: str | os.PathLike, enabled: bool = True, resume_step: int | None = None,
                 trackers: Sequence[Any] = ()):
        self.path = Path(run_dir) / METRICS_FILE
        self.enabled = enabled
        self._handle: TextIO | None = None
        self.trackers = list(trackers)  # onebert.train.tracking.Tracker objects, opened by the caller
        if not enabled:
            return
        if resume_step is not None and self.path.is_file():
            kept = [r for r in read_metrics(self.path) if r.get("step", 0) <= resume_step]
            atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in kept))
        elif resume_step is None and self.path.exists():
            self.path.unlink()
        self._handle = open(self.path, "a", encoding="utf-8")

    def write(self, record: dict[str, Any]) -> None:
        if self._handle is None:
            return
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}
        self._handle.write(json.dumps(clean) + "\n")
        self._handle.flush()
        if self.trackers:
            from onebert.train.tracking import scalars_of

            scalars = scalars_of(record)
            for tracker in self.trackers:
                tracker.log(str(record.get("split", "train")), int(record.get("step", 0)), scalars)

    def close(self, failed: bool = False) -> None:
        """Close the file and every tracker (`failed`: the run ended with an error); safe to call twice."""
        if self._handle is not None:
            self._handle.close()
            self._handle = None
        trackers, self.trackers = self.trackers, []
        for tracker in trackers:
            tracker.close(failed=failed)


# Scores that are fractions 0-1 and print as percentages; SQuAD's are percentages already (the Task's
# `percent_metrics`); MCC, Pearson and Spearman are correlations (-1..1) and print as plain numbers.
FRACTION_METRICS = ("accuracy", "f1", "precision", "recall", "mfu")


def format_value(key: str, value: Any, percent: tuple[str, ...] = ()) -> str:
    """One metric for a console line: fractions and percentages both with a percent sign (see the module's
    docstring); `percent`: the endings of the metric names that are percentages 0-100 already."""
    if not isinstance(value, float):
        return str(value)
    if key == "lr":
        return f"{value:.2e}"
    if percent and key.endswith(percent):
        return f"{value:.2f}%"
    if set(key.split("_")) & set(FRACTION_METRICS) and not key.endswith(("thresh", "threshold")):  # f1_macro too
        return f"{value:.1%}"
    return f"{value:,.0f}" if key.endswith("_per_s") else f"{value:.4g}"


def format_metrics(record: dict[str, Any], keys: tuple[str, ...] | None = None, percent: tuple[str, ...] = ()) -> str:
    """'key=value' pairs with sensible precision, for console lines (`percent`: as in format_value)."""
    return " ".join(f"{key}={format_value(key, value, percent)}" for key, value in record.items()
                    if not (keys is not None and key not in keys or key == "split"))


class Progress:
    """A tqdm bar on a terminal; plain lines on a pipe or a log file, where a bar would be noise."""

    def __init__(self, total: int | None, initial: int = 0, enabled: bool = True, stream: TextIO | None = None):
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.bar = None
        if enabled and _is_terminal(self.stream):
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=initial, unit="step", file=self.stream, dynamic_ncols=True)

    def update(self, steps: int = 1) -> None:
        if self.bar is not None:
            self.bar.update(steps)

    def set_total(self, total: int) -> None:
        if self.bar is not None and self.bar.total != total:
            self.bar.total = total
            self.bar.refresh()

    def show(self, record: dict[str, Any], short_keys: tuple[str, ...]) -> None:
        """A logging step: the bar's postfix on a terminal, a full line elsewhere."""
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.set_postfix_str(format_metrics(record, short_keys), refresh=True)
        else:
            self.write(f"step {record.get('step')}: {format_metrics(record)}")

    def write(self, line: str) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.write(line, file=self.stream)
        else:
            print(line, file=self.stream, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _is_terminal(stream: TextIO) -> bool:
    """A closed or replaced stream (pytest's capture, a wrapper without isatty) is no terminal."""
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False
