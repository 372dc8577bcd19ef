"""What a run reports: a JSON-lines metrics file in RUN_DIR and a progress bar on the console.

metrics.jsonl has one JSON object per line: {"split": "train"|"eval", "step": N, ...metrics}. On a
resume the records after the checkpoint's step are dropped first (they belong to steps that are
about to be redone), so the file always describes one consistent run.
"""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path
from typing import Any, TextIO

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

    def __init__(self, run_dir: str | os.PathLike, enabled: bool = True, resume_step: int | None = None):
        self.path = Path(run_dir) / METRICS_FILE
        self.enabled = enabled
        self._handle: TextIO | None = None
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

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None


def format_metrics(record: dict[str, Any], keys: tuple[str, ...] | None = None) -> str:
    """'key=value' pairs with sensible precision, for console lines."""
    parts = []
    for key, value in record.items():
        if keys is not None and key not in keys or key == "split":
            continue
        if isinstance(value, float):
            text = (f"{value:.2e}" if key == "lr" else f"{value:.1%}" if key.endswith(("accuracy", "mfu"))
                    else f"{value:,.0f}" if key.endswith("_per_s") else f"{value:.4g}")
        else:
            text = str(value)
        parts.append(f"{key}={text}")
    return " ".join(parts)


class Progress:
    """A tqdm bar on a terminal; plain lines on a pipe or a log file, where a bar would be noise."""

    def __init__(self, total: int | None, initial: int = 0, enabled: bool = True, stream: TextIO | None = None):
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.bar = None
        if enabled and self.stream.isatty():
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
