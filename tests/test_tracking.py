"""What a run reports: --report-to trackers (tensorboard, mlflow, wandb) hold the scalars of metrics.jsonl,
a missing tracker library is a one-line error naming the extra, trackers are closed on errors;
--early-stopping-patience (and across --resume); one metric scale convention on console lines and in
`onebert evaluate`'s JSON; plots mark the points of short series; progress bars only on a terminal."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import os
import subprocess
import sys
import time

import pytest
from tiny_finetune import make_tiny_model, write_pairs

from onebert.cli import main
from onebert.train.metrics_log import format_metrics, read_metrics

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py: one torch thread


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    return make_tiny_model(tmp_path_factory.mktemp("pretrained") / "model")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("pairs")
    return write_pairs(root / "train.tsv", 48, 1), write_pairs(root / "dev.tsv", 16, 2)


def _finetune(tiny_model, data, output, *more: str, stdout: io.StringIO | None = None) -> int:
    out = stdout or io.StringIO()  # the console: stdout and, off a terminal, the trainer's lines on stderr
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out) if stdout else contextlib.nullcontext():
        return main(["finetune", "--task", "classification", "--model", str(tiny_model), "--train", str(data[0]),
                     "--validation", str(data[1]), "--output", str(output), "--batch-size", "8", "--lr", "2e-3",
                     "--log-every", "1", "--eval-every", "2", "--device", "cpu", *more])


def _expected_scalars(run_dir) -> dict[str, dict[int, float]]:
    """metrics.jsonl as tag -> {step: value}, the tags the trackers use (SPLIT/NAME)."""
    expected: dict[str, dict[int, float]] = {}
    for record in read_metrics(run_dir / "metrics.jsonl"):
        for key, value in record.items():
            if key not in ("split", "step") and isinstance(value, (int, float)):
                expected.setdefault(f"{record['split']}/{key}", {})[record["step"]] = float(value)
    return expected


def _needs(module: str):
    return pytest.mark.skipif(importlib.util.find_spec(module) is None, reason=f"{module} is not installed")


# ---------------------------------------------------------------------- trackers


@_needs("tensorboard")
def test_tensorboard_event_file_holds_the_train_and_eval_scalars_of_metrics_jsonl(tiny_model, data, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "run"
    assert _finetune(tiny_model, data, run, "--max-steps", "4", "--report-to", "tensorboard") == 0
    accumulator = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0})
    accumulator.Reload()
    found = {tag: {e.step: e.value for e in accumulator.Scalars(tag)} for tag in accumulator.Tags()["scalars"]}
    expected = _expected_scalars(run)
    assert {"train/loss", "train/lr", "eval/accuracy", "eval/f1"} <= set(expected)
    assert set(found) == set(expected)
    for tag, values in expected.items():
        assert found[tag].keys() == values.keys(), tag
        for step, value in values.items():
            assert found[tag][step] == pytest.approx(value, rel=1e-6, abs=1e-9), (tag, step)


@_needs("mlflow")
def test_mlflow_writes_a_local_store_in_the_run_directory_with_the_scalars_of_metrics_jsonl(tiny_model, data,
                                                                                           tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    run = tmp_path / "run"
    assert _finetune(tiny_model, data, run, "--max-steps", "2", "--report-to", "mlflow") == 0
    assert (run / "mlruns").is_dir()
    client = MlflowClient(tracking_uri=(run / "mlruns").resolve().as_uri())
    [logged] = client.search_runs([client.get_experiment_by_name("onebert").experiment_id])
    assert logged.info.status == "FINISHED"
    for tag, values in _expected_scalars(run).items():
        history = {m.step: m.value for m in client.get_metric_history(logged.info.run_id, tag)}
        assert history == pytest.approx(values), tag


@_needs("wandb")
def test_wandb_runs_offline_into_the_run_directory_unless_wandb_mode_is_set(tiny_model, data, tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("WANDB_SILENT", "true")
    run = tmp_path / "run"
    assert _finetune(tiny_model, data, run, "--max-steps", "2", "--report-to", "wandb") == 0
    [offline] = list((run / "wandb").glob("offline-run-*"))  # an offline run: nothing was sent
    [log] = list(offline.glob("*.wandb"))  # the records wandb would sync later hold every SPLIT/NAME scalar
    tags = [tag.encode() for tag in _expected_scalars(run)]
    deadline = time.monotonic() + 30  # wandb's service process may still be writing the file after finish()
    while not all(tag in log.read_bytes() for tag in tags) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert all(tag in log.read_bytes() for tag in tags)
    monkeypatch.setenv("WANDB_MODE", "disabled")  # the user's choice wins
    assert _finetune(tiny_model, data, tmp_path / "disabled", "--max-steps", "1", "--report-to", "wandb") == 0
    assert not list((tmp_path / "disabled" / "wandb").glob("offline-run-*"))


@pytest.mark.parametrize("name", ["tensorboard", "wandb", "mlflow"])
def test_a_tracker_that_is_not_installed_is_a_one_line_error_naming_the_extra(name, tiny_model, data, tmp_path,
                                                                              monkeypatch, capsys):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda module, *a: None if module == name else real(module, *a))
    run = tmp_path / "run"
    assert _finetune(tiny_model, data, run, "--max-steps", "2", "--report-to", name) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"onebert finetune: error: --report-to {name}: {name} is not installed; "
                   f"pip install 'onebert[{name}]'"]
    assert not run.exists() or not any(run.iterdir())  # refused before anything was written


def test_report_to_none_and_an_unknown_name(tiny_model, data, tmp_path, capsys):
    assert _finetune(tiny_model, data, tmp_path / "a", "--max-steps", "1", "--report-to", "none") == 0
    assert _finetune(tiny_model, data, tmp_path / "b", "--max-steps", "1", "--report-to", "tensorbored") == 2
    assert "--report-to tensorbored: not a tracker" in capsys.readouterr().err


class RecordingTracker:
    def __init__(self):
        self.records, self.closed = [], []

    def log(self, split, step, scalars):
        self.records.append((split, step, scalars))

    def close(self, failed=False):
        self.closed.append(failed)


def test_trackers_get_every_record_and_are_closed_as_failed_when_training_crashes(tiny_model, data, tmp_path,
                                                                                  monkeypatch):
    from onebert.train import tracking
    from onebert.train.finetuning import FineTuningTask

    tracker = RecordingTracker()
    monkeypatch.setattr(tracking, "open_trackers", lambda *a, **k: [tracker])
    monkeypatch.setattr(tracking, "check_installed", lambda names: None)  # the stand-in needs no package
    original = FineTuningTask.train_batches

    def crashing(self):
        for n, batch in enumerate(original(self)):
            if n == 3:
                raise RuntimeError("simulated crash")
            yield batch

    monkeypatch.setattr(FineTuningTask, "train_batches", crashing)
    with pytest.raises(RuntimeError, match="simulated crash"):
        _finetune(tiny_model, data, tmp_path / "run", "--max-steps", "10", "--report-to", "tensorboard")
    assert tracker.closed == [True]
    records = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert [(s, step) for s, step, _ in tracker.records] == [(r["split"], r["step"]) for r in records]
    assert tracker.records[0][2]["loss"] == pytest.approx(records[0]["loss"])


# ---------------------------------------------------------------------- early stopping


def _scripted_validation(monkeypatch, accuracy_by_step: dict[int, float]):
    """Validation accuracy as a function of the step, read off the sampler (its position is restored on --resume)."""
    from onebert.train.finetuning import FineTuningTask

    def evaluate(self, model, autocast, device, dist):
        step = self.sampler.epoch * self.sampler.batches_per_epoch + self.sampler.position
        return {"accuracy": accuracy_by_step[step], "f1": 0.5}

    monkeypatch.setattr(FineTuningTask, "evaluate", evaluate)


# improves at 2, 4; 6 equals 4 (no improvement), 8 and 10 are worse: with patience 3 the run stops at step 10.
ACCURACY = {2: 0.5, 4: 0.7, 6: 0.7, 8: 0.6, 10: 0.65, 12: 0.9, 14: 0.9, 16: 0.9}


def _evals(run):
    return [r["step"] for r in read_metrics(run / "metrics.jsonl") if r["split"] == "eval"]


def test_early_stopping_stops_after_patience_evaluations_without_improvement_and_keeps_the_best(
        tiny_model, data, tmp_path, monkeypatch):
    _scripted_validation(monkeypatch, ACCURACY)
    out = io.StringIO()
    run = tmp_path / "run"
    assert _finetune(tiny_model, data, run, "--max-steps", "16", "--early-stopping-patience", "3", stdout=out) == 0
    assert _evals(run) == [2, 4, 6, 8, 10]
    assert "early stopping at step 10" in out.getvalue()
    assert json.loads((run / "best" / "config.json").read_text())["onebert"]["best_step"] == 4
    assert (run / "final").is_dir()


def test_early_stopping_count_is_checkpointed_so_a_resumed_run_stops_at_the_same_step(tiny_model, data, tmp_path,
                                                                                      monkeypatch):
    from onebert.train.finetuning import FineTuningTask

    _scripted_validation(monkeypatch, ACCURACY)
    original = FineTuningTask.train_batches

    def crashing(self):
        for n, batch in enumerate(original(self)):
            if n == 8:  # during step 9: the step-8 checkpoint holds two evaluations without improvement
                raise RuntimeError("simulated crash")
            yield batch

    run = tmp_path / "run"
    common = ("--max-steps", "16", "--early-stopping-patience", "3", "--save-every", "4")
    monkeypatch.setattr(FineTuningTask, "train_batches", crashing)
    with pytest.raises(RuntimeError, match="simulated crash"):
        _finetune(tiny_model, data, run, *common)
    monkeypatch.setattr(FineTuningTask, "train_batches", original)
    out = io.StringIO()
    assert _finetune(tiny_model, data, run, *common, "--resume", stdout=out) == 0
    assert _evals(run) == [2, 4, 6, 8, 10]  # without the checkpointed count it would run on to step 14
    assert "early stopping at step 10" in out.getvalue()


def test_early_stopping_needs_a_validation_set(tiny_model, data, tmp_path, capsys):
    with contextlib.redirect_stdout(io.StringIO()):
        code = main(["finetune", "--task", "classification", "--model", str(tiny_model), "--train", str(data[0]),
                     "--output", str(tmp_path / "run"), "--early-stopping-patience", "2", "--device", "cpu"])
    assert code == 2
    assert "--early-stopping-patience needs --validation" in capsys.readouterr().err


# ---------------------------------------------------------------------- metric scales


def test_console_lines_print_fractions_as_percent_and_squad_percentages_with_a_percent_sign():
    from onebert.tasks import get_task

    assert format_metrics({"split": "eval", "accuracy": 0.594, "f1": 0.1333}) == "accuracy=59.4% f1=13.3%"
    assert format_metrics({"PER_f1": 0.5, "f1_macro": 0.25, "mcc": 0.25, "pearson": 0.875}) == \
        "PER_f1=50.0% f1_macro=25.0% mcc=0.25 pearson=0.875"
    squad = get_task("qa").percent_metrics
    assert format_metrics({"f1": 1.986, "exact_match": 1.0, "HasAns_f1": 50.0}, percent=squad) == \
        "f1=1.99% exact_match=1.00% HasAns_f1=50.00%"
    assert get_task("classification").percent_metrics == () and get_task("ner").percent_metrics == ()


def test_fine_tuning_log_shows_the_selection_metric_on_the_same_scale_as_the_eval_line(tiny_model, data, tmp_path,
                                                                                       monkeypatch):
    _scripted_validation(monkeypatch, ACCURACY)
    out = io.StringIO()
    assert _finetune(tiny_model, data, tmp_path / "run", "--max-steps", "4", stdout=out) == 0
    text = out.getvalue()
    assert "eval at step 4: accuracy=70.0% f1=50.0%" in text
    assert "best accuracy = 70.0% at step 4 (was 50.0%)" in text
    assert "best validation accuracy = 70.0%" in text


def test_evaluate_json_names_the_metrics_that_are_percentages(tiny_model, data, tmp_path, capsys):
    from tiny_finetune import write_squad

    squad = write_squad(tmp_path / "squad.json", 8, 1)
    qa_options = ["--max-seq-length", "48", "--doc-stride", "16", "--max-query-length", "16"]
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["finetune", "--task", "qa", "--model", str(tiny_model), "--train", str(squad), "--output",
                     str(tmp_path / "qa"), "--max-steps", "1", "--batch-size", "8", "--device", "cpu",
                     *qa_options]) == 0
    assert _finetune(tiny_model, data, tmp_path / "cls", "--max-steps", "1") == 0
    results = {}
    for name, source in (("qa", squad), ("cls", data[1])):
        capsys.readouterr()
        assert main(["evaluate", "--model", str(tmp_path / name / "final"), "--data", str(source),
                     "--device", "cpu"]) == 0
        results[name] = json.loads(capsys.readouterr().out)
    assert {"exact_match", "f1"} <= set(results["qa"]["percent_metrics"])
    assert "total" not in results["qa"]["percent_metrics"]
    assert results["cls"]["percent_metrics"] == [] and 0 <= results["cls"]["accuracy"] <= 1


# ---------------------------------------------------------------------- plots and progress bars


@pytest.mark.parametrize("points", [1, 3])
def test_plot_marks_every_point_of_a_short_series(points, tmp_path, monkeypatch):
    import matplotlib.figure

    from onebert.plot import plot_run

    (tmp_path / "metrics.jsonl").write_text("".join(
        json.dumps({"split": "train", "step": 10 * (i + 1), "loss": 5.0 - i, "lr": 1e-4}) + "\n" for i in range(points)))
    figures = []
    save = matplotlib.figure.Figure.savefig
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", lambda self, *a, **k: (figures.append(self),
                                                                                    save(self, *a, **k)))
    plot_run(tmp_path)
    lines = [line for ax in figures[0].axes for line in ax.get_lines()]
    assert lines and all(line.get_marker() not in (None, "None", "", " ") for line in lines)
    assert all(len(line.get_xdata()) == points for line in lines)


def test_embed_into_a_pipe_writes_no_progress_bar(tiny_model, tmp_path):
    source = tmp_path / "texts.txt"
    source.write_text("".join(f"the good film {i}\n" for i in range(40)), encoding="utf-8")
    done = subprocess.run([sys.executable, "-m", "onebert", "embed", "--model", str(tiny_model), "--input",
                           str(source), "--output", str(tmp_path / "e.npy"), "--batch-size", "4", "--device", "cpu"],
                          capture_output=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr.decode()
    err = done.stderr.decode()
    assert "\r" not in err and "text/s" not in err and "█" not in err and "embed:" not in err, err


def test_prepare_into_a_pipe_writes_no_progress_bar(monkeypatch):
    """prepare's bar: a pipe (not a terminal) gets none."""
    from onebert.data.prepare import _Progress

    stream = io.StringIO()  # no terminal
    monkeypatch.setattr(sys, "stderr", stream)
    bar = _Progress(1000, enabled=True)
    bar.bytes(500)
    bar.close()
    assert stream.getvalue() == ""

