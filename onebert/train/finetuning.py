"""Fine-tuning as the training loop sees it: classification/regression, NER and QA on labelled examples.

Batches. Each epoch is a seeded permutation of the training rows, cut into "mega-batches" of
`group_size` global batches (the Task's `group_size`: 50 for classification; 1, i.e. plain random
batches, for NER and QA, each task says why); inside one, rows are sorted by length and cut into global batches, and the batches
of the whole epoch are then shuffled (transformers' LengthGroupedSampler, with the batch order
shuffled as well). Batches hold rows of similar length, so little padding is computed,
while every epoch still sees every row once in a new order. A global batch is dealt out to the ranks
row by row (rank r takes rows r, r + W, ...). The position is (epoch, batch), so a resumed run sees
exactly the batches the interrupted one would have.

Loss. A micro-batch's loss is its summed loss divided by the number of sequences (labelled tokens
for NER) in the whole accumulated, all-ranks batch (see `onebert.train.step`): the model's mean
loss times the micro-batch's count over the global total.

Validation. The loop calls `evaluate` every `eval_every` steps: the whole validation set goes
through `onebert.infer.predictor` (the code path of `onebert evaluate`), scored with the task's standard
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
from onebert.model.flops import training_flops
from onebert.infer.predictor import forward
from onebert.tasks import collate, get_task
from onebert.tasks.spec import TaskSpec
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
        self.task = spec.handler
        self.model_config = model_config
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.log = log
        self.metric = metric or spec.default_metric
        self.percent_metrics = self.task.percent_metrics
        if self.metric not in spec.selection_metrics():
            raise OneBertError(f"--metric {self.metric} is not a {spec.task} "
                               f"metric; use one of {', '.join(spec.selection_metrics())}")
        self.features = self.task.features(tokenizer, train_examples, with_labels=True)
        if len(self.features) == 0:
            raise OneBertError("no training rows after feature extraction")
        self.sampler = LengthGroupedBatches(self.features.lengths(), batch_size, seed=seed, rank=rank,
                                            world_size=world_size, group_size=self.task.group_size)
        self.validation = list(validation_examples) if validation_examples is not None else None
        self.validation_features = (self.task.features(tokenizer, self.validation, with_labels=False)
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
            self.task.batch_counts(batch)
            yield batch

    def data_state(self) -> dict[str, Any]:
        return self.sampler.state_dict()

    def load_data_state(self, state: dict[str, Any]) -> None:
        self.sampler.load_state_dict(state)

    def count(self, batch: Batch) -> dict[str, float]:
        lengths = batch["attention_mask"].sum(dim=1)
        counts = {"sequences": float(len(lengths)), "tokens": float(lengths.sum()),
                  "flops": training_flops(self.model_config, lengths, 0)}
        if "num_labelled" in batch:
            counts["labelled"] = float(batch["num_labelled"])
        return counts

    # ---- training
    def loss(self, model: nn.Module, batch: Batch, totals: dict[str, Any]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        inputs = {k: v for k, v in batch.items() if k != "num_labelled"}
        out = model(**inputs)
        # The model's loss is a mean over this micro-batch's sequences (labelled tokens for NER):
        # times its count over the global total it becomes its share of the global batch's mean.
        count = self.task.loss_count(batch)
        total = totals[self.task.loss_count_key()]
        total = total.clamp(min=1.0) if isinstance(total, torch.Tensor) else max(total, 1.0)
        device = out.loss.device
        stats = {"loss_sum": out.loss.detach().float() * count,
                 "loss_count": torch.full((), float(count), device=device)}
        stats.update(self.task.training_stats(out, batch))
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
        predictions = self.task.decode(outputs, self.validation_features, self.validation)
        predictions, extra = self.task.tune_on_validation(predictions, self.validation)
        metrics = {k: v for k, v in flatten_metrics(self.task.score(predictions, self.validation)).items()
                   if _reported(k)}
        metrics.update(extra)
        if not dist.is_main:
            return {k: 0.0 for k in metrics}
        return metrics

    def on_evaluate(self, step: int, metrics: dict[str, float], model: nn.Module, run_dir: Path) -> bool:
        """Keep the model in RUN_DIR/best when the metric improved (strictly; a NaN never does); say whether it did."""
        value = metrics.get(self.metric)
        if value is None or not math.isfinite(value):
            return False
        if "null_threshold" in metrics:
            self.last_threshold = metrics["null_threshold"]
        better = (self.best_value is None or
                  (value < self.best_value if self.metric in self.task.lower_is_better else value > self.best_value))
        if not better:
            return False
        previous = self.best_value
        self.best_value, self.best_step = value, step
        validation = {k: v for k, v in metrics.items() if k != "null_threshold"}
        save_model_dir(model, self.tokenizer, self._spec_now(), Path(run_dir) / BEST_DIR, best_step=step,
                       validation=validation)
        change = "" if previous is None else f" (was {self.format(previous)})"
        self.log(f"best {self.metric} = {self.format(value)} at step {step}{change}: saved {Path(run_dir) / BEST_DIR}")
        return True

    def format(self, value: float) -> str:
        """The selection metric as the console lines print it (a percentage either way; see metrics_log)."""
        from onebert.train.metrics_log import format_value

        return format_value(self.metric, float(value), self.percent_metrics)

    def _spec_now(self) -> TaskSpec:
        import dataclasses

        return dataclasses.replace(self.spec, null_threshold=float(self.last_threshold))

    def save_final(self, model: nn.Module, directory: Path) -> None:
        """The last step's model, with the threshold of its last validation (HuggingFace layout + tokenizer)."""
        save_model_dir(model, self.tokenizer, self._spec_now(), Path(directory))


