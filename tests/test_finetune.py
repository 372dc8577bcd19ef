"""Fine-tuning end to end through the CLI on a tiny model: finetune -> evaluate -> predict for the three tasks,
transformers round trips, best-checkpoint selection, length-grouped resumable batches, loss normalisation,
exact resume, and one-line errors for bad input."""

from __future__ import annotations

import contextlib
import io
import json
import sys

import numpy as np
import pytest
import torch
from kill_helpers import wait_for_checkpoint
from tiny_finetune import make_tiny_model, write_conll, write_pairs, write_regression, write_squad

from onebert.cli import main
from onebert.train.metrics_log import read_metrics

QA_OPTIONS = ["--max-seq-length", "48", "--doc-stride", "16", "--max-query-length", "16"]


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py: one torch thread


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    return make_tiny_model(tmp_path_factory.mktemp("pretrained") / "model")


def _finetune(*args: str) -> int:
    with contextlib.redirect_stdout(io.StringIO()):
        return main(["finetune", *args, "--lr", "2e-3", "--batch-size", "16", "--log-every", "100", "--device", "cpu"])


@pytest.fixture(scope="module")
def runs(tiny_model, tmp_path_factory):
    """The four fine-tuning runs every test below reads: pairs, regression, NER, QA v2.0 (each with validation)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("runs")
    data = {
        # Column names no reader recognises: evaluate/predict must use the ones saved at fine-tuning.
        "pairs": (_rename(write_pairs(root / "pairs_train.tsv", 96, 1)), _rename(write_pairs(root / "pairs_dev.tsv", 40, 2))),
        "regression": (write_regression(root / "reg_train.tsv", 96, 1), write_regression(root / "reg_dev.tsv", 32, 2)),
        "ner": (write_conll(root / "ner_train.txt", 96, 1), write_conll(root / "ner_dev.txt", 32, 2)),
        "qa": (write_squad(root / "qa_train.json", 48, 1), write_squad(root / "qa_dev.json", 16, 2)),
    }
    extra = {"pairs": ["--task", "classification", "--text-column", "left", "--text-pair-column", "right",
                       "--label-column", "gold", "--epochs", "8"],
             "regression": ["--task", "classification", "--epochs", "8"],
             "ner": ["--task", "ner", "--epochs", "6"],
             "qa": ["--task", "qa", "--epochs", "4", *QA_OPTIONS]}
    out = {}
    for name, (train, dev) in data.items():
        run_dir = root / f"run_{name}"
        assert _finetune("--model", str(tiny_model), "--train", str(train), "--validation", str(dev),
                         "--output", str(run_dir), *extra[name]) == 0
        out[name] = {"dir": run_dir, "train": train, "dev": dev}
    torch.set_num_threads(before)
    return out


def _rename(path):
    text = path.read_text(encoding="utf-8")
    path.write_text(text.replace("sentence1\tsentence2\tlabel", "left\tright\tgold", 1), encoding="utf-8")
    return path


def _evaluate(capsys, model, data, *more):
    capsys.readouterr()
    assert main(["evaluate", "--model", str(model), "--data", str(data), "--device", "cpu", *more]) == 0
    captured = capsys.readouterr()
    return json.loads(captured.out), captured.err


def _predict(capsys, model, source, *more, stdin: bytes | None = None, monkeypatch=None):
    capsys.readouterr()
    if stdin is not None:
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(stdin), encoding="utf-8"))
    assert main(["predict", "--model", str(model), "--input", str(source), "--device", "cpu", *more]) == 0
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


def _config(run_dir, name="best"):
    return json.loads((run_dir / name / "config.json").read_text())


# ---------------------------------------------------------------------- end to end per task


def test_pair_classification_learns_and_evaluate_predict_use_the_saved_columns(runs, capsys):
    run = runs["pairs"]
    config = _config(run["dir"])
    assert config["onebert"]["task"] == "classification" and config["id2label"] == {"0": "no", "1": "yes"}
    assert config["onebert"]["columns"] == {"text_column": "left", "text_pair_column": "right", "label_column": "gold"}
    result, table = _evaluate(capsys, run["dir"], run["dev"])  # the run directory means its best/ model
    assert result["model"].endswith("best") and result["examples"] == 40
    assert {"accuracy", "precision", "recall", "f1", "f1_macro", "mcc", "confusion_matrix"} <= set(result)
    assert result["accuracy"] >= 0.9 and np.sum(result["confusion_matrix"]) == 40
    assert "accuracy" in table and "confusion matrix" in table
    predictions = _predict(capsys, run["dir"], run["dev"])
    gold = [line.split("\t")[2] for line in run["dev"].read_text().splitlines()[1:]]
    assert len(predictions) == 40 and set(predictions[0]) == {"label", "score", "scores"}
    assert np.mean([p["label"] == g for p, g in zip(predictions, gold)]) == result["accuracy"]


def test_classification_predict_reads_plain_text_lines_from_stdin(runs, capsys, monkeypatch):
    lines = ["the movie was good", "", "not very good", "the plot"]
    predictions = _predict(capsys, runs["pairs"]["dir"], "-", stdin="\n".join(lines).encode() + b"\n",
                           monkeypatch=monkeypatch)
    assert len(predictions) == len(lines)  # output line N answers input line N, the empty one too
    for p in predictions:
        assert p["label"] in ("yes", "no") and p["scores"][p["label"]] == p["score"]
        assert sum(p["scores"].values()) == pytest.approx(1.0, abs=1e-5)


def test_regression_is_detected_scored_and_predicted_as_numbers(runs, capsys, tmp_path):
    run = runs["regression"]
    config = _config(run["dir"])
    assert config["problem_type"] == "regression" and config["num_labels"] == 1 and "id2label" not in config
    result, _ = _evaluate(capsys, run["dir"], run["dev"])
    assert {"pearson", "spearman", "mse"} <= set(result) and "accuracy" not in result
    assert result["pearson"] > 0.8  # it learned that "good" means a high score
    lines = tmp_path / "texts.txt"
    lines.write_text("good good good\nthe plot\n")
    predictions = _predict(capsys, run["dir"], lines)
    assert [set(p) for p in predictions] == [{"score"}, {"score"}]
    assert predictions[0]["score"] > predictions[1]["score"]


def test_ner_learns_entities_and_predicts_character_spans_from_text_and_conll(runs, capsys, tmp_path):
    run = runs["ner"]
    result, table = _evaluate(capsys, run["dir"], run["dev"], "--plots", str(tmp_path / "plots"))
    assert result["f1"] >= 0.9 and set(result["per_type"]) == {"LOC", "PER"}
    assert result["per_type"]["PER"]["number"] == 32
    assert (tmp_path / "plots" / "entity_scores.png").stat().st_size > 1000 and "PER" in table
    text = tmp_path / "news.txt"
    text.write_text("the plot mary lives in rome.\n\nthe film anna lives in new york\n")
    predictions = _predict(capsys, run["dir"], text)
    assert len(predictions) == 3 and predictions[1] == {"text": "", "words": [], "tags": [], "entities": []}
    for record in predictions:
        assert len(record["tags"]) == len(record["words"])
        for entity in record["entities"]:
            assert record["text"][entity["start"]:entity["end"]] == entity["word"] and 0 < entity["score"] <= 1
    assert {(e["entity"], e["word"]) for e in predictions[0]["entities"]} >= {("PER", "mary"), ("LOC", "rome")}
    assert ("LOC", "new york") in {(e["entity"], e["word"]) for e in predictions[2]["entities"]}
    conll = _predict(capsys, run["dir"], run["dev"])  # -DOCSTART- marks a CoNLL file
    assert len(conll) == 32 and all(r["text"] == " ".join(r["words"]) for r in conll)


@pytest.mark.parametrize("name", ["pairs", "ner"])
def test_plot_draws_a_fine_tuning_run_and_info_shows_its_task_and_labels(runs, capsys, tmp_path, name):
    run = runs[name]
    png = tmp_path / f"{name}.png"
    assert main(["plot", str(run["dir"]), "--output", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    capsys.readouterr()
    assert main(["info", str(run["dir"] / "best")]) == 0
    shown = capsys.readouterr().out
    task, labels = {"pairs": ("classification", ("yes", "no")), "ner": ("ner", ("B-PER", "I-LOC"))}[name]
    assert task in shown and all(label in shown for label in labels)


def test_qa_v2_threshold_is_tuned_on_validation_in_the_run_and_saved_with_the_best_model(runs, capsys):
    run = runs["qa"]
    meta = _config(run["dir"])["onebert"]
    assert meta["task"] == "qa" and meta["version_2"] is True and meta["doc_stride"] == 16
    evals = {r["step"]: r for r in read_metrics(run["dir"] / "metrics.jsonl") if r["split"] == "eval"}
    at_best = evals[meta["best_step"]]
    assert meta["null_threshold"] == at_best["null_threshold"] != 0.0
    assert meta["validation"]["f1"] == at_best["f1"]
    # evaluate with the saved threshold reproduces the validation scores of the run: no second tuning pass
    result, _ = _evaluate(capsys, run["dir"], run["dev"])
    assert result["f1"] == pytest.approx(at_best["f1"]) and result["exact_match"] == pytest.approx(at_best["exact_match"])
    assert {"HasAns_f1", "NoAns_f1", "HasAns_total", "NoAns_total", "best_f1"} <= set(result)
    # a threshold given on the command line overrides the saved one
    never, _ = _evaluate(capsys, run["dir"], run["dev"], "--null-threshold", "1e4")  # the largest evaluate accepts
    assert never["NoAns_f1"] == 0.0
    predictions = _predict(capsys, run["dir"], run["dev"])
    assert [p["id"] for p in predictions] == [f"q{i}{s}" for i in range(16) for s in "ab"]
    contexts = {qa["id"]: paragraph["context"] for paragraph in json.loads(run["dev"].read_text())["data"][0]["paragraphs"]
                for qa in paragraph["qas"]}
    assert any(p["answer"] == "" for p in predictions) and any(p["answer"] for p in predictions)
    for p in predictions:
        if p["answer"] == "":
            assert p["start"] == p["end"] == -1
        else:
            assert contexts[p["id"]][p["start"]:p["end"]] == p["answer"]


@pytest.mark.parametrize("name", ["pairs", "regression", "ner", "qa"])
def test_fine_tuned_directory_loads_in_transformers_with_identical_logits(runs, name):
    transformers = pytest.importorskip("transformers")
    from onebert.infer.predictor import Predictor

    transformers.logging.set_verbosity_error()
    auto = {"pairs": transformers.AutoModelForSequenceClassification,
            "regression": transformers.AutoModelForSequenceClassification,
            "ner": transformers.AutoModelForTokenClassification, "qa": transformers.AutoModelForQuestionAnswering}[name]
    directory = runs[name]["dir"] / "best"
    ours = Predictor.load(directory, device="cpu").model
    theirs = auto.from_pretrained(directory).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(directory)
    batch = tokenizer(["where does mary live ?", "the film was very good and the acting"],
                      ["mary lives in rome .", "a"], padding=True, return_tensors="pt")
    with torch.no_grad():
        a, b = ours(**batch), theirs(**batch)
    real = batch["attention_mask"].bool()
    for field in ("logits", "start_logits", "end_logits"):
        mine = getattr(a, field)
        if mine is None:
            continue
        other = getattr(b, field)
        if mine.dim() == 3 or field != "logits":  # per token: compare real tokens
            mine, other = mine[real], other[real]
        torch.testing.assert_close(mine, other, rtol=1e-4, atol=1e-5)
    if name in ("pairs", "ner"):
        assert theirs.config.id2label == {int(k): v for k, v in _config(runs[name]["dir"])["id2label"].items()}


# ---------------------------------------------------------------------- best checkpoint


@pytest.mark.parametrize("name", ["pairs", "ner", "qa"])
def test_best_directory_holds_the_step_with_the_best_validation_metric(runs, name):
    from safetensors.torch import load_file

    run = runs[name]["dir"]
    metric = {"pairs": "accuracy", "ner": "f1", "qa": "f1"}[name]
    evals = [r for r in read_metrics(run / "metrics.jsonl") if r["split"] == "eval"]
    assert len(evals) >= 4
    best = max(evals, key=lambda r: r[metric])  # the first of equals: later ties do not replace it
    meta = _config(run)["onebert"]
    assert meta["best_step"] == best["step"] and meta["validation"][metric] == best[metric]
    if best["step"] != evals[-1]["step"]:
        weights, last = load_file(run / "best" / "model.safetensors"), load_file(run / "final" / "model.safetensors")
        assert any(not torch.equal(weights[k], last[k]) for k in weights)


def test_a_worse_validation_score_never_replaces_the_best_model(tiny_model, tmp_path):
    from safetensors.torch import load_file

    from onebert.tasks.readers import TextExample
    from onebert.model import BertForSequenceClassification
    from onebert.model.config import BertConfig
    from onebert.infer.predictor import TaskSpec, load_tokenizer
    from onebert.train.finetuning import FineTuningTask, read_best

    config = BertConfig.load(tiny_model)
    spec = TaskSpec("classification", labels=["a", "b"], max_seq_length=16)
    examples = [TextExample(text="good film", label="a"), TextExample(text="bad plot", label="b")]
    task = FineTuningTask(spec, config, load_tokenizer(tiny_model, config), examples, batch_size=2, log=lambda *a: None)
    model = BertForSequenceClassification(spec.apply_to(config))
    saved = {}
    for step, accuracy in [(1, 0.5), (2, 0.75), (3, 0.6), (4, 0.75), (5, 0.8)]:
        with torch.no_grad():
            model.classifier.bias.fill_(float(step))  # each step's model is recognisable by this bias
        task.on_evaluate(step, {"accuracy": accuracy, "f1": 0.1}, model, tmp_path)
        saved[step] = load_file(tmp_path / "best" / "model.safetensors")["classifier.bias"][0].item()
    assert saved == {1: 1.0, 2: 2.0, 3: 2.0, 4: 2.0, 5: 5.0}
    assert read_best(tmp_path, "accuracy") == 0.8 and _config(tmp_path)["onebert"]["best_step"] == 5
    assert not list(tmp_path.glob(".best*"))  # no staging leftovers


# ---------------------------------------------------------------------- batches, loss, resume


def test_length_grouped_batches_cover_every_row_once_per_epoch_with_little_padding():
    from onebert.train.finetuning import LengthGroupedBatches

    rng = np.random.default_rng(0)
    lengths = rng.integers(5, 120, size=1000).tolist()
    sampler = LengthGroupedBatches(lengths, batch_size=16, seed=3, group_size=8)
    stream = iter(sampler)
    epoch = [next(stream) for _ in range(sampler.batches_per_epoch)]
    assert sorted(i for batch in epoch for i in batch) == list(range(1000))
    padded = sum(max(lengths[i] for i in b) * len(b) for b in epoch)
    random_batches = [rng.permutation(1000)[:16] for _ in range(len(epoch))]
    random_padded = sum(max(lengths[i] for i in b) * len(b) for b in random_batches)
    real = sum(lengths)
    assert padded - real < 0.25 * (random_padded - real)  # grouping by length computes far fewer pad tokens
    second = [next(stream) for _ in range(sampler.batches_per_epoch)]
    assert sorted(i for batch in second for i in batch) == list(range(1000)) and second != epoch
    again = iter(LengthGroupedBatches(lengths, batch_size=16, seed=3, group_size=8))
    assert [next(again) for _ in range(len(epoch))] == epoch  # seeded


def test_length_grouped_batches_resume_mid_epoch_and_split_a_global_batch_across_ranks():
    from onebert.train.finetuning import LengthGroupedBatches

    lengths = [(i * 37) % 50 + 3 for i in range(103)]
    reference = iter(LengthGroupedBatches(lengths, batch_size=8, seed=1))
    expected = [next(reference) for _ in range(30)]  # crosses an epoch boundary (13 batches per epoch)
    first = LengthGroupedBatches(lengths, batch_size=8, seed=1)
    stream = iter(first)
    head = [next(stream) for _ in range(17)]
    resumed = LengthGroupedBatches(lengths, batch_size=8, seed=1)
    resumed.load_state_dict(json.loads(json.dumps(first.state_dict())))
    stream = iter(resumed)
    assert head + [next(stream) for _ in range(13)] == expected
    with pytest.raises(Exception, match="seed"):
        LengthGroupedBatches(lengths, batch_size=8, seed=2).load_state_dict(first.state_dict())

    ranks = [iter(LengthGroupedBatches(lengths, batch_size=4, seed=1, rank=r, world_size=2)) for r in range(2)]
    global_plan = LengthGroupedBatches(lengths, batch_size=4, seed=1, world_size=2).epoch_batches(0)
    for batch in global_plan:
        parts = [next(stream) for stream in ranks]
        assert sorted(parts[0] + parts[1]) == sorted(batch.tolist()) and not set(parts[0]) & set(parts[1])
        assert abs(len(parts[0]) - len(parts[1])) <= 1


def test_ner_accumulation_normalises_by_the_labelled_tokens_of_the_whole_step(tiny_model):
    from onebert.tasks.readers import read_conll
    from onebert.model import BertForTokenClassification
    from onebert.model.config import BertConfig
    from onebert.infer.predictor import TaskSpec, load_tokenizer
    from onebert.tasks import collate
    from onebert.train.distributed import DistContext
    from onebert.train.finetuning import FineTuningTask
    from onebert.train.step import accumulate_gradients, step_totals

    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as tmp:
        examples = read_conll(write_conll(Path(tmp) / "train.txt", 8, 5))
    config = BertConfig.load(tiny_model)
    spec = TaskSpec("ner", labels=["B-LOC", "B-PER", "I-LOC", "O"], max_seq_length=32)
    task = FineTuningTask(spec, config, load_tokenizer(tiny_model, config), examples, batch_size=4)

    def batch(rows):
        out = collate([task.features[i] for i in rows], 0)
        out["num_labelled"] = int((out["labels"] != -100).sum())
        return out

    micro, big = [batch([0, 1, 2, 3]), batch([4, 5, 6, 7])], batch(list(range(8)))
    assert micro[0]["num_labelled"] != micro[1]["num_labelled"]  # what a per-micro-batch mean gets wrong
    cpu, scaler, ctx = torch.device("cpu"), torch.amp.GradScaler("cpu", enabled=False), DistContext()
    grads = []
    for batches in ([big], micro):
        torch.manual_seed(0)
        model = BertForTokenClassification(spec.apply_to(config))
        _, _, totals = step_totals(task, batches, ctx, cpu)
        accumulate_gradients(task, model, batches, totals, cpu, contextlib.nullcontext(), scaler, ctx)
        grads.append({n: p.grad for n, p in model.named_parameters() if p.grad is not None})
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], rtol=1e-5, atol=1e-7, msg=name)


def test_interrupted_fine_tuning_resumes_to_the_same_model(tiny_model, tmp_path, monkeypatch):
    from safetensors.torch import load_file

    from onebert.train.finetuning import FineTuningTask

    train = write_pairs(tmp_path / "train.tsv", 64, 3)
    common = ["--task", "classification", "--model", str(tiny_model), "--train", str(train), "--max-steps", "6",
              "--save-every", "3", "--batch-size", "8"]
    assert _finetune(*common, "--output", str(tmp_path / "straight")) == 0
    original = FineTuningTask.train_batches

    def crashing(self):
        for n, batch in enumerate(original(self)):
            if n == 4:  # during step 5, after the step-3 checkpoint
                raise RuntimeError("simulated crash")
            yield batch

    monkeypatch.setattr(FineTuningTask, "train_batches", crashing)
    with pytest.raises(RuntimeError, match="simulated crash"):
        _finetune(*common, "--output", str(tmp_path / "resumed"))
    monkeypatch.setattr(FineTuningTask, "train_batches", original)
    assert _finetune(*common, "--output", str(tmp_path / "resumed"), "--resume") == 0
    straight = load_file(tmp_path / "straight" / "final" / "model.safetensors")
    resumed = load_file(tmp_path / "resumed" / "final" / "model.safetensors")
    for name in straight:
        torch.testing.assert_close(resumed[name], straight[name], rtol=0, atol=0, msg=name)


def test_fine_tuning_killed_twice_at_random_moments_resumes_to_the_same_model(tiny_model, tmp_path):
    """kill -9 a real `onebert finetune` twice, each a random moment after its newest checkpoint."""
    import os
    import random
    import signal
    import subprocess
    import time

    from safetensors.torch import load_file

    from onebert.train.checkpoint import list_checkpoints

    train = write_pairs(tmp_path / "train.tsv", 96, 3)
    common = ["--task", "classification", "--model", str(tiny_model), "--train", str(train), "--max-steps", "36",
              "--save-every", "4"]
    assert _finetune(*common, "--output", str(tmp_path / "straight")) == 0
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.getcwd(), "PYTHONUNBUFFERED": "1"}
    killed = tmp_path / "killed"
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    complete = 0
    for kill in range(2):
        argv = [sys.executable, "-m", "onebert", "finetune", *common, "--output", str(killed), "--lr", "2e-3",
                "--batch-size", "16", "--log-every", "100", "--device", "cpu", *(["--resume"] if kill else [])]
        process = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        target = complete + 4
        wait_for_checkpoint(process, killed, target)
        time.sleep(rng.uniform(0, 0.1))
        process.send_signal(signal.SIGKILL)
        process.wait()
        assert process.returncode == -signal.SIGKILL and not (killed / "final").exists(), f"seed {seed}"
        complete = int(list_checkpoints(killed)[-1].name.split("-")[1])
    assert _finetune(*common, "--output", str(killed), "--resume") == 0
    straight = load_file(tmp_path / "straight" / "final" / "model.safetensors")
    resumed = load_file(killed / "final" / "model.safetensors")
    for name in straight:
        torch.testing.assert_close(resumed[name], straight[name], rtol=0, atol=0, msg=f"{name} (seed {seed})")


# ---------------------------------------------------------------------- bad input: one line, exit code 2


def _bad_inputs(tmp_path, tiny_model, runs):
    good_tsv = write_pairs(tmp_path / "good.tsv", 8, 0)
    missing = tmp_path / "missing_column.tsv"
    missing.write_text("sentence1\tsentence2\tlabel\nthe film\ta plot\tyes\nonly one field\n")
    unknown = tmp_path / "unknown_label.tsv"
    unknown.write_text("sentence1\tsentence2\tlabel\nthe film\ta plot\tmaybe\n")
    conll = tmp_path / "columns.txt"
    conll.write_text("john NNP B-PER\nlives VBZ O\nin O\n")
    empty = tmp_path / "empty.tsv"
    empty.write_text("")
    latin = tmp_path / "latin1.tsv"
    latin.write_bytes("sentence\tlabel\ncaf\xe9 ok\t1\n".encode("latin-1"))
    bad_jsonl = tmp_path / "questions.jsonl"
    bad_jsonl.write_text('{"question": "who?", "context": "john"}\n{"question": "where?"\n')
    no_tokenizer = tmp_path / "no_tokenizer"
    no_tokenizer.mkdir()
    for name in ("config.json", "model.safetensors"):
        (no_tokenizer / name).write_bytes((tiny_model / name).read_bytes())
    clf = ["finetune", "--task", "classification", "--model", str(tiny_model), "--output", str(tmp_path / "out")]
    return {
        "tsv row with a missing column": (clf + ["--train", str(missing)], "missing_column.tsv: line 3"),
        "unknown label in validation": (clf + ["--train", str(good_tsv), "--validation", str(unknown)],
                                        "unknown_label.tsv: line 2: unknown label 'maybe'"),
        "conll wrong column count": (["finetune", "--task", "ner", "--model", str(tiny_model), "--train", str(conll),
                                      "--output", str(tmp_path / "out")], "columns.txt: line 3: 2 columns"),
        "empty file": (clf + ["--train", str(empty)], "empty.tsv: the file is empty"),
        "non-UTF-8 file": (clf + ["--train", str(latin)], "latin1.tsv: line 2: not valid UTF-8"),
        "model without tokenizer": (["finetune", "--task", "classification", "--model", str(no_tokenizer), "--train",
                                     str(good_tsv), "--output", str(tmp_path / "out")], "no tokenizer files"),
        "existing output": (clf + ["--train", str(good_tsv), "--output", str(runs["pairs"]["dir"])],
                            "already holds a fine-tuned model"),
        "evaluate a model without a task": (["evaluate", "--model", str(tiny_model), "--data", str(good_tsv)],
                                            "not a fine-tuned model"),
        "evaluate data of the wrong labels": (["evaluate", "--model", str(runs["pairs"]["dir"]), "--data",
                                               str(good_tsv)], "good.tsv: line 1: no text column 'left'"),
        "predict invalid json line": (["predict", "--model", str(runs["qa"]["dir"]), "--input", str(bad_jsonl)],
                                      "questions.jsonl: line 2: invalid JSON"),
        "unknown metric": (clf + ["--train", str(good_tsv), "--metric", "bleu"], "--metric bleu"),
    }


BAD_CASES = ["tsv row with a missing column", "unknown label in validation", "conll wrong column count", "empty file",
             "non-UTF-8 file", "model without tokenizer", "existing output", "evaluate a model without a task",
             "evaluate data of the wrong labels", "predict invalid json line", "unknown metric"]


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_input_is_a_one_line_error_with_exit_code_2(case, tmp_path, tiny_model, runs, capsys):
    argv, expected = _bad_inputs(tmp_path, tiny_model, runs)[case]
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "Traceback" not in err, err
    assert expected in err, err
    assert not (tmp_path / "out").exists()  # nothing written before the input was checked


def test_qa_trains_on_random_batches_classification_on_length_grouped_ones(tiny_model):
    """Why random for QA: the questions on one paragraph have nearly the same length, so length-grouped batches
    would each hold one paragraph's questions (correlated gradients; 1.6 F1 on SQuAD v1.1, BENCHMARKS.md)."""
    from onebert.model.config import BertConfig
    from onebert.infer.predictor import TaskSpec, load_tokenizer
    from onebert.tasks.readers import QAExample, SquadAnswer, TextExample
    from onebert.train.finetuning import FineTuningTask

    config = BertConfig.load(tiny_model)
    tokenizer = load_tokenizer(tiny_model, config)
    contexts = [" ".join(["film"] * n) + " in paris." for n in (4, 12, 20, 28)]
    questions = [QAExample(id=f"{c}-{q}", question="where is the film?", context=context,
                           answers=[SquadAnswer("paris", context.index("paris"))])
                 for c, context in enumerate(contexts) for q in range(16)]
    texts = [TextExample(text=" ".join(["film"] * n), label="a" if q % 2 else "b")
             for n in (4, 12, 20, 28) for q in range(16)]

    def one_length_batches(spec, examples):
        task = FineTuningTask(spec, config, tokenizer, examples, batch_size=8, log=lambda *a: None)
        lengths = task.features.lengths()
        batches = task.sampler.epoch_batches(0)
        return sum(len({lengths[i] for i in batch}) == 1 for batch in batches), len(batches)

    uniform, total = one_length_batches(TaskSpec("qa", max_seq_length=64, doc_stride=16), questions)
    assert total == 8 and uniform <= 1  # random: all 8 rows of one paragraph happens with probability ~1e-4
    uniform, total = one_length_batches(TaskSpec("classification", labels=["a", "b"], max_seq_length=64), texts)
    assert uniform == total == 8  # 64 rows fit one mega-batch: sorted by length, each batch one length
