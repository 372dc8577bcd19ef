"""Fine-tuning as the training loop sees it: classification/regression, NER and QA on labelled examples.

Batches. Each epoch is a seeded permutation of the training rows, cut into "mega-batches" of
`group_size` global batches (50 for classification; 1, i.e. plain random batches, for NER and QA: see
FineTuningTask); inside one, rows are sorted by length and cut into global batches, and the batches
of the whole epoch are then shuffled (transformers' LengthGroupedSampler, with the batch order
shuffled as well). Batches hold rows of similar length, so little padding is computed,
while every epoch still sees every row once in a new order. A global batch is dealt out to the ranks
row by row (rank r takes rows r, r + W, ...). The position is (epoch, batch), so a resumed run sees
exactly the batches the interrupted one would have.

Loss. A micro-batch's loss is its summed loss divided by the number of sequences (labelled tokens
for NER) in the whole accumulated, all-ranks batch (see `onebert.train.step`): the model's mean
loss times the micro-batch's count over the global total.

Validation. The loop calls `evaluate` every `eval_every` steps: the whole validation set goes
through `onebert.predict` (the code path of `onebert evaluate`), scored with the task's standard
metric; for SQuAD v2.0 the null-answer threshold is tuned on these predictions (no second pass)
and the metrics are those at the tuned threshold. The model with the best validation metric is
written to RUN_DIR/best (with its threshold) as a HuggingFace-layout directory with the tokenizer.
"""

from __future__ import annotations

import contextlib
import json
import math
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from torch import nn

from onebert.errors import OneBertError
from onebert.io_utils import atomic_directory
from onebert.model import IGNORE_INDEX, training_flops
from onebert.predict import LOWER_IS_BETTER, TaskSpec, decode, encode, forward, score
from onebert.tasks import collate
from onebert.train.distributed import DistContext
from onebert.train.task import Batch, TrainingTask

BEST_DIR = "best"
FINAL_DIR = "final"


class LengthGroupedBatches:
    """Endless, seeded, resumable stream of this rank's micro-batches (lists of row indices)."""

    def __init__(self, lengths: Sequence[int], batch_size: int, seed: int = 0, rank: int = 0, world_size: int = 1,
                 group_size: int = 50):
        if not lengths:
            raise OneBertError("no training rows")
        if batch_size < 1:
            raise OneBertError(f"--batch-size must be positive, got {batch_size}")
        self.lengths = np.asarray(lengths, dtype=np.int64)
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.group_size = group_size
        self.epoch = 0
        self.position = 0  # global batches of `epoch` already handed out

    @property
    def global_batch_size(self) -> int:
        return self.batch_size * self.world_size

    @property
    def batches_per_epoch(self) -> int:
        rows = -(-len(self.lengths) // self.world_size) * self.world_size
        return -(-rows // self.global_batch_size)

    def epoch_batches(self, epoch: int) -> list[np.ndarray]:
        """The global batches of one epoch, each sorted by length (longest first)."""
        rng = np.random.default_rng([self.seed, epoch])
        order = rng.permutation(len(self.lengths))
        short = -len(order) % self.world_size
        if short:  # as DistributedSampler: repeat a few rows so every rank gets as many
            order = np.concatenate([order, order[:short]])
        mega = self.global_batch_size * self.group_size
        batches = []
        for start in range(0, len(order), mega):
            group = order[start:start + mega]
            group = group[np.argsort(-self.lengths[group], kind="stable")]
            batches.extend(group[i:i + self.global_batch_size] for i in range(0, len(group), self.global_batch_size))
        return [batches[i] for i in rng.permutation(len(batches))]

    def __iter__(self) -> Iterator[list[int]]:
        while True:
            batches = self.epoch_batches(self.epoch)
            while self.position < len(batches):
                rows = batches[self.position][self.rank::self.world_size]
                self.position += 1
                yield rows.tolist()
            self.epoch += 1
            self.position = 0

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed, "rows": len(self.lengths),
                "global_batch_size": self.global_batch_size}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("rows") != len(self.lengths) or state.get("seed") != self.seed:
            raise OneBertError(f"resume: the checkpoint was trained on {state.get('rows')} rows with seed "
                               f"{state.get('seed')}; this run has {len(self.lengths)} rows and seed {self.seed} "
                               "(same --train, --seed and feature options are needed to resume)")
        if state.get("global_batch_size") != self.global_batch_size:
            raise OneBertError(f"resume: the checkpoint used a global batch of {state.get('global_batch_size')} "
                               f"rows, this run {self.global_batch_size}; keep --batch-size x processes the same")
        self.epoch, self.position = int(state["epoch"]), int(state["position"])


def save_model_dir(model: nn.Module, tokenizer, spec: TaskSpec, directory: Path, **facts: Any) -> None:
    """Write model + tokenizer + task spec as one HuggingFace-layout directory, replacing any old one whole.

    Staged beside the target and renamed into place (io_utils.atomic_directory), so a crash or a full
    disk leaves the previous directory intact and no half-written one.
    """
    model.config = spec.apply_to(model.config, **facts)
    with atomic_directory(directory) as staging:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)


