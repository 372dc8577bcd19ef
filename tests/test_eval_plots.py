"""Evaluation plots: PNGs are written from real metric dicts and show something (not a blank canvas)."""

from __future__ import annotations

import numpy as np
import pytest

from onebert.errors import OneBertError
from onebert.eval_plots import confusion_matrix, plot_confusion_matrix, plot_entity_scores, plot_evaluation


def _picture(path):
    from matplotlib.image import imread

    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    image = imread(path)
    colours = np.unique((image[..., :3] * 255).astype(np.uint8).reshape(-1, 3), axis=0)
    return image, len(colours)


def test_confusion_matrix_counts_gold_rows_and_predicted_columns():
    matrix = confusion_matrix(predictions=[0, 1, 1, 2, 2, 2], references=[0, 1, 2, 2, 2, 0], num_labels=3)
    assert matrix.tolist() == [[1, 0, 1], [0, 1, 0], [0, 1, 2]]
    with pytest.raises(OneBertError, match="class id 3 outside 0..2"):
        confusion_matrix([3], [0], 3)


def test_confusion_matrix_png_is_written_and_not_blank(tmp_path):
    rng = np.random.default_rng(0)
    references = rng.integers(0, 3, 500)
    predictions = np.where(rng.random(500) < 0.8, references, rng.integers(0, 3, 500))
    path = plot_confusion_matrix({"predictions": predictions.tolist(), "references": references.tolist(),
                                  "labels": ["contradiction", "entailment", "neutral"]}, tmp_path / "cm.png")
    image, colours = _picture(path)
    assert image.shape[0] > 300 and image.shape[1] > 300 and colours > 50
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cm.png"]


def test_entity_bars_png_from_entity_scores_of_real_tags(tmp_path):
    from onebert.tasks.metrics import entity_scores

    gold = [["B-PER", "I-PER", "O", "B-LOC"], ["B-ORG", "O", "B-MISC", "I-MISC"]]
    predicted = [["B-PER", "I-PER", "O", "B-ORG"], ["B-ORG", "O", "B-MISC", "O"]]
    result = entity_scores(gold, predicted)
    written = plot_evaluation(result, tmp_path)
    assert [p.name for p in written] == ["entity_scores.png"]
    image, colours = _picture(written[0])
    assert image.shape[1] > image.shape[0] and colours > 50


def test_plots_refuse_results_they_cannot_draw(tmp_path):
    with pytest.raises(OneBertError, match="needs 'per_type'"):
        plot_entity_scores({"f1": 0.5}, tmp_path / "x.png")
    with pytest.raises(OneBertError, match="must be square"):
        plot_confusion_matrix({"confusion_matrix": [[1, 2, 3]]}, tmp_path / "x.png")
    with pytest.raises(OneBertError, match="ending in .png"):
        plot_confusion_matrix({"confusion_matrix": [[1]]}, tmp_path / "x.jpg")
    with pytest.raises(OneBertError, match="nothing to plot"):
        plot_evaluation({"accuracy": 0.9}, tmp_path)
    assert list(tmp_path.iterdir()) == []