def finetune(args) -> int:
    """`onebert finetune` once its options are checked: model, data, spec, the loop; 130 when interrupted."""
    import math

    from onebert.model.config import BertConfig
    from onebert.infer.predictor import load_tokenizer, model_class, resolve_model_dir
    from onebert import runtime
    from onebert.train.distributed import init_distributed, shutdown
    from onebert.train.config import TrainConfig
    from onebert.train.trainer import train

    output = Path(args.output)
    # ---- model directory, tokenizer, data: all checked before anything is written
    model_dir = resolve_model_dir(args.model)
    base_config = BertConfig.load(model_dir)
    tokenizer = load_tokenizer(model_dir, base_config)
    max_seq_length = args.max_seq_length or min(get_task(args.task).default_max_seq_length,
                                                 base_config.max_position_embeddings)
    if not 3 <= max_seq_length <= base_config.max_position_embeddings:
        raise OneBertError(f"--max-seq-length must be in 3..{base_config.max_position_embeddings} (the model's "
                           f"positions), got {max_seq_length}")
    train_examples, validation_examples, spec = read_training_data(args, max_seq_length)

    def loop_config(**steps: Any) -> TrainConfig:
        # Every option is a TrainConfig field declared once (onebert/train/config.py); a --warmup-steps given
        # replaces the default ratio rather than contradicting it.
        return TrainConfig.from_options(args, output_dir=args.output, **steps,
                                        warmup_ratio=None if args.warmup_steps is not None else args.warmup_ratio)

    loop_config(max_steps=args.max_steps or 1).validate()  # a bad value is refused before the data is batched
    if args.early_stopping_patience is not None and not validation_examples:
        raise OneBertError("--early-stopping-patience needs --validation (it counts validations without improvement)")

    dist = init_distributed(runtime.device_type(args.device))
    say = print if dist.is_main else (lambda *a, **k: None)
    try:
        best = read_best(output, args.metric or spec.default_metric) if args.resume is not None else None
        task = FineTuningTask(spec, base_config, tokenizer, train_examples, args.batch_size, seed=args.seed,
                              validation_examples=validation_examples, eval_batch_size=args.eval_batch_size,
                              metric=args.metric, rank=dist.rank, world_size=dist.world_size, best_value=best,
                              log=say)
        steps_per_epoch = math.ceil(task.sampler.batches_per_epoch / args.grad_accum)
        # The steps are known once the data is batched: the config is made then, not patched.
        config = loop_config(max_steps=args.max_steps or max(1, math.ceil(args.epochs * task.sampler.batches_per_epoch
                                                                          / args.grad_accum)),
                             eval_every=(args.eval_every or steps_per_epoch) if validation_examples else None)
        torch.manual_seed(args.seed)  # the new head's initial weights
        model = model_class(spec.task).from_pretrained(model_dir, config=spec.apply_to(base_config),
                                                       ignore_mismatched_heads=True)
        say(f"model: {model_dir} ({base_config.num_hidden_layers} layers, hidden {base_config.hidden_size}) "
            f"as {type(model).__name__}")
        say(describe_data(spec, train_examples, validation_examples, task, steps_per_epoch, config.max_steps))
        options = {k: v for k, v in vars(args).items() if k not in ("_module", "command", "config", "bf16")}
        notes = {"labels": ", ".join(spec.labels) if spec.labels and len(spec.labels) <= 20 else
                 (f"{len(spec.labels)} labels" if spec.labels else "none"),
                 "steps_per_epoch": steps_per_epoch}
        notes.update(spec.handler.run_notes())
        result = train(task, model, config, options=options, dist=dist, notes=notes)
    finally:
        shutdown(dist)
    if result.interrupted:
        return 130
    if dist.is_main:
        if task.best_value is not None:
            say(f"best validation {task.metric} = {task.format(task.best_value)}: {output / BEST_DIR}")
        say(f"final model: {output / FINAL_DIR}")
    return 0




def read_training_data(args, max_seq_length: int, log=print):
    """Training and validation examples, and the task spec (labels from the training data)."""
    columns = {k: getattr(args, k) for k in ("text_column", "text_pair_column", "label_column") if getattr(args, k)}
    from onebert.tasks.records import read_options

    reader = get_task(args.task)(None)
    train_examples = reader.read(args.train, columns, read_options(args, "train"))
    validation_examples = reader.read(args.validation, columns, read_options(args, "validation")) \
        if args.validation else None
    kind = get_task(get_task(args.task).training_task(args, train_examples))
    spec = TaskSpec(kind.name, **kind.training_spec(args, train_examples, validation_examples, max_seq_length, log=log))
    return train_examples, validation_examples, spec


def describe_data(spec: TaskSpec, train_examples, validation_examples, task: FineTuningTask, steps_per_epoch: int,
                  max_steps: int) -> str:
    handler = spec.handler
    rows = len(task.features)
    unit = handler.example_unit
    windows = f" -> {rows:,} windows" if rows != len(train_examples) else ""
    validation = f"{len(validation_examples):,} validation {unit}" if validation_examples else "no validation set"
    return (f"data: {spec.task} ({handler.describe()}); {len(train_examples):,} training {unit}{windows}, "
            f"{validation}; {task.sampler.batches_per_epoch:,} batches = {steps_per_epoch:,} steps per epoch, "
            f"{max_steps:,} steps")
