"""Pretraining (masked LM + next-sentence prediction): the task as the training loop sees it, and
`pretrain()`, the library call behind `onebert pretrain`.

Batches are dicts input_ids, token_type_ids, attention_mask [B, S], labels [B, S] (-100 where no
prediction is scored) and next_sentence_label [B]. The MLM loss of a micro-batch is its summed
cross-entropy divided by the number of masked tokens in the whole accumulated, all-ranks batch
(and NSP likewise by the number of sequences); see `onebert.train.step`.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Protocol

import torch
from torch import nn

from onebert.data.masking import MaskingConfig
from onebert.data.shards import PretrainingData
from onebert.errors import OneBertError
from onebert.io_utils import atomic_directory, atomic_write_bytes
from onebert.model import BertForPreTraining
from onebert.model.config import IGNORE_INDEX, PRESETS, BertConfig, resolve_config
from onebert.model.flops import training_flops
from onebert import runtime
from onebert.train.config import TrainConfig
from onebert.train.distributed import DistContext, init_distributed, shutdown
from onebert.train.prefetch import PrefetchedBatches
from onebert.train.task import Batch, TrainingTask
from onebert.train.trainer import TrainResult, train

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
        """A HuggingFace-layout model directory: config.json, model.safetensors and the tokenizer files.

        Staged beside `directory` and renamed into place whole: a full disk or a kill leaves no half model.
        """
        with atomic_directory(directory) as staging:
            model.save_pretrained(staging)
            for source in self.tokenizer_files:
                atomic_write_bytes(staging / Path(source).name, Path(source).read_bytes())


def pretrain(data_dir: str, model_config: str, config: TrainConfig, *, batch_size: int, masking: MaskingConfig,
             eval_max_instances: int | None = None, num_workers: int = 1,
             options: dict[str, Any] | None = None) -> TrainResult:
    """`onebert pretrain`: a BERT from random weights, trained with MLM + NSP on a prepared data directory.

    `model_config` is a preset name (it takes the data's vocabulary) or a config.json / model
    directory. Everything is checked before anything is written; then this process joins the
    torchrun group (if any) and runs the trainer.
    """
    data = PretrainingData.open(data_dir)
    bert_config = _model_config(model_config, data, data_dir)
    masking.validate()
    config.validate()
    dist = init_distributed(runtime.device_type(config.device))
    try:
        batches = data.train_batches(batch_size, seed=config.seed, rank=dist.rank, world_size=dist.world_size,
                                     masking=masking)
        source = batches if num_workers == 0 else PrefetchedBatches(
            batches, depth=2 * num_workers, pin_memory=runtime.device_type(config.device) == "cuda")
        eval_size = 2 * batch_size
        # Held-out numbers use BERT's standard 15% masking whatever the training rate, so that runs
        # trained with different --mlm-probability values stay comparable.
        eval_masking = MaskingConfig(whole_word=masking.whole_word)

        def eval_data():
            return data.validation_batches(eval_size, seed=0, rank=dist.rank, world_size=dist.world_size,
                                           masking=eval_masking, max_instances=eval_max_instances)

        task = PretrainingTask(bert_config, source, batch_size,
                               eval_data=eval_data if data.num_validation_instances else None,
                               tokenizer_files=sorted(p for p in data.tokenizer_dir.iterdir() if p.is_file()))
        torch.manual_seed(config.seed)
        model = BertForPreTraining(bert_config)
        if dist.is_main:
            print(f"model: {model_config} ({bert_config.num_hidden_layers} layers, hidden {bert_config.hidden_size}, "
                  f"{bert_config.num_attention_heads} heads, vocab {bert_config.vocab_size}); data: {data_dir} "
                  f"({len(data.train):,} training / {data.num_validation_instances:,} held-out instances of up to "
                  f"{data.max_seq_length} tokens, {batches.batches_per_epoch:,} global batches per epoch)")
            if not data.num_validation_instances:
                print("note: the data has no held-out split; no evaluation (prepare with --validation-fraction > 0)")
        shape = {k: v for k, v in bert_config.to_dict().items() if isinstance(v, (int, float, str))}
        result = train(task, model, config, options=options, dist=dist, notes={"model": shape})
    finally:
        shutdown(dist)
    if dist.is_main and result.eval_metrics:
        m = result.eval_metrics
        print(f"held-out: MLM accuracy {m['mlm_accuracy']:.1%} (loss {m['mlm_loss']:.3f}), "
              f"NSP accuracy {m['nsp_accuracy']:.1%} (loss {m['nsp_loss']:.3f})")
    return result


def _model_config(model_config: str, data: PretrainingData, data_dir: str) -> BertConfig:
    """The model's config: a preset takes the data's vocabulary; a file or model directory must match it."""
    if model_config in PRESETS:
        config = resolve_config(model_config, vocab_size=data.vocab_size, pad_token_id=data.pad_token_id)
    else:
        config = resolve_config(model_config)
        if config.vocab_size != data.vocab_size:
            raise OneBertError(f"{model_config}: vocab_size is {config.vocab_size} but {data_dir} was built "
                               f"with a vocabulary of {data.vocab_size} tokens; set vocab_size to {data.vocab_size} "
                               "or prepare the data with this model's tokenizer")
    data.check_compatible(vocab_size=config.vocab_size, max_position_embeddings=config.max_position_embeddings)
    _check_model_tokenizer(model_config, data)
    return config


def _check_model_tokenizer(model_config: str, data: PretrainingData) -> None:
    """A --model-config that is a model directory with a tokenizer must use the data's vocabulary."""
    directory = Path(model_config)
    if not directory.is_dir() or not any((directory / n).is_file() for n in ("tokenizer.json", "vocab.txt")):
        return
    from onebert.tokenizer import Tokenizer

    data.check_compatible(tokenizer=Tokenizer.from_pretrained(directory))
