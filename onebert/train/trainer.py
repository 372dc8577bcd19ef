"""The one training loop, shared by pretraining and fine-tuning.

A `TrainingTask` (`task.py`) says what is being learned: it hands out micro-batches, counts what is
in them, computes the loss of one micro-batch, and evaluates. The `Trainer` sets up the run in
`__init__` (device and precision, AdamW + schedule, resume, compile/DDP, the printed configuration)
and `train()` is the plain loop, which you can read top to bottom. What each line of the loop does
lives in a component:

step.py        one optimizer step: micro-batches, loss normalisers, accumulation, clipping, bad steps
meter.py       the metrics of a logging interval: statistics, throughput, MFU
budget.py      when to stop: --max-steps, the --max-time budget and its schedule re-fit, Ctrl-C
checkpoint.py  the saved state and exact resume
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import nn

from onebert.train import checkpoint as ckpt
from onebert import runtime
from onebert.train.budget import Budget, StopRequest, initial_schedule, refit_after_resume
from onebert.train.config import TrainConfig
from onebert.train.distributed import DistContext, init_distributed, wrap_ddp
from onebert.train.meter import Meter
from onebert.train.metrics_log import MetricsLog, Progress, format_metrics
from onebert.train.optim import build_optimizer, optimizer_kind
from onebert.train.step import OptimizerStep, accumulate_gradients, step_totals
from onebert.train.task import Batch, TrainingTask


@dataclass
class TrainResult:
    step: int
    train_metrics: dict[str, float] = field(default_factory=dict)
    eval_metrics: dict[str, float] = field(default_factory=dict)
    final_dir: Path | None = None
    interrupted: bool = False
    skipped_steps: int = 0
    train_seconds: float = 0.0
    early_stopped: bool = False  # --early-stopping-patience ran out


def train(task: TrainingTask, model: nn.Module, config: TrainConfig, options: dict[str, Any] | None = None,
          dist: DistContext | None = None, notes: dict[str, Any] | None = None) -> TrainResult:
    """Train `model` on `task` as `config` says; return where it ended. Rank 0 writes RUN_DIR.

    `options` are the command's option values (printed and saved as RUN_DIR/config.yaml, which
    works as a --config file); `notes` are facts printed and saved beside them as comments.
    """
    return Trainer(task, model, config, options, dist, notes).train()


class Trainer:
    def __init__(self, task: TrainingTask, model: nn.Module, config: TrainConfig,
                 options: dict[str, Any] | None = None, dist: DistContext | None = None,
                 notes: dict[str, Any] | None = None):
        config.validate()
        self.task, self.config, self.run_dir = task, config, Path(config.output_dir)
        self.dist = dist = dist or init_distributed(runtime.device_type(config.device))
        self.device = runtime.resolve_device(config.device, dist.local_rank)
        self.precision = runtime.resolve_precision(config.precision, self.device)
        self.say = print if dist.is_main else (lambda *a, **k: None)
        resumed = ckpt.find_resume(self.run_dir, config.resume, log=self.say)

        self.model = model.to(self.device)  # the unwrapped model: the one saved and evaluated
        self.model.train()
        self.optimizer = build_optimizer(self.model, config.lr, config.weight_decay, config.adam_betas,
                                         config.adam_eps)
        self.schedule = initial_schedule(config)
        self.scaler = runtime.grad_scaler(self.device, self.precision)
        self.step, self.resumed = 0, resumed is not None
        # Checkpointed with the weights; evals_without_improvement is the early-stopping count.
        self.counters: dict[str, Any] = {"train_seconds": 0.0, "skipped_steps": 0, "sequences": 0.0, "tokens": 0.0,
                                         "evals_without_improvement": 0}
        self.stop_early = False
        torch.manual_seed(config.seed + dist.rank)  # dropout differs between ranks, as it would within one big batch
        if resumed is not None:
            self.step, saved_counters = ckpt.restore_training(resumed, self.model, self.optimizer, self.schedule,
                                                              self.scaler, task, dist, config.seed, log=self.say)
            self.counters.update(saved_counters)
            refit_after_resume(self.schedule, self.step, config)
            self.say(f"resume: continuing from {resumed[0]} (step {self.step})")
            del resumed
        self._first_batches = self._settle_precision()
        try:
            self._wrap_model()
            self.options = self._announce(options, notes)
        except BaseException:
            _close(self._first_batches)
            raise
        self.log = MetricsLog(self.run_dir, enabled=dist.is_main, resume_step=self.step if self.resumed else None)
        self.progress = Progress(config.max_steps if config.max_time is None else self.schedule.total_steps,
                                 initial=self.step, enabled=dist.is_main)
        self.optimizer_step = OptimizerStep(
            task, self.model_fn, [p for p in self.model.parameters() if p.requires_grad], self.optimizer,
            self.scaler, device=self.device, autocast=self.autocast, dist=dist, comm_device=self.comm_device,
            grad_accum=config.grad_accum, max_grad_norm=config.max_grad_norm, max_nonfinite=config.max_nonfinite,
            skipped_steps=int(self.counters["skipped_steps"]), write=self.progress.write)

    def train(self) -> TrainResult:
        """The loop, then the end; the metrics file and the trackers are closed either way (rank 0 opens them)."""
        if self.dist.is_main:
            from onebert.train.tracking import open_trackers, parse_report_to

            self.log.trackers = open_trackers(parse_report_to(self.config.report_to), self.run_dir, self.options,
                                              resume_step=self.step if self.resumed else None)
        failed = True
        try:
            result = self._finish(*self._loop())
            failed = False
            return result
        finally:
            self.progress.close()
            self.log.close(failed=failed)

    def _loop(self) -> tuple[TrainResult, int, int]:
        config, step_fn = self.config, self.optimizer_step
        self.meter = Meter(self.task, self.dist, self.device, self.precision, self.comm_device, self.peak_flops,
                           self.log, self.progress, self.counters["sequences"], self.counters["tokens"])
        self.budget = Budget(config, self.step, float(self.counters["train_seconds"]), self.dist, self.comm_device)
        batches, self._first_batches = self._first_batches or iter(self.task.train_batches()), None
        result = TrainResult(step=self.step)
        evaluated_at = saved_at = -1

        # Closing the batch iterator on the way out of the loop, by return or by exception, joins a
        # prefetch thread (onebert.train.prefetch) before anything else ends: a thread left running
        # into interpreter shutdown can abort the process after a successful run.
        # dist.failures(): a rank that saw another rank die says so in one line (see onebert.train.distributed).
        with StopRequest() as stop, _closing(batches), self.dist.failures():
            while not self.budget.reached(self.step, self.schedule):
                lr = self.schedule.lr(self.step + 1)
                self.meter.add(step_fn(batches, self.step, lr))
                self.step += 1
                self.progress.update()

                if self.step % config.log_every == 0 or self.step == config.max_steps:
                    result.train_metrics = self.meter.report(self.step, lr, self.budget.train_seconds,
                                                             step_fn.skipped_steps)
                with self.meter.paused():
                    if config.eval_every and self.step % config.eval_every == 0:
                        result.eval_metrics, evaluated_at = self.evaluate(), self.step
                    if config.keeps_checkpoints and config.save_every and self.step % config.save_every == 0:
                        self.save()
                        saved_at = self.step

                interrupt, time_up = self.budget.agree(self.step, stop.requested, self.schedule, self.progress)
                if interrupt:
                    self.progress.write(f"stop requested at step {self.step}"
                                        + (": saving a checkpoint" if config.keeps_checkpoints else ""))
                    result.interrupted = True
                    break
                if time_up:
                    self.progress.write(f"time budget of {config.max_time:g}s spent at step {self.step}")
                    break
                if self.stop_early:  # every rank evaluated at this step and agreed (see _count_patience)
                    self.progress.write(f"early stopping at step {self.step}: the validation metric did not improve "
                                        f"in {config.early_stopping_patience} evaluations in a row")
                    result.early_stopped = True
                    break
        return result, evaluated_at, saved_at

    def _finish(self, result: TrainResult, evaluated_at: int, saved_at: int) -> TrainResult:
        """The end: a last evaluation, checkpoint and the exported model."""
        self.progress.close()
        result.step, result.train_seconds = self.step, self.budget.train_seconds()
        result.skipped_steps = self.optimizer_step.skipped_steps
        if not result.interrupted and evaluated_at != self.step:
            result.eval_metrics = self.evaluate() or result.eval_metrics
        if not self.config.keeps_checkpoints:  # --keep-last 0 / --save-every 0: the model only, nothing to resume
            checkpoint = None
        elif saved_at != self.step:
            checkpoint = self.save()
        else:
            checkpoint = ckpt.checkpoint_dir(self.run_dir) / ckpt.checkpoint_name(self.step)
        if self.dist.is_main and not result.interrupted:
            result.final_dir = self.run_dir / "final"
            self.task.save_final(self.model, result.final_dir)
            self.say(f"done: {self.step} steps in {result.train_seconds:.0f}s; final model in {result.final_dir}")
        elif result.interrupted and checkpoint is None:
            self.say(f"interrupted at step {self.step}; no checkpoint written (--keep-last 0 / --save-every 0), "
                     "so the run cannot be resumed")
        elif result.interrupted:
            self.say(f"interrupted: checkpoint {checkpoint} written; continue with --resume")
        return result

    def _settle_precision(self) -> Iterator[Batch] | None:
        """--precision auto on a native-bf16 CPU: time a step of the first batch in fp32 and bf16 (train/precision.py).

        Returns the batch stream with that first batch still at its head (None when nothing was read),
        so the run trains on exactly the batches it would have without the measurement."""
        from onebert.train.precision import choose_training_precision, measure, with_first

        config = self.config
        saved = self.counters.get("precision") if self.resumed else None
        self.precision, must_measure = choose_training_precision(
            config.precision, self.device, resumed=saved,
            can_measure=self.dist.world_size == 1 and not config.compile and not config.ipex)
        self.precision_note = "as the run being resumed was trained" if saved and config.precision == "auto" else ""
        self.counters["precision"] = self.precision
        if not must_measure:
            return None
        stream = iter(self.task.train_batches())
        try:
            first = next(stream)
            self.precision, self.precision_note = measure(self.task, self.model, first, self.device, self.dist)
        except BaseException:
            _close(stream)
            raise
        self.counters["precision"] = self.precision
        return with_first(first, stream)

    def _wrap_model(self) -> None:
        """The module the steps call (IPEX, torch.compile, DDP); `self.model` stays the plain one."""
        if self.config.ipex:
            self.model, self.optimizer = runtime.apply_ipex(self.model, self.optimizer, self.precision)
        # Batches vary in length (and the model packs real tokens), so compile for dynamic shapes once
        # rather than recompiling for every new length.
        model_fn: nn.Module = torch.compile(self.model, dynamic=True) if self.config.compile else self.model
        self.model_fn = wrap_ddp(model_fn, self.dist, self.device)
        self.autocast = runtime.autocast(self.device, self.precision)
        # Validation runs at the precision `onebert evaluate` would use for the saved model (auto: fp32 on a
        # CPU), so the scores a run saves and selects its best model by are the ones evaluate reproduces.
        self.eval_autocast = runtime.autocast(
            self.device, runtime.resolve_precision(self.config.precision, self.device, "inference"))
        self.comm_device = self.device if self.dist.backend in ("nccl", "xccl") else torch.device("cpu")

    def _announce(self, options: dict[str, Any] | None, notes: dict[str, Any] | None) -> dict[str, Any]:
        """Print the resolved configuration and save it as RUN_DIR/config.yaml (rank 0); measure the MFU peak."""
        task, dist, config = self.task, self.dist, self.config
        global_batch = task.batch_size * dist.world_size * config.grad_accum
        resolved = dict(options or {})
        resolved.update(device=str(self.device.type), precision=self.precision)
        summary = {
            **(notes or {}), "world_size": dist.world_size, "global_batch": global_batch,
            "parameters": sum(p.numel() for p in {id(p): p for p in self.model.parameters()}.values()),
            "optimizer": f"AdamW ({optimizer_kind(self.optimizer)})", "backend": dist.backend or "single process",
            **({"precision_choice": self.precision_note} if self.precision_note else {}),
        }
        self.peak_flops = runtime.measure_peak_flops(self.device, self.precision) if config.measure_mfu else None
        if dist.is_main:
            import yaml

            from onebert.io_utils import atomic_write_text

            text = yaml.safe_dump(resolved, sort_keys=False, default_flow_style=False)
            derived = "".join(f"# {k}: {_describe(v)}\n" for k, v in summary.items())
            self.say(f"configuration:\n{text}{derived}", end="")
            self.say(f"global batch = {task.batch_size} per rank x {dist.world_size} ranks x {config.grad_accum} "
                     f"accumulation = {global_batch} sequences")
            self.say("torch.compile: " + ("on (--compile)" if config.compile else
                     "off (on a CPU compiled training measured no faster than eager, BENCHMARKS.md; --compile turns it on)"
                     if self.device.type == "cpu" else "off (--compile turns it on)"))
            if self.peak_flops:
                self.say(f"peak {self.precision} matmul on {self.device.type}: {self.peak_flops / 1e9:,.1f} GFLOP/s "
                         "(measured, the MFU denominator)")
            self.run_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.run_dir / "config.yaml",
                              "# onebert run configuration (usable as --config)\n" + text + derived)
        return resolved

    def evaluate(self) -> dict[str, float]:
        self.model.eval()
        with torch.no_grad():
            sums = self.task.evaluate(self.model, self.eval_autocast, self.device, self.dist)
        self.model.train()
        if sums is None:
            return {}
        keys = sorted(sums)
        vector = self.dist.all_reduce_sum(torch.tensor([float(sums[k]) for k in keys], dtype=torch.float64,
                                                       device=self.comm_device))
        metrics = self.task.summarize(dict(zip(keys, vector.tolist())))
        improved = None
        if self.dist.is_main:
            self.log.write({"split": "eval", "step": self.step, **metrics})
            self.progress.write(f"eval at step {self.step}: {format_metrics(metrics, percent=self.task.percent_metrics)}")
            improved = self.task.on_evaluate(self.step, metrics, self.model, self.run_dir)
        if self.config.early_stopping_patience is not None:
            self._count_patience(improved)
        return metrics

    def _count_patience(self, improved: bool | None) -> None:
        """Early stopping: rank 0 judged the metric; every rank takes its verdict, so all stop at the same step."""
        verdict = torch.tensor([float(bool(improved)), float(improved is None and self.dist.is_main)],
                               dtype=torch.float64, device=self.comm_device)
        improved_all, untracked = self.dist.all_reduce_max(verdict).tolist()
        if untracked:  # the task keeps no validation metric (pretraining): nothing to count
            return
        misses = 0 if improved_all else int(self.counters["evals_without_improvement"]) + 1
        self.counters["evals_without_improvement"] = misses
        patience = self.config.early_stopping_patience
        if misses:
            self.progress.write(f"no improvement of the validation metric in {misses} evaluation(s) in a row "
                                f"(stopping at {patience})")
        self.stop_early = misses >= patience

    def save(self) -> Path | None:
        """A checkpoint of everything an exact resume needs: weights, optimizer, schedule, RNGs, data position."""
        ranks = self.dist.gather_objects({"rng": ckpt.capture_rng_state(), "data": self.task.data_state()})
        if not self.dist.is_main:
            return None
        self.counters.update(train_seconds=self.budget.train_seconds(), skipped_steps=self.optimizer_step.skipped_steps,
                             sequences=self.meter.sequences, tokens=self.meter.tokens)
        options = {k: v for k, v in self.options.items() if isinstance(v, (str, int, float, bool, type(None)))}
        state = {"format": ckpt.FORMAT_VERSION, "step": self.step, "model": self.model.state_dict(),
                 "optimizer": self.optimizer.state_dict(), "schedule": self.schedule.state_dict(),
                 "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else None, "ranks": ranks,
                 "trainer": dict(self.counters), "options": options}
        return ckpt.save_checkpoint(self.run_dir, self.step, state, self.config.keep_last)


def _close(batches: Iterator[Batch] | None) -> None:
    """Close a batch stream now (its prefetch thread with it), as `_closing` does on leaving its block."""
    close = getattr(batches, "close", None)
    if close is not None:
        close()


def _closing(batches: Iterator[Batch]) -> contextlib.AbstractContextManager:
    """Close `batches` (a generator, a prefetcher's iterator) on leaving the block; plain iterators need nothing."""
    return contextlib.closing(batches) if hasattr(batches, "close") else contextlib.nullcontext()


def _describe(value: Any) -> str:
    if isinstance(value, dict):
        return " ".join(f"{k}={v}" for k, v in value.items())
    return str(value)


__all__ = ["Batch", "TrainingTask", "TrainConfig", "TrainResult", "Trainer", "train", "step_totals",
           "accumulate_gradients"]
