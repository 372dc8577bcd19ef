"""The pretraining task (masked LM + next-sentence prediction) as the training loop sees it.

Batches are dicts input_ids, token_type_ids, attention_mask [B, S], labels [B, S] (-100 where no
prediction is scored) and next_sentence_label [B]. The MLM loss of a micro-batch is its summed
cross-entropy divided by the number of masked tokens in the whole accumulated, all-ranks batch
(and NSP likewise by the number of sequences); see `onebert.train.trainer`.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Protocol

import torch
from torch import nn

from onebert.config import BertConfig
from onebert.io_utils import atomic_write_bytes
from onebert.model import IGNORE_INDEX, training_flops
from onebert.train.distributed import DistContext
from onebert.train.trainer import Batch, TrainingTask

PRETRAINING_KEYS = ("input_ids", "token_type_ids", "attention_mask", "labels", "next_sentence_label")


class ResumableBatches(Protocol):
    """An endless stream of collated micro-batches for one rank, whose position can be saved."""

    def __iter__(self) -> Iterator[Batch]: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class PretrainingTask(TrainingTask):
    """MLM + NSP on `train_data`; evaluation on the batches `eval_data()` returns (fixed masks)."""

    def __init__(self, config: BertConfig, train_data: ResumableBatches, batch_size: int,
                 eval_data: Callable[[], Iterable[Batch]] | None = None,
                 tokenizer_files: Iterable[Path] = ()):
        self.config = config
        self.train_data = train_data
        self.batch_size = batch_size
        self.eval_data = eval_data
        self.tokenizer_files = list(tokenizer_files)

    # ---- data
    def train_batches(self) -> Iterator[Batch]:
        return iter(self.train_data)

    def data_state(self) -> dict[str, Any]:
        return self.train_data.state_dict()

    def load_data_state(self, state: dict[str, Any]) -> None:
        self.train_data.load_state_dict(state)

    def count(self, batch: Batch) -> dict[str, float]:
        lengths = batch["attention_mask"].sum(dim=1)
        masked = int((batch["labels"] != IGNORE_INDEX).sum())
        return {"sequences": float(len(lengths)), "tokens": float(lengths.sum()), "masked": float(masked),
                "flops": training_flops(self.config, lengths, masked)}

    # ---- training
    def loss(self, model: nn.Module, batch: Batch, totals: dict[str, Any]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        masked_total, sequences_total = totals["masked"], totals["sequences"]
        if not isinstance(masked_total, torch.Tensor):
            masked_total = max(masked_total, 1.0)  # a global batch without a masked token: zero MLM loss, not 0/0
        else:
            masked_total = masked_total.clamp(min=1.0)
        out = model(**{k: batch[k] for k in PRETRAINING_KEYS}, mlm_normalizer=masked_total,
                    nsp_normalizer=sequences_total)
        return out.loss, self._statistics(out, batch, masked_total, sequences_total)

    @staticmethod
    def _statistics(out, batch: Batch, mlm_normalizer, nsp_normalizer) -> dict[str, torch.Tensor]:
        # Everything stays on the device (torch.full fills by a kernel, no host-to-device copy).
        nsp_labels = batch["next_sentence_label"].view(-1)
        device = nsp_labels.device
        return {
            "mlm_loss_sum": out.mlm_loss.detach() * mlm_normalizer,
            "mlm_correct": (out.masked_logits.argmax(-1) == out.masked_labels).sum(),
            "mlm_count": torch.full((), float(out.masked_labels.numel()), device=device),
            "nsp_loss_sum": out.nsp_loss.detach() * nsp_normalizer,
            "nsp_correct": (out.seq_relationship_logits.argmax(-1) == nsp_labels).sum(),
            "nsp_count": torch.full((), float(nsp_labels.numel()), device=device),
        }

    def summarize(self, sums: dict[str, float]) -> dict[str, float]:
        mlm_count, nsp_count = max(sums["mlm_count"], 1.0), max(sums["nsp_count"], 1.0)
        metrics = {
            "mlm_loss": sums["mlm_loss_sum"] / mlm_count,
            "mlm_accuracy": sums["mlm_correct"] / mlm_count,
            "nsp_loss": sums["nsp_loss_sum"] / nsp_count,
            "nsp_accuracy": sums["nsp_correct"] / nsp_count,
        }
        return {"loss": metrics["mlm_loss"] + metrics["nsp_loss"], **metrics}

    # ---- evaluation
    def evaluate(self, model: nn.Module, autocast: contextlib.AbstractContextManager, device: torch.device,
                 dist: DistContext) -> dict[str, float] | None:
        if self.eval_data is None:
            return None
        sums: dict[str, torch.Tensor] = {}
        for batch in self.eval_data():
            batch = {k: v.to(device, non_blocking=True) for k, v in batch.items() if k in PRETRAINING_KEYS}
            with autocast:
                # Normalisers of 1 turn the losses into sums, so batches of any size weigh by content.
                out = model(**batch, mlm_normalizer=1.0, nsp_normalizer=1.0)
            for key, value in self._statistics(out, batch, 1.0, 1.0).items():
                value = value.detach().double()
                sums[key] = sums[key] + value if key in sums else value
        if not sums:
            return None
        return {k: float(v) for k, v in sums.items()}

    # ---- the deliverable
    def save_final(self, model: nn.Module, directory: Path) -> None:
        """A HuggingFace-layout model directory: config.json, model.safetensors and the tokenizer files."""
        model.save_pretrained(directory)
        for source in self.tokenizer_files:
            atomic_write_bytes(Path(directory) / Path(source).name, Path(source).read_bytes())
