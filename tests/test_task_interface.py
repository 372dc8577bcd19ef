"""The Task seam: regression runs end to end through the interface (finetune -> evaluate -> predict ->
serve), with no `task == "regression"` outside onebert/tasks/; and models saved before regression was a
task of its own still load as regression."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from onebert.cli import main
from tiny_finetune import make_tiny_model, write_regression


@pytest.fixture(scope="module")
def regression_run(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("regression")
    base = make_tiny_model(root / "base")
    train = write_regression(root / "train.tsv", 48, seed=0)
    dev = write_regression(root / "dev.tsv", 16, seed=1)
    code = main(["finetune", "--task", "regression", "--model", str(base), "--train", str(train),
                 "--validation", str(dev), "--output", str(root / "run"), "--max-steps", "4", "--batch-size", "16",
                 "--device", "cpu", "--max-seq-length", "32"])
    assert code == 0
    return root / "run", dev


def test_finetune_task_regression_saves_a_regression_model(regression_run):
    run, _ = regression_run
    config = json.loads((run / "final" / "config.json").read_text())
    assert config["onebert"]["task"] == "regression"
    assert config["problem_type"] == "regression" and config["num_labels"] == 1


def test_regression_evaluates_predicts_and_serves_through_the_task(regression_run, capsys, tmp_path):
    run, dev = regression_run
    capsys.readouterr()
    assert main(["evaluate", "--model", str(run / "final"), "--data", str(dev), "--device", "cpu"]) == 0
    metrics = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert metrics["task"] == "regression" and {"pearson", "spearman", "mse"} <= set(metrics)

    inputs = tmp_path / "inputs.txt"
    inputs.write_text("the movie was good\na bad film\n", encoding="utf-8")
    out = tmp_path / "out.jsonl"
    assert main(["predict", "--model", str(run / "final"), "--input", str(inputs), "--output", str(out),
                 "--device", "cpu"]) == 0
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(records) == 2 and all(set(r) == {"score"} for r in records)

    httpx = pytest.importorskip("httpx")
    pytest.importorskip("fastapi")
    from onebert.serve.app import ServeSettings, create_app
    from onebert.serve.server import background_server

    app = create_app(run / "final", ServeSettings(device="cpu"))
    with background_server(app) as url:
        response = httpx.post(f"{url}/predict", json={"texts": ["the movie was good", "a bad film"]}, timeout=30)
    assert response.status_code == 200, response.text
    served = [p["score"] for p in response.json()["predictions"]]
    assert served == pytest.approx([r["score"] for r in records], abs=1e-4)


def test_a_model_saved_as_classification_with_problem_type_regression_evaluates_as_regression(regression_run,
                                                                                            capsys, tmp_path):
    import shutil

    run, dev = regression_run
    old = tmp_path / "old"
    shutil.copytree(run / "final", old)
    config = json.loads((old / "config.json").read_text())
    config["onebert"]["task"] = "classification"  # what onebert wrote before regression was a task
    (old / "config.json").write_text(json.dumps(config))
    capsys.readouterr()
    assert main(["evaluate", "--model", str(old), "--data", str(dev), "--device", "cpu"]) == 0
    metrics = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert metrics["task"] == "regression" and "pearson" in metrics and "accuracy" not in metrics

    del config["onebert"]  # a transformers-saved regression head: architectures + problem_type only
    config["architectures"] = ["BertForSequenceClassification"]
    (old / "config.json").write_text(json.dumps(config))
    from onebert.infer.pipeline import pipeline

    assert pipeline(model=str(old), device="cpu").task == "regression"
    regression = pipeline(task="classification", model=str(old), device="cpu")
    assert regression.records(["a good film"])[0].keys() == {"score"}  # onebert's record (the server's)
    assert regression("a good film")[0].keys() == {"label", "score"}  # transformers' shape
