"""Pictures of an evaluation: a confusion matrix (classification), per-entity P/R/F1 bars (NER), as PNG.

They read the evaluation result dict:
- classification: `confusion_matrix` ([gold][predicted] counts) and `labels` (class names), or
  `predictions` and `references` (class ids) from which the matrix is counted;
- NER: `per_type` = {TYPE: {"precision", "recall", "f1", "number"}} and the overall
  `precision` / `recall` / `f1`, as `onebert.tasks.metrics.entity_scores` returns them.

Figures are drawn on matplotlib's Agg canvas through `Figure` objects (no pyplot state, so it is
safe from any thread and needs no display), and written atomically.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from onebert.errors import OneBertError
from onebert.io_utils import atomic_path, check_output_dir, check_output_file, is_png

# Beyond this many classes, numbers in the cells would be unreadable: colour only.
_MAX_ANNOTATED_CLASSES = 25


def confusion_matrix(predictions: Sequence[int], references: Sequence[int], num_labels: int) -> np.ndarray:
    """[gold, predicted] counts."""
    predictions, references = np.asarray(predictions, dtype=np.int64), np.asarray(references, dtype=np.int64)
    if predictions.shape != references.shape:
        raise OneBertError(f"confusion matrix: {predictions.size} predictions for {references.size} references")
    bad = [int(v) for v in np.concatenate([predictions, references]) if not 0 <= v < num_labels]
    if bad:
        raise OneBertError(f"confusion matrix: class id {bad[0]} outside 0..{num_labels - 1}")
    matrix = np.zeros((num_labels, num_labels), dtype=np.int64)
    np.add.at(matrix, (references, predictions), 1)
    return matrix


def _new_figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=120, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _save(figure, path: str | os.PathLike) -> Path:
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise OneBertError(f"{path}: plots are written as PNG; give a path ending in .png")
    check_output_file(path, "--plots", made_by_onebert=is_png, kind="plot")
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png")
    return path


def plot_confusion_matrix(result: Mapping[str, Any], path: str | os.PathLike, title: str | None = None) -> Path:
    """Heat map of row-normalised counts (each gold class's recall on the diagonal), counts in the cells."""
    labels = result.get("labels")
    if "confusion_matrix" in result:
        matrix = np.asarray(result["confusion_matrix"], dtype=np.int64)
        if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
            raise OneBertError(f"evaluation result: 'confusion_matrix' must be square, got shape {list(matrix.shape)}")
    elif "predictions" in result and "references" in result:
        count = len(labels) if labels else int(max(max(result["predictions"]), max(result["references"]))) + 1
        matrix = confusion_matrix(result["predictions"], result["references"], count)
    else:
        raise OneBertError("evaluation result: needs 'confusion_matrix' (or 'predictions' and 'references') "
                           "for a confusion matrix plot")
    n = matrix.shape[0]
    labels = [str(label) for label in labels] if labels else [str(i) for i in range(n)]
    if len(labels) != n:
        raise OneBertError(f"evaluation result: {len(labels)} labels for a {n}x{n} confusion matrix")
    totals = matrix.sum(axis=1, keepdims=True)
    rates = np.divide(matrix, totals, out=np.zeros(matrix.shape, dtype=np.float64), where=totals > 0)

    size = min(3.0 + 0.45 * n, 16.0)
    figure = _new_figure(size + 1.2, size)
    axes = figure.add_subplot()
    image = axes.imshow(rates, cmap="Blues", vmin=0.0, vmax=1.0)
    figure.colorbar(image, ax=axes, label="fraction of the gold class", shrink=0.8)
    axes.set_xticks(range(n), labels, rotation=45 if n > 4 else 0, ha="right" if n > 4 else "center")
    axes.set_yticks(range(n), labels)
    axes.set_xlabel("predicted")
    axes.set_ylabel("gold")
    accuracy = np.trace(matrix) / max(matrix.sum(), 1)
    axes.set_title(title or f"confusion matrix: {matrix.sum():,} examples, accuracy {accuracy:.1%}")
    if n <= _MAX_ANNOTATED_CLASSES:
        for gold in range(n):
            for predicted in range(n):
                axes.text(predicted, gold, f"{matrix[gold, predicted]:,}\n{rates[gold, predicted]:.0%}",
                          ha="center", va="center", fontsize=8,
                          color="white" if rates[gold, predicted] > 0.5 else "black")
    return _save(figure, path)


def plot_entity_scores(result: Mapping[str, Any], path: str | os.PathLike, title: str | None = None) -> Path:
    """Grouped precision / recall / F1 bars per entity type, with each type's gold count under its name."""
    per_type = result.get("per_type")
    if not isinstance(per_type, Mapping) or not per_type:
        raise OneBertError("evaluation result: needs 'per_type' ({TYPE: {precision, recall, f1, number}}) "
                           "for a per-entity plot")
    types = sorted(per_type)
    for kind in types:
        missing = [k for k in ("precision", "recall", "f1") if k not in per_type[kind]]
        if missing:
            raise OneBertError(f"evaluation result: per_type.{kind} lacks {', '.join(missing)}")
    figure = _new_figure(max(5.0, 1.3 * len(types) + 2.5), 4.5)
    axes = figure.add_subplot()
    x = np.arange(len(types))
    width = 0.26
    for offset, (metric, colour) in enumerate((("precision", "#4c72b0"), ("recall", "#dd8452"), ("f1", "#55a868"))):
        values = [float(per_type[kind][metric]) for kind in types]
        bars = axes.bar(x + (offset - 1) * width, values, width, label=metric, color=colour)
        axes.bar_label(bars, labels=[f"{v:.2f}" for v in values], fontsize=7, padding=1)
    names = [f"{kind}\n({int(per_type[kind]['number']):,})" if "number" in per_type[kind] else kind
             for kind in types]
    axes.set_xticks(x, names)
    axes.set_ylim(0, 1.12)
    axes.set_ylabel("score")
    if "f1" in result:
        axes.axhline(float(result["f1"]), color="#55a868", linestyle="--", linewidth=1, label="overall f1")
    axes.legend(loc="upper center", ncols=4, frameon=False, bbox_to_anchor=(0.5, 1.0))
    overall = (f"overall P {result['precision']:.3f}  R {result['recall']:.3f}  F1 {result['f1']:.3f}"
               if all(k in result for k in ("precision", "recall", "f1")) else "")
    axes.set_title(title or f"entity-level scores per type (gold count){'; ' + overall if overall else ''}",
                   fontsize=10)
    return _save(figure, path)


PLOT_NAMES = ("entity_scores.png", "confusion_matrix.png")


def check_plot_dir(output_dir: str | os.PathLike, prefix: str = "") -> Path:
    """Check --plots DIR before any work: a directory (new, or any existing one: only the plot files are
    written there), whose plot files, where they exist, are PNGs (a re-run replaces its own plots)."""
    output_dir = Path(output_dir)
    check_output_dir(output_dir, "--plots", made_by_onebert=lambda _: True)
    for name in PLOT_NAMES:
        check_output_file(output_dir / f"{prefix}{name}", "--plots", made_by_onebert=is_png, kind="plot")
    return output_dir


def plot_evaluation(result: Mapping[str, Any], output_dir: str | os.PathLike, prefix: str = "") -> list[Path]:
    """Every plot the result supports, into output_dir: confusion_matrix.png and/or entity_scores.png."""
    output_dir = check_plot_dir(output_dir, prefix)
    written = []
    if "per_type" in result:
        written.append(plot_entity_scores(result, output_dir / f"{prefix}entity_scores.png"))
    if "confusion_matrix" in result or ("predictions" in result and "references" in result):
        written.append(plot_confusion_matrix(result, output_dir / f"{prefix}confusion_matrix.png"))
    if not written:
        raise OneBertError("evaluation result: nothing to plot (no 'confusion_matrix', 'predictions'/'references' "
                           "or 'per_type')")
    return written
