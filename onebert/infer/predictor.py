"""Inference with a fine-tuned model: one code path for validation during training, `onebert evaluate`,
`onebert predict` and `onebert.pipeline`; `forward`'s batching is the embedder's too.

A fine-tuned directory describes itself in config.json, so nothing else is needed to use it:
`onebert` = {"task": a name of `onebert.tasks.TASKS`, the feature settings (max_seq_length,
doc_stride, ...), the text columns it was trained on, and for SQuAD v2.0 the null-answer threshold
tuned on the validation set}; the class or tag names are transformers' `id2label`, regression is
`problem_type: "regression"` (task "regression"; older models say "classification"). A directory
fine-tuned by transformers (no `onebert` key) works too: the task is read from its `architectures`.
What differs per task is asked of the spec's Task (`onebert.tasks.base`).

Speed: rows are sorted by length (longest first, so a batch that does not fit fails at once) and
cut into batches, so padding stays small; the model's unpadding skips the rest. Outputs go back to
the rows' original order before decoding.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from onebert.errors import OneBertError
from onebert.tasks import Features, collate, get_task
from onebert.tasks.spec import TaskSpec

_INPUT_KEYS = ("input_ids", "token_type_ids")


# ---------------------------------------------------------------------- loading


def resolve_model_dir(path: str | os.PathLike) -> Path:
    """A model directory, or a run directory whose best/ (else final/) model is meant."""
    path = Path(path)
    if (path / "config.json").is_file():
        return path
    for name in ("best", "final"):
        if (path / name / "config.json").is_file():
            return path / name
    if not path.exists():
        raise OneBertError(f"{path}: no such model directory")
    raise OneBertError(f"{path}: no config.json (nor best/ or final/ inside); is this a model directory?")


def load_tokenizer(directory: Path, config):
    from onebert.tokenizer import Tokenizer

    if not any((directory / name).is_file() for name in ("tokenizer.json", "vocab.txt")):
        raise OneBertError(f"{directory}: no tokenizer files (tokenizer.json or vocab.txt); copy the tokenizer "
                           "the model was trained with into this directory")
    tokenizer = Tokenizer.from_pretrained(directory)
    tokenizer.check_fits(config, where=str(directory))
    return tokenizer


def model_class(task: str):
    """The onebert.model head class that a task fine-tunes."""
    import onebert.model as model_module

    return getattr(model_module, get_task(task).model_class_name)


@dataclass
class Predictor:
    """A fine-tuned model ready to run: model (eval mode, on its device), tokenizer and task spec."""

    model: Any
    tokenizer: Any
    spec: TaskSpec
    device: Any
    batch_size: int = 32
    precision: str = "fp32"
    directory: Path | None = None
    progress: bool = False  # a progress bar on a terminal (the commands; not the pipeline)
    runtime: str = "torch"  # where `model` runs: torch, or an export on onnxruntime / openvino (engines.py)
    engine_reason: str = ""  # why that runtime and precision (auto: what was measured)
    torch_model: Any = None  # the PyTorch model (`model` itself under torch; the export's source otherwise)

    @classmethod
    def load(cls, model_dir: str | os.PathLike, device: str = "auto", batch_size: int = 32,
             max_length: int | None = None, task: str | None = None, precision: str = "fp32",
             runtime: str = "auto", log: Callable[[str], None] | None = None,
             timing_batch: int | None = None) -> "Predictor":
        """precision / runtime: see onebert.infer.engines (auto: the fastest measured on this machine;
        precision auto adds bf16 where the CPU has it). log: where to say what is exported (None: quiet).
        timing_batch: the batch size auto times the runtimes at (default batch_size; a server: 1, its latency)."""
        from onebert.infer import engines
        from onebert.model.config import BertConfig
        from onebert import runtime as runtimes

        directory = resolve_model_dir(model_dir)
        config = BertConfig.load(directory)
        spec = TaskSpec.from_config(config, source=str(directory / "config.json"))
        if task is not None and not get_task(task).accepts(spec.task, config) and \
                not get_task(spec.task).accepts(task, config):
            raise OneBertError(f"{directory}: the model was fine-tuned for {spec.task}, not {task}")
        if batch_size < 1:
            raise OneBertError(f"batch size must be positive, got {batch_size}")
        if max_length is not None:
            if max_length < 3:
                raise OneBertError(f"max_length must be at least 3, got {max_length}")
            spec = dataclasses.replace(spec, max_seq_length=max_length)
        if spec.max_seq_length > config.max_position_embeddings:
            raise OneBertError(f"{directory}: max_seq_length {spec.max_seq_length} exceeds the model's "
                               f"{config.max_position_embeddings} positions")
        tokenizer = load_tokenizer(directory, config)
        model = model_class(spec.task).from_pretrained(directory)
        missing = model.load_report.initialised + model.load_report.reinitialised
        if missing:
            raise OneBertError(f"{directory}: the checkpoint has no trained {spec.task} head "
                               f"({', '.join(missing[:4])} missing); fine-tune it with `onebert finetune` first")
        torch_device = runtimes.resolve_device(device)
        model.to(torch_device).eval()
        # bf16 under auto only for tasks whose outputs were measured unchanged by it (Task.auto_bf16).
        purpose = "predictions" if spec.handler.auto_bf16 else "values"
        engine = engines.select(model, torch_device, runtime=runtime, precision=precision, purpose=purpose,
                                batch_size=timing_batch or batch_size, length=typical_length(spec), log=log)
        return cls(model=engine.model, tokenizer=tokenizer, spec=spec, device=torch_device, batch_size=batch_size,
                   precision=engine.precision, directory=directory, runtime=engine.runtime,
                   engine_reason=engine.reason, torch_model=model)

    def autocast(self) -> contextlib.AbstractContextManager:
        from onebert.infer import engines

        return engines.autocast(self.runtime, self.device, self.precision)

    def predict(self, examples: Sequence[Any]) -> list[Any]:
        """Task predictions (ClassificationPrediction / NerPrediction / QAPrediction), one per example."""
        if not examples:
            return []
        features = encode(self.spec, self.tokenizer, examples, with_labels=False)
        outputs = forward(self.model, features, batch_size=self.batch_size, device=self.device,
                          autocast=self.autocast(), pad_token_id=self.tokenizer.pad_token_id, progress=self.progress)
        return decode(self.spec, outputs, features, examples)

    def evaluate(self, examples: Sequence[Any]) -> tuple[dict[str, Any], list[Any]]:
        predictions = self.predict(examples)
        return score(self.spec, predictions, examples), predictions


def typical_length(spec: TaskSpec) -> int:
    """The sequence length that the runtime choice is timed at: QA windows are full, sentences short."""
    return spec.max_seq_length if spec.handler.fills_windows else min(spec.max_seq_length, 64)


# ---------------------------------------------------------------------- the three steps


def encode(spec: TaskSpec, tokenizer, examples: Sequence[Any], with_labels: bool) -> Features:
    """Model inputs of the examples (with training targets when with_labels)."""
    return spec.handler.features(tokenizer, examples, with_labels=with_labels)


def length_sorted_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Row indices, longest first, in batches of batch_size: little padding, and an oversized batch fails first."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


def progress_bar(total: int, unit: str, show: bool | None) -> Any:
    """A tqdm bar on stderr, or None: show None means only when stderr is a terminal (sentence-transformers'
    convention for its show_progress_bar), True always, False never."""
    if total == 0 or show is False or (show is None and not sys.stderr.isatty()):
        return None
    from tqdm import tqdm

    return tqdm(total=total, unit=unit, file=sys.stderr, leave=False, dynamic_ncols=True)


# What forward keeps of one batch: name -> (values [B, ...], one value per token?). Per-token values are
# cut to each row's length; the rest is kept whole.
Extract = Callable[[Any, dict], dict[str, tuple[Any, bool]]]


def task_outputs(out, batch: dict) -> dict[str, tuple[Any, bool]]:
    """A task head's outputs: "logits" (per token for NER) or QA's "start_logits" / "end_logits"."""
    if out.start_logits is not None:
        return {"start_logits": (out.start_logits, True), "end_logits": (out.end_logits, True)}
    return {"logits": (out.logits, out.logits.ndim == 3)}


def forward(model, features: Features, *, batch_size: int, device, autocast=None, pad_token_id: int = 0,
            progress: bool = False, bar: Any = None, outputs: Extract = task_outputs) -> dict[str, list[np.ndarray]]:
    """Run the model over every feature row, in length-sorted batches; per-row float32 outputs in the rows' order.

    The one inference loop: predict, evaluate, the pipeline, validation during fine-tuning and the
    embedder run through it. outputs: what to keep of a batch (default `task_outputs`: "logits" =
    [num_labels] per row for classification or [length, num_labels] for NER; "start_logits" /
    "end_logits" = [length] for QA; padding is cut off each row). It runs outside autocast, so
    pooling and normalising happen in float32.
    progress: a bar over the batches on a terminal (stderr); bar: a bar of the caller's, advanced by rows.
    """
    import torch

    autocast = autocast or contextlib.nullcontext()
    lengths = features.lengths()
    keys = [k for k in _INPUT_KEYS if k in features.columns]
    results: dict[str, list[Any]] = {}
    batches = length_sorted_batches(lengths, batch_size)
    own_bar = progress_bar(len(batches), "batch", None) if progress and bar is None and len(batches) > 1 else None
    with torch.inference_mode():
        for rows in batches:
            batch = collate([{k: features.columns[k][i] for k in keys} for i in rows], pad_token_id)
            batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
            with autocast:
                out = model(**batch)
            for name, (tensor, token_level) in outputs(out, batch).items():
                values = tensor.float().cpu().numpy()
                column = results.setdefault(name, [None] * len(lengths))
                for j, i in enumerate(rows):
                    column[i] = values[j, :lengths[i]] if token_level else values[j]
            if own_bar is not None:
                own_bar.update(1)
            if bar is not None:
                bar.update(len(rows))
    if own_bar is not None:
        own_bar.close()
    return results


def decode(spec: TaskSpec, outputs: dict[str, list[np.ndarray]], features: Features,
           examples: Sequence[Any]) -> list[Any]:
    return spec.handler.decode(outputs, features, examples)


def score(spec: TaskSpec, predictions: Sequence[Any], examples: Sequence[Any]) -> dict[str, Any]:
    """The task's standard metrics (see onebert.tasks.metrics); classification adds its confusion matrix."""
    return spec.handler.score(predictions, examples)


__all__ = ["TaskSpec", "Predictor", "resolve_model_dir", "load_tokenizer", "model_class", "encode", "forward",
           "task_outputs", "progress_bar", "decode", "score", "length_sorted_batches"]
