"""No command deletes or overwrites what onebert did not make (issue 12), and the final model's write is safe.

The rule (onebert.io_utils.check_output_file / check_output_dir): an output path is new, an empty
directory, or an earlier output of the same kind (recognised by the files onebert writes there); never
an input of the same command, never a model's files. Every refusal is one line, exit 2, and leaves the
user's files byte for byte as they were. Also: a full disk while writing the final model is one line
with no partial model directory, a killed final write's temporaries are removed by the resumed run,
and malformed metrics lines are named by file and line.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from synthetic_pretraining import prepare_small_corpus
from test_resource_faults import small_filesystem
from tiny_finetune import make_tiny_model, write_pairs

from onebert.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py: one torch thread


def _refused(capsys, argv, *expected) -> str:
    """Run `onebert argv`; it must end with one `error:` line (exit 2) that contains every `expected`."""
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err, err
    last = err.splitlines()[-1]
    assert " error: " in last, err
    for text in expected:
        assert text in last, last
    return last


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    return prepare_small_corpus(tmp_path_factory.mktemp("prepared"))


@pytest.fixture(scope="module")
def corpus(prepared) -> Path:
    return prepared.parent / "corpus.txt"


def _pretrain_args(data, run_dir, *extra):
    return ["pretrain", "--data", str(data), "--model-config", "tiny", "--output", str(run_dir), "--batch-size", "8",
            "--lr", "1e-3", "--log-every", "1", "--precision", "fp32", "--device", "cpu", "--eval-every", "1000",
            *map(str, extra)]


@pytest.fixture(scope="module")
def classifier(tmp_path_factory) -> Path:
    """A fine-tuned (one step) classification model directory."""
    root = tmp_path_factory.mktemp("classifier")
    base = make_tiny_model(root / "base")
    train = write_pairs(root / "train.tsv", 16, seed=0)
    assert main(["finetune", "--task", "classification", "--model", str(base), "--train", str(train),
                 "--output", str(root / "run"), "--max-steps", "1", "--batch-size", "8", "--device", "cpu"]) == 0
    return root / "run" / "final"


# ----------------------------------------------------------------------------- demo


@pytest.mark.parametrize("users_files", [["run/results.txt", "data/mine.csv"], ["corpus/mine.txt"], ["notes.txt"]])
def test_demo_refuses_an_output_directory_holding_the_users_files_and_deletes_none(tmp_path, capsys, corpus,
                                                                                  users_files):
    out = tmp_path / "v"
    for name in users_files:
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_text(f"the user's {name}\n")
    before = _snapshot(out)
    argv = ["demo", "--output", str(out), "--minutes", "0.02", "--model-config", "tiny", "--vocab-size", "300"]
    if "corpus/mine.txt" not in users_files:
        argv += ["--corpus", str(corpus)]
    _refused(capsys, argv, str(out), "not a demo directory")
    assert _snapshot(out) == before


def test_demo_rerun_on_its_own_output_replaces_it_and_a_very_short_run_ends_well(tmp_path, capsys, corpus):
    out = tmp_path / "v"
    argv = ["demo", "--output", str(out), "--corpus", str(corpus), "--minutes", "0.01", "--model-config", "tiny",
            "--vocab-size", "300", "--batch-size", "4"]
    assert main(argv) == 0
    assert main(argv) == 0  # an earlier demo's directory is recognised and replaced
    assert (out / "run" / "curves.png").read_bytes()[:4] == b"\x89PNG"
    capsys.readouterr()


# ----------------------------------------------------------------------------- prepare


def test_prepare_refuses_an_output_that_is_its_own_corpus_even_with_overwrite(tmp_path, capsys, corpus):
    books = tmp_path / "books"
    books.mkdir()
    (books / "corpus.txt").write_bytes(corpus.read_bytes())
    before = _snapshot(books)
    _refused(capsys, ["prepare", "--corpus", str(books), "--vocab-size", "300", "--workers", "1", "--no-progress",
                      "--output", str(books), "--overwrite"], "input of this command")
    assert _snapshot(books) == before


def test_prepare_overwrite_replaces_only_a_data_directory_prepare_made(tmp_path, capsys, corpus):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("years of work\n")
    argv = ["prepare", "--corpus", str(corpus), "--format", "lines", "--vocab-size", "300", "--workers", "1",
            "--no-progress", "--overwrite", "--output"]
    _refused(capsys, [*argv, str(mine)], "not a data directory onebert made")
    assert (mine / "thesis.tex").read_text() == "years of work\n"
    assert main([*argv, str(tmp_path / "data")]) == 0
    assert main([*argv, str(tmp_path / "data")]) == 0  # its own output: replaced
    (tmp_path / "data" / "notes.txt").write_text("mine\n")  # ... unless the user has put something there
    _refused(capsys, [*argv, str(tmp_path / "data")], "not a data directory onebert made")
    assert (tmp_path / "data" / "notes.txt").read_text() == "mine\n"


# ----------------------------------------------------------------------------- predict, tokenizer, plot


def test_predict_refuses_to_write_over_its_input_or_a_file_that_is_not_predictions(tmp_path, capsys, classifier):
    texts = tmp_path / "texts.txt"
    texts.write_text("the movie was good\nbad plot\n")
    _refused(capsys, ["predict", "--model", str(classifier), "--input", str(texts), "--output", str(texts)],
             "input of this command")
    assert texts.read_text() == "the movie was good\nbad plot\n"
    notes = tmp_path / "notes.txt"
    notes.write_text("not predictions\n")
    _refused(capsys, ["predict", "--model", str(classifier), "--input", str(texts), "--output", str(notes)],
             "not a JSON-lines predictions file")
    assert notes.read_text() == "not predictions\n"
    out = tmp_path / "out.jsonl"
    for _ in range(2):  # its own earlier output is replaced
        assert main(["predict", "--model", str(classifier), "--input", str(texts), "--output", str(out)]) == 0
    assert len(out.read_text().splitlines()) == 2


def test_tokenizer_train_refuses_a_model_directory_and_keeps_its_vocabulary(tmp_path, capsys, corpus):
    model = make_tiny_model(tmp_path / "model")
    before = _snapshot(model)
    _refused(capsys, ["tokenizer", "train", "--input", str(corpus), "--output", str(model), "--vocab-size", "200",
                      "--quiet"], "not a tokenizer directory onebert made")
    assert _snapshot(model) == before
    tok = tmp_path / "tok"
    for _ in range(2):  # its own earlier output is replaced
        assert main(["tokenizer", "train", "--input", str(corpus), "--output", str(tok), "--vocab-size", "200",
                     "--quiet"]) == 0
    capsys.readouterr()


@pytest.fixture(scope="module")
def short_run(prepared, tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("short") / "run"
    assert main(_pretrain_args(prepared, run_dir, "--max-steps", 1)) == 0
    return run_dir


def test_plot_refuses_to_write_over_model_weights_or_a_file_that_is_not_a_png(short_run, tmp_path, capsys):
    weights = short_run / "final" / "model.safetensors"
    before = weights.read_bytes()
    _refused(capsys, ["plot", str(short_run), "--output", str(weights)], "must end in .png")
    assert weights.read_bytes() == before
    photo = tmp_path / "holiday.png"
    photo.write_bytes(b"GIF89a not a png")
    _refused(capsys, ["plot", str(short_run), "--output", str(photo)], "not a plot onebert wrote")
    assert photo.read_bytes() == b"GIF89a not a png"
    assert main(["plot", str(short_run), "--output", str(tmp_path / "curves.png")]) == 0
    assert main(["plot", str(short_run), "--output", str(tmp_path / "curves.png")]) == 0  # its own PNG: replaced


def test_plot_of_a_run_without_records_yet_draws_a_figure_and_exits_0(tmp_path, capsys):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "metrics.jsonl").write_text("")
    assert main(["plot", str(run_dir)]) == 0
    assert (run_dir / "curves.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("bad_line, reason", [("[1, 2]", "expected a JSON object"),
                                               ('{"step": 2, "loss": ' + "1" * 5000 + "}", "not a JSON metrics record"),
                                               ('{"step": "two", "loss": 1.0}', "'step' must be a number")])
def test_plot_names_the_file_and_line_of_a_malformed_metrics_record(tmp_path, capsys, bad_line, reason):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "metrics.jsonl").write_text('{"split": "train", "step": 1, "loss": 2.0}\n' + bad_line + "\n"
                                           '{"split": "train", "step": 3, "loss": 1.0}\n')
    _refused(capsys, ["plot", str(run_dir)], f"{run_dir / 'metrics.jsonl'}: line 2: ", reason)
    assert not (run_dir / "curves.png").exists()


def test_plot_skips_only_a_torn_last_line_as_a_killed_run_leaves_it(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "metrics.jsonl").write_text('{"split": "train", "step": 1, "loss": 2.0}\n{"split": "train", "st')
    assert main(["plot", str(run_dir)]) == 0


# ----------------------------------------------------------------------------- evaluate, finetune, pretrain


def test_evaluate_plots_into_an_existing_file_is_one_line_before_the_evaluation(tmp_path, capsys, classifier):
    data = write_pairs(tmp_path / "dev.tsv", 8, seed=1)
    plots = tmp_path / "plots"
    plots.write_text("a file\n")
    _refused(capsys, ["evaluate", "--model", str(classifier), "--data", str(data), "--plots", str(plots)],
             f"{plots}: --plots exists and is not a directory")
    assert plots.read_text() == "a file\n"


def test_finetune_and_pretrain_output_that_is_a_file_or_a_users_directory_is_one_line(tmp_path, capsys, prepared):
    model = make_tiny_model(tmp_path / "model")
    train = write_pairs(tmp_path / "train.tsv", 8, seed=0)
    existing = tmp_path / "existing"
    existing.write_text("keep\n")
    finetune = ["finetune", "--task", "classification", "--model", str(model), "--train", str(train), "--max-steps",
                "1", "--device", "cpu", "--output"]
    _refused(capsys, [*finetune, str(existing)], f"{existing}: --output exists and is not a directory")
    _refused(capsys, _pretrain_args(prepared, existing, "--max-steps", 1), "exists and is not a directory")
    users = tmp_path / "users"
    users.mkdir()
    (users / "config.yaml").write_text("my: settings\n")
    _refused(capsys, [*finetune, str(users)], "not a run directory onebert made")
    _refused(capsys, _pretrain_args(prepared, users, "--max-steps", 1), "not a run directory onebert made")
    assert existing.read_text() == "keep\n" and (users / "config.yaml").read_text() == "my: settings\n"


# ----------------------------------------------------------------------------- the final model's write

NO_SPACE_RUST = "Error while serializing: I/O error: No space left on device (os error 28)"


def test_disk_full_while_writing_the_final_model_is_one_line_and_leaves_no_model_directory(prepared, tmp_path, capsys,
                                                                                          monkeypatch):
    import safetensors.torch
    from safetensors import SafetensorError

    def save_until_full(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"\0" * 4096)  # half a file, as a full disk leaves it
        raise SafetensorError(NO_SPACE_RUST)

    monkeypatch.setattr(safetensors.torch, "save_file", save_until_full)
    run_dir = tmp_path / "run"
    err = _refused(capsys, _pretrain_args(prepared, run_dir, "--max-steps", 2), "No space left on device")
    assert "model.safetensors" in err and "SafetensorError" not in err
    assert not (run_dir / "final").exists()
    assert not [p.name for p in run_dir.iterdir() if p.name.startswith(".")]  # no staging directory left
    monkeypatch.undo()
    assert main(_pretrain_args(prepared, run_dir, "--max-steps", 2, "--resume")) == 0  # the checkpoint was kept
    assert (run_dir / "final" / "model.safetensors").is_file()


def test_disk_full_while_fine_tuning_saves_its_model_is_one_line_and_leaves_no_model_directory(tmp_path, capsys,
                                                                                               monkeypatch):
    import safetensors.torch
    from safetensors import SafetensorError

    model = make_tiny_model(tmp_path / "model")
    train = write_pairs(tmp_path / "train.tsv", 16, seed=0)

    def full(tensors, filename, metadata=None):
        raise SafetensorError(NO_SPACE_RUST)

    monkeypatch.setattr(safetensors.torch, "save_file", full)
    run_dir = tmp_path / "run"
    _refused(capsys, ["finetune", "--task", "classification", "--model", str(model), "--train", str(train),
                      "--validation", str(train), "--output", str(run_dir), "--max-steps", "1", "--device", "cpu"],
             "model.safetensors: could not write: No space left on device")
    assert not [p.name for p in run_dir.iterdir() if p.name in ("best", "final") or p.name.startswith(".")]


def test_real_full_filesystem_while_writing_the_final_model_is_one_line_and_leaves_no_model_directory(prepared,
                                                                                                     tmp_path, capsys):
    # Measure a run: the checkpoint (weights + AdamW state) must fit, the final model beside it must not.
    probe = tmp_path / "probe"
    assert main(_pretrain_args(prepared, probe, "--max-steps", 1)) == 0
    checkpoint = sum(p.stat().st_size for p in (probe / "checkpoints").rglob("*") if p.is_file())
    weights = (probe / "final" / "model.safetensors").stat().st_size
    small_files = 256 * 1024  # config.yaml, metrics.jsonl, directories, page rounding
    size = checkpoint + small_files + weights // 2
    capsys.readouterr()
    with small_filesystem(tmp_path / "small", str(size)) as small:
        run_dir = small / "run"
        err = _refused(capsys, _pretrain_args(prepared, run_dir, "--max-steps", 1), "No space left on device")
        assert "final" in err
        assert not (run_dir / "final").exists()
        assert not [p.name for p in run_dir.iterdir() if p.name.startswith(".")]


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_resumed_run_removes_the_temporaries_a_killed_final_write_left(prepared, tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert main(_pretrain_args(prepared, run_dir, "--max-steps", 2, "--save-every", 1)) == 0
    # What a kill -9 during the final write leaves: a temporary inside final/ (older versions wrote
    # final/ in place) and a staging directory of a process that is gone.
    (run_dir / "final" / ".model.safetensors.k3j2h1x0.tmp").write_bytes(b"\0" * 1000)
    staging = run_dir / f".final.{_dead_pid()}.a1b2c3.tmp"
    staging.mkdir()
    (staging / "model.safetensors").write_bytes(b"\0" * 1000)
    assert main(_pretrain_args(prepared, run_dir, "--max-steps", 3, "--save-every", 1, "--resume")) == 0
    assert not list(run_dir.rglob(".*.tmp")), list(run_dir.rglob(".*.tmp"))
    assert (run_dir / "final" / "model.safetensors").is_file()


def test_stale_temporaries_of_a_live_process_are_left_alone(tmp_path):
    from onebert.io_utils import remove_stale_temps

    live = tmp_path / f".final.{os.getpid()}.abc.tmp"
    live.mkdir()
    dead = tmp_path / f".config.yaml.{_dead_pid()}.xyz.tmp"
    dead.write_text("half")
    users = tmp_path / "my.tmp"  # not hidden: not onebert's naming
    users.write_text("mine")
    assert remove_stale_temps(tmp_path) == [dead]
    assert live.is_dir() and users.is_file()


def test_a_full_disk_named_only_in_a_rust_error_message_is_recognised():
    from safetensors import SafetensorError

    from onebert.io_utils import os_error_behind

    error = os_error_behind(SafetensorError(NO_SPACE_RUST))
    assert error is not None and error.errno == errno.ENOSPC
