"""Training curves from a run's metrics.jsonl as one PNG: losses, accuracies, learning rate, throughput.

Works for any run of the training loop (pretraining or fine-tuning): panels are chosen by metric
names, train records are lines and evaluation records are lines with markers.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from onebert.errors import OneBertError

FEW_POINTS = 20  # a series with at most this many points marks each one: a short run's line hides them

# (panel title, y label, test on a metric name)
PANELS = (
    ("loss", "loss", lambda k: k == "loss" or k.endswith("_loss")),
    ("accuracy and scores", "score", lambda k: k.endswith(("accuracy", "f1", "exact_match", "mcc", "pearson",
                                                            "spearman", "precision", "recall"))),
    ("learning rate", "lr", lambda k: k == "lr"),
    ("throughput", "tokens/s", lambda k: k == "tokens_per_s"),
    ("model FLOPs utilisation", "MFU", lambda k: k == "mfu"),
    ("gradient norm", "norm", lambda k: k == "grad_norm"),
)


def plot_run(run_dir: str | os.PathLike, output: str | os.PathLike | None = None) -> Path:
    """Write the curves of RUN_DIR/metrics.jsonl to `output` (default RUN_DIR/curves.png).

    A short run draws what it has (a single logged step is a point); a run with no record yet gives
    a figure that says so. `output` must be a .png that is new or a PNG (see io_utils.check_output_file).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from onebert.io_utils import atomic_path, check_output_file, is_png
    from onebert.train.metrics_log import METRICS_FILE

    run_dir = Path(run_dir)
    metrics_file = run_dir / METRICS_FILE
    if not metrics_file.is_file():
        raise OneBertError(f"{metrics_file}: no metrics file (is {run_dir} a run directory of `onebert pretrain` "
                           "or `onebert finetune`?)")
    output = Path(output) if output is not None else run_dir / "curves.png"
    check_output_file(output, "--output", inputs=[metrics_file], suffix=".png", made_by_onebert=is_png, kind="plot")
    records = read_records(metrics_file)
    series = _series(records)
    panels = [(title, label, [k for k in series if test(k[1])]) for title, label, test in PANELS]
    panels = [p for p in panels if p[2]]
    columns = 2
    rows = max(1, (len(panels) + columns - 1) // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(12, 3.6 * rows), squeeze=False)
    if not panels:
        axes.flat[0].text(0.5, 0.5, f"{metrics_file}: no metric records yet\n(the run logs every --log-every "
                          "steps and at each evaluation)", ha="center", va="center", transform=axes.flat[0].transAxes)
    for ax, (title, label, keys) in zip(axes.flat, panels):
        names = sorted({name for _, name in keys})
        for split, name in sorted(keys, key=lambda k: (k[1], k[0] != "train")):
            steps, values = series[(split, name)]
            # One colour per metric; train is a thin line, evaluation dashed with markers.
            style = {"marker": "o", "markersize": 3, "linestyle": "--"} if split == "eval" else {"linewidth": 1.0}
            if len(steps) <= FEW_POINTS:
                # A line of one point is invisible, and a few points joined look like a measured curve.
                style.update(marker="o", markersize=4 if len(steps) == 1 else 3)
            ax.plot(steps, values, label=f"{split} {name}", color=f"C{names.index(name)}", **style)
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        if len(keys) > 1:
            ax.legend(fontsize=8)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    figure.suptitle(str(run_dir.resolve().name))
    figure.tight_layout()
    with atomic_path(output) as tmp:
        figure.savefig(tmp, format="png", dpi=110)
    plt.close(figure)
    return output


def read_records(path: Path) -> list[dict[str, Any]]:
    """The records of a metrics file, each checked: a line that is not a JSON object with a numeric step
    is a one-line error naming the file and line (the file was edited or damaged; plotting around it
    would hide that). Only a torn last line, without its newline, is skipped: what a killed run leaves."""
    import json

    with open(path, "rb") as handle:
        data = handle.read()
    lines = data.split(b"\n")
    records = []
    for number, raw in enumerate(lines, 1):
        if not raw.strip():
            continue
        torn = number == len(lines)  # the file does not end in a newline here
        try:
            record = json.loads(raw.decode("utf-8"))
        except (ValueError, RecursionError) as exc:  # UnicodeDecodeError and int-digit limits are ValueErrors
            if torn:
                continue
            reason = exc.msg if isinstance(exc, json.JSONDecodeError) else str(exc).split(";")[0].split(":")[0]
            raise OneBertError(f"{path}: line {number}: not a JSON metrics record ({reason[:120]})") from None
        if not isinstance(record, dict):
            raise OneBertError(f"{path}: line {number}: expected a JSON object of metrics, found "
                               f"{type(record).__name__}")
        step = record.get("step")
        if step is not None and (isinstance(step, bool) or not isinstance(step, (int, float))):
            raise OneBertError(f"{path}: line {number}: 'step' must be a number, found {str(step)[:40]!r}")
        records.append(record)
    return records


def _series(records: list[dict[str, Any]]) -> dict[tuple[str, str], tuple[list[int], list[float]]]:
    series: dict[tuple[str, str], tuple[list[int], list[float]]] = {}
    for record in records:
        split, step = record.get("split", "train"), record.get("step")
        if step is None:
            continue
        for key, value in record.items():
            if key in ("split", "step", "elapsed_s") or not isinstance(value, (int, float)) or isinstance(value, bool):
                continue
            steps, values = series.setdefault((split, key), ([], []))
            steps.append(step)
            values.append(value)
    return series