def read_best(run_dir: Path, metric: str) -> float | None:
    """The validation score of RUN_DIR/best (to keep comparing against it after a resume)."""
    path = Path(run_dir) / BEST_DIR / "config.json"
    if not path.is_file():
        return None
    validation = (json.loads(path.read_text(encoding="utf-8")).get("onebert") or {}).get("validation") or {}
    value = validation.get(metric)
    return float(value) if isinstance(value, (int, float)) else None


def flatten_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """Numbers only, one level: NER's per_type {"PER": {"f1": ..}} becomes PER_f1 ...; lists are dropped."""
    flat: dict[str, float] = {}
    for key, value in metrics.items():
        if isinstance(value, dict):
            for inner, number in flatten_metrics(value).items():
                flat[f"{key}_{inner}".removeprefix("per_type_")] = number
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            flat[key] = float(value)
    return flat


def _reported(key: str) -> bool:
    """Validation numbers worth a column in the log: not counts, not per-type precision/recall, and not
    QA's best_* (the metrics are already those at the tuned threshold)."""
    return not (key.endswith(("total", "_number", "_precision", "_recall")) or key.startswith("best_"))


class FineTuningTask(TrainingTask):
    """One task head on labelled examples; validation with the task's metric; the best model kept."""

    def __init__(self, spec: TaskSpec, model_config, tokenizer, train_examples: Sequence[Any], batch_size: int,
                 seed: int = 42, validation_examples: Sequence[Any] | None = None, eval_batch_size: int = 64,
                 metric: str | None = None, rank: int = 0, world_size: int = 1, best_value: float | None = None,
                 log=print):
        self.spec = spec
        self.model_config = model_config
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.log = log
        self.metric = metric or spec.default_metric
        if self.metric not in spec.selection_metrics():
            raise OneBertError(f"--metric {self.metric} is not a {'regression' if spec.regression else spec.task} "
                               f"metric; use one of {', '.join(spec.selection_metrics())}")
        self.features = encode(spec, tokenizer, train_examples, with_labels=True)
        if len(self.features) == 0:
            raise OneBertError("no training rows after feature extraction")
        # Length grouping is for sentence classification only. NER's loss is a mean over the batch's labelled
        # tokens: in length-grouped batches a token of a short sentence would weigh several times one of a long
        # sentence (2.6 F1 on CoNLL-2003). In QA every question on one paragraph has about the same length, so
        # length-grouped batches are one paragraph's questions, correlated gradients (1.6 F1 on SQuAD v1.1); see
        # BENCHMARKS.md. Their batches are random (a mega-batch of one batch).
        group_size = 1 if spec.task in ("ner", "qa") else 50
        self.sampler = LengthGroupedBatches(self.features.lengths(), batch_size, seed=seed, rank=rank,
                                            world_size=world_size, group_size=group_size)
        self.validation = list(validation_examples) if validation_examples is not None else None
        self.validation_features = (encode(spec, tokenizer, self.validation, with_labels=False)
                                    if self.validation else None)
        self.best_value = best_value
        self.best_step: int | None = None
        self.last_threshold = spec.null_threshold
        self._main = rank == 0

    # ---- data
    def train_batches(self) -> Iterator[Batch]:
        pad = self.tokenizer.pad_token_id
        for rows in self.sampler:
            batch = collate([self.features[i] for i in rows], pad)
            if self.spec.task == "ner":
                batch["num_labelled"] = int((batch["labels"] != IGNORE_INDEX).sum())
            yield batch

    def data_state(self) -> dict[str, Any]:
        return self.sampler.state_dict()

    def load_data_state(self, state: dict[str, Any]) -> None:
        self.sampler.load_state_dict(state)

    def count(self, batch: Batch) -> dict[str, float]:
        lengths = batch["attention_mask"].sum(dim=1)
        counts = {"sequences": float(len(lengths)), "tokens": float(lengths.sum()),
                  "flops": training_flops(self.model_config, lengths, 0)}
        if self.spec.task == "ner":
            counts["labelled"] = float(batch["num_labelled"])
        return counts

    # ---- training
    def loss(self, model: nn.Module, batch: Batch, totals: dict[str, Any]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        inputs = {k: v for k, v in batch.items() if k != "num_labelled"}
        out = model(**inputs)
        # The model's loss is a mean over this micro-batch's sequences (labelled tokens for NER):
        # times its count over the global total it becomes its share of the global batch's mean.
        count = batch["num_labelled"] if self.spec.task == "ner" else batch["input_ids"].shape[0]
        total = totals["labelled" if self.spec.task == "ner" else "sequences"]
        total = total.clamp(min=1.0) if isinstance(total, torch.Tensor) else max(total, 1.0)
        device = out.loss.device
        stats = {"loss_sum": out.loss.detach().float() * count,
                 "loss_count": torch.full((), float(count), device=device)}
        if self.spec.task == "classification" and not self.spec.regression:
            stats["correct"] = (out.logits.argmax(-1) == batch["labels"]).sum()
            stats["predicted"] = torch.full((), float(batch["labels"].numel()), device=device)
        elif self.spec.task == "ner":
            labels = batch["labels"]
            stats["correct"] = ((out.logits.argmax(-1) == labels) & (labels != IGNORE_INDEX)).sum()
            stats["predicted"] = torch.full((), float(count), device=device)
        return out.loss * (count / total), stats

    def summarize(self, sums: dict[str, float]) -> dict[str, float]:
        if "loss_count" not in sums:  # validation: already the metrics (see evaluate)
            return dict(sums)
        metrics = {"loss": sums["loss_sum"] / max(sums["loss_count"], 1.0)}
        if "correct" in sums:
            metrics["accuracy"] = sums["correct"] / max(sums["predicted"], 1.0)
        return metrics

    # ---- validation
    def evaluate(self, model: nn.Module, autocast: contextlib.AbstractContextManager, device: torch.device,
                 dist: DistContext) -> dict[str, float] | None:
        """The validation metrics (every rank computes them; only rank 0's count, the others report 0,
        so the loop's sum over ranks leaves rank 0's values)."""
        if not self.validation:
            return None
        outputs = forward(model, self.validation_features, batch_size=self.eval_batch_size, device=device,
                          autocast=autocast, pad_token_id=self.tokenizer.pad_token_id)
        predictions = decode(self.spec, outputs, self.validation_features, self.validation)
        spec = self.spec
        extra: dict[str, float] = {}
        if spec.task == "qa" and spec.version_2:
            from onebert.tasks.qa import apply_null_threshold, tune_null_threshold

            threshold, _ = tune_null_threshold(predictions, self.validation, metric="f1")
            predictions = apply_null_threshold(predictions, threshold)
            extra["null_threshold"] = threshold
        metrics = {k: v for k, v in flatten_metrics(score(spec, predictions, self.validation)).items()
                   if _reported(k)}
        metrics.update(extra)
        if not dist.is_main:
            return {k: 0.0 for k in metrics}
        return metrics

    def on_evaluate(self, step: int, metrics: dict[str, float], model: nn.Module, run_dir: Path) -> None:
        value = metrics.get(self.metric)
        if value is None or not math.isfinite(value):
            return
        if "null_threshold" in metrics:
            self.last_threshold = metrics["null_threshold"]
        better = (self.best_value is None or
                  (value < self.best_value if self.metric in LOWER_IS_BETTER else value > self.best_value))
        if not better:
            return
        previous = self.best_value
        self.best_value, self.best_step = value, step
        validation = {k: v for k, v in metrics.items() if k != "null_threshold"}
        save_model_dir(model, self.tokenizer, self._spec_now(), Path(run_dir) / BEST_DIR, best_step=step,
                       validation=validation)
        change = "" if previous is None else f" (was {previous:.4f})"
        self.log(f"best {self.metric} = {value:.4f} at step {step}{change}: saved {Path(run_dir) / BEST_DIR}")

    def _spec_now(self) -> TaskSpec:
        import dataclasses

        return dataclasses.replace(self.spec, null_threshold=float(self.last_threshold))

    def save_final(self, model: nn.Module, directory: Path) -> None:
        """The last step's model, with the threshold of its last validation (HuggingFace layout + tokenizer)."""
        save_model_dir(model, self.tokenizer, self._spec_now(), Path(directory))
