"""The one training loop, shared by pretraining and fine-tuning.

A `TrainingTask` says what is being learned: it hands out micro-batches, counts what is in them,
computes the loss of one micro-batch, and evaluates. Everything else happens here, in one plain
function you can read top to bottom: device and precision, AdamW + schedule, resume, the
accumulation loop, clipping, logging, evaluation, checkpoints, the time budget.

Loss normalisation. A step sees `grad_accum` micro-batches on each of `world_size` ranks. Before any
forward pass the loop sums the task's counts (masked tokens, sequences, ...) over the micro-batches
and all-reduces them, and the task divides each micro-batch's summed loss by those global totals.
The gradients then add up to exactly those of one big batch, however unevenly the masked tokens
fall; DDP averages gradients over ranks, so each rank's loss is multiplied by world_size.

Host-device synchronisation. The step reads one number from the device: the gradient norm, which
decides whether the update is finite (a non-finite one is skipped and counted; several in a row stop
the run). Metrics stay on the device and are read on logging steps only.

Throughput and MFU. tokens/s counts real tokens (padding excluded). MFU = model FLOPs per second
achieved / (peak FLOP/s x ranks), where the task counts the model FLOPs of each micro-batch (for BERT
`onebert.model.training_flops`: 6 x non-embedding weights x tokens + 12 x layers x hidden x sum of
squared sequence lengths for attention + the MLM head at masked positions only) and the peak is a
timed matmul in the training dtype on this device (`precision.measure_peak_flops`).

Time budget. With `max_time`, training stops when the budget is spent (measured from the start of
the run, across resumes). After a few steps the loop estimates the total number of steps from the
measured step time (evaluation and checkpoint time included, amortised) and re-fits the schedule so
the learning rate decays to 0 at the estimated end; it re-fits at every logging step.
"""

from __future__ import annotations

import contextlib
import math
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import nn

from onebert.errors import OneBertError
from onebert.train import checkpoint as ckpt
from onebert.train import precision as prec
from onebert.train.distributed import DistContext, init_distributed, wrap_ddp
from onebert.train.metrics_log import MetricsLog, Progress, format_metrics
from onebert.train.optim import LRSchedule, build_optimizer, optimizer_kind, set_lr

Batch = dict[str, torch.Tensor]


class TrainingTask:
    """What the loop needs from a job. Subclasses: `onebert.train.pretraining.PretrainingTask`, fine-tuning tasks.

    `train_batches()` is an endless iterator of CPU micro-batches for this rank; `data_state()` is
    the position after the last batch it yielded and `load_data_state()` restores it, so a resumed
    run sees exactly the batches the interrupted one would have.
    """

    batch_size: int = 1  # sequences per micro-batch on one rank (for the printed global batch)

    def train_batches(self) -> Iterator[Batch]:
        raise NotImplementedError

    def data_state(self) -> dict[str, Any]:
        raise NotImplementedError

    def load_data_state(self, state: dict[str, Any]) -> None:
        raise NotImplementedError

    def count(self, batch: Batch) -> dict[str, float]:
        """Per-micro-batch counts, summed over the step's micro-batches and ranks before the forward passes.

        Must include "sequences" and "tokens" (real tokens); "flops" enables MFU; other keys are the
        loss normalisers (e.g. the number of masked tokens).
        """
        raise NotImplementedError

    def loss(self, model: nn.Module, batch: Batch, totals: dict[str, Any]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The micro-batch's share of the step loss (its sum divided by the global totals), and
        statistics as summed 0-dim tensors (e.g. mlm_loss_sum, mlm_correct) to be reported."""
        raise NotImplementedError

    def summarize(self, sums: dict[str, float]) -> dict[str, float]:
        """Turn summed statistics (train or eval) into reported metrics (losses, accuracies)."""
        raise NotImplementedError

    def evaluate(self, model: nn.Module, autocast: contextlib.AbstractContextManager, device: torch.device,
                 dist: DistContext) -> dict[str, float] | None:
        """Summed statistics over this rank's part of the held-out data (None: no held-out data)."""
        return None

    def on_evaluate(self, step: int, metrics: dict[str, float], model: nn.Module, run_dir: Path) -> None:
        """Called on rank 0 after each evaluation (fine-tuning keeps its best model here)."""

    def save_final(self, model: nn.Module, directory: Path) -> None:
        """Write the trained model where users pick it up (a HuggingFace-layout directory)."""
        model.save_pretrained(directory)


@dataclass
class TrainConfig:
    """The loop's options; the commands map their flags onto these fields."""

    output_dir: str
    max_steps: int | None = None
    max_time: float | None = None  # seconds
    grad_accum: int = 1
    lr: float = 1e-4
    warmup_steps: int | None = None
    warmup_ratio: float | None = None
    schedule: str = "linear"
    weight_decay: float = 0.01
    adam_betas: tuple[float, float] = (0.9, 0.999)
    adam_eps: float = 1e-6
    max_grad_norm: float | None = 1.0
    seed: int = 42
    save_every: int | None = None
    keep_last: int = 3
    eval_every: int | None = None
    log_every: int = 10
    resume: str | None = None  # None, "auto" or a checkpoint directory
    precision: str = "auto"
    compile: bool = False
    ipex: bool = False
    device: str = "auto"
    max_nonfinite: int = 5  # consecutive non-finite steps before stopping
    estimate_after: int = 5  # steps before the time budget's first estimate (warm-up, compilation)
    measure_mfu: bool = True

    def validate(self) -> None:
        if self.max_steps is None and self.max_time is None:
            raise OneBertError("give --max-steps or --max-time (or both): training needs an end")
        for name in ("max_steps", "grad_accum", "log_every", "save_every", "eval_every", "keep_last", "estimate_after"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise OneBertError(f"--{name.replace('_', '-')} must be a positive integer, got {value!r}")
        if not isinstance(self.max_nonfinite, int) or self.max_nonfinite < 1:
            raise OneBertError(f"--max-bad-steps must be a positive integer, got {self.max_nonfinite!r}")
        if self.max_time is not None and self.max_time <= 0:
            raise OneBertError(f"--max-time must be positive, got {self.max_time!r} seconds")
        if not self.lr > 0:
            raise OneBertError(f"--lr must be positive, got {self.lr!r}")
        if self.warmup_steps is not None and self.warmup_ratio is not None:
            raise OneBertError("give --warmup-steps or --warmup-ratio, not both")
        if self.warmup_steps is not None and self.warmup_steps < 0:
            raise OneBertError(f"--warmup-steps must be >= 0, got {self.warmup_steps}")
        if self.warmup_ratio is not None and not 0 <= self.warmup_ratio < 1:
            raise OneBertError(f"--warmup-ratio must be in [0, 1), got {self.warmup_ratio}")
        if self.weight_decay < 0:
            raise OneBertError(f"--weight-decay must be >= 0, got {self.weight_decay}")
        if self.max_grad_norm is not None and self.max_grad_norm <= 0:
            raise OneBertError(f"--max-grad-norm must be positive, got {self.max_grad_norm}")


@dataclass
class TrainResult:
    step: int
    train_metrics: dict[str, float] = field(default_factory=dict)
    eval_metrics: dict[str, float] = field(default_factory=dict)
    final_dir: Path | None = None
    interrupted: bool = False
    skipped_steps: int = 0
    train_seconds: float = 0.0


class _StopRequest:
    """SIGINT/SIGTERM set a flag that the loop reads between steps, so a stop never splits a step."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> "_StopRequest":
        try:
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        except ValueError:  # not the main thread: signals stay as they are
            self._previous.clear()
        return self

    def _handle(self, signum, frame) -> None:
        if self.requested:  # a second Ctrl-C: the user really wants out now
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def _describe(value: Any) -> str:
    if isinstance(value, dict):
        return " ".join(f"{k}={v}" for k, v in value.items())
    return str(value)


def _to_device(batch: Batch, device: torch.device) -> Batch:
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def step_totals(task: TrainingTask, micro: list[Batch], dist: DistContext,
                comm_device: torch.device) -> tuple[list[str], torch.Tensor, dict[str, Any]]:
    """The task's counts summed over a step's micro-batches and all ranks: the loss normalisers.

    On a CPU the totals are plain floats; on a GPU they stay 0-dim device tensors, so reading them
    costs no synchronisation.
    """
    counts = [task.count(b) for b in micro]
    keys = sorted(counts[0])
    missing = [k for k in ("sequences", "tokens") if k not in keys]
    if missing:
        raise ValueError(f"{type(task).__name__}.count() must report {missing}")
    vector = dist.all_reduce_sum(torch.tensor([sum(c[k] for c in counts) for k in keys], dtype=torch.float64,
                                              device=comm_device))
    if comm_device.type == "cpu":
        return keys, vector, dict(zip(keys, vector.tolist()))
    return keys, vector, dict(zip(keys, vector.float().unbind()))


def accumulate_gradients(task: TrainingTask, model_fn: nn.Module, micro: list[Batch], totals: dict[str, Any],
                         device: torch.device, autocast: contextlib.AbstractContextManager,
                         scaler: "torch.amp.GradScaler", dist: DistContext) -> dict[str, torch.Tensor]:
    """Forward and backward over the step's micro-batches; .grad then holds the whole global batch's gradient.

    Each micro-batch's loss is already its share of the global sum (see the module docstring), so
    the gradients simply add up. DDP averages over ranks, hence the factor world_size; it
    all-reduces on the last micro-batch only.
    """
    stats: dict[str, torch.Tensor] = {}
    for i, batch in enumerate(micro):
        batch = _to_device(batch, device)
        last = i == len(micro) - 1
        no_sync = model_fn.no_sync() if dist.enabled and not last else contextlib.nullcontext()
        with no_sync:
            with autocast:
                loss, micro_stats = task.loss(model_fn, batch, totals)
            scaler.scale(loss * dist.world_size).backward()
        for key, value in micro_stats.items():
            value = value.detach().float()
            stats[key] = stats[key] + value if key in stats else value
    return stats


def _warmup_steps(config: TrainConfig, total: int) -> int:
    if config.warmup_steps is not None:
        return config.warmup_steps
    if config.warmup_ratio is not None:
        return round(config.warmup_ratio * total)
    return 0


def train(task: TrainingTask, model: nn.Module, config: TrainConfig, options: dict[str, Any] | None = None,
          dist: DistContext | None = None, notes: dict[str, Any] | None = None) -> TrainResult:
    """Train `model` on `task` as `config` says; return where it ended. Rank 0 writes RUN_DIR.

    `options` are the command's option values (printed and saved as RUN_DIR/config.yaml, which
    works as a --config file); `notes` are facts printed and saved beside them as comments.
    """
    config.validate()
    run_dir = Path(config.output_dir)
    dist = dist or init_distributed(prec.device_type(config.device))
    device = prec.resolve_device(config.device, dist.local_rank)
    precision = prec.resolve_precision(config.precision, device)
    say = print if dist.is_main else (lambda *a, **k: None)

    # ---- resume or fresh start: decided before anything in RUN_DIR is written
    resumed = None
    if config.resume is not None:
        resumed = ckpt.resolve_resume(run_dir, config.resume, log=say)
        if resumed is None:
            say(f"resume: no checkpoint in {ckpt.checkpoint_dir(run_dir)} yet; starting from step 0")
    elif ckpt.list_checkpoints(run_dir):
        raise OneBertError(f"{run_dir}: already holds a training run (checkpoints/); pass --resume to continue "
                           "it or choose another --output")

    # ---- model, optimizer, schedule
    raw_model = model.to(device)
    raw_model.train()
    optimizer = build_optimizer(raw_model, config.lr, config.weight_decay, config.adam_betas, config.adam_eps)
    planned_total = config.max_steps or 1_000_000  # a time budget re-fits this after its first estimate
    schedule = LRSchedule(config.lr, _warmup_steps(config, planned_total), max(planned_total, 1), kind=config.schedule)
    scaler = prec.grad_scaler(device, precision)
    step, trainer_state = 0, {"train_seconds": 0.0, "skipped_steps": 0, "sequences": 0.0, "tokens": 0.0}
    torch.manual_seed(config.seed + dist.rank)  # dropout differs between ranks, as it would within one big batch

    if resumed is not None:
        path, state = resumed
        try:
            raw_model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
        except (RuntimeError, ValueError, KeyError) as exc:
            first = str(exc).strip().splitlines()[-1].strip() if str(exc).strip() else type(exc).__name__
            raise OneBertError(f"{path}: this checkpoint does not fit the model or optimizer of this run "
                               f"(was --model-config changed?): {first}") from None
        schedule.load_state_dict(state["schedule"])
        if state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        step = int(state["step"])
        trainer_state.update(state["trainer"])
        saved_world = len(state["ranks"])
        if saved_world == dist.world_size:
            task.load_data_state(state["ranks"][dist.rank]["data"])
            ckpt.restore_rng_state(state["ranks"][dist.rank]["rng"])
        else:
            # The data position is that of the global batch (the same on every rank), so it carries
            # over when the task's data can re-split it; per-rank dropout streams cannot.
            task.load_data_state(state["ranks"][0]["data"])
            torch.manual_seed(config.seed + dist.rank + 1_000_003 * step)
            say(f"resume: the checkpoint was written by {saved_world} process(es), this run has {dist.world_size}; "
                "the data position carries over, dropout randomness differs from an uninterrupted run")
        if config.max_steps is not None and config.max_time is None and schedule.total_steps != config.max_steps:
            schedule.refit(step, config.max_steps)  # --max-steps changed on resume: decay to the new end
        say(f"resume: continuing from {path} (step {step})")
        del state

    if config.ipex:
        raw_model, optimizer = prec.apply_ipex(raw_model, optimizer, precision)
    # Batches vary in length (and the model packs real tokens), so compile for dynamic shapes once
    # rather than recompiling for every new length.
    model_fn: nn.Module = torch.compile(raw_model, dynamic=True) if config.compile else raw_model
    model_fn = wrap_ddp(model_fn, dist, device)
    autocast = prec.autocast(device, precision)
    comm_device = device if dist.backend in ("nccl", "xccl") else torch.device("cpu")

    # ---- the resolved configuration, printed and saved
    global_batch = task.batch_size * dist.world_size * config.grad_accum
    resolved = dict(options or {})
    resolved.update(device=str(device.type), precision=precision)
    summary = {
        **(notes or {}), "world_size": dist.world_size, "global_batch": global_batch,
        "parameters": sum(p.numel() for p in {id(p): p for p in raw_model.parameters()}.values()),
        "optimizer": f"AdamW ({optimizer_kind(optimizer)})", "backend": dist.backend or "single process",
    }
    peak_flops = prec.measure_peak_flops(device, precision) if config.measure_mfu else None
    peak_remeasures = 0
    if dist.is_main:
        import yaml

        from onebert.io_utils import atomic_write_text

        text = yaml.safe_dump(resolved, sort_keys=False, default_flow_style=False)
        derived = "".join(f"# {k}: {_describe(v)}\n" for k, v in summary.items())
        say(f"configuration:\n{text}{derived}", end="")
        say(f"global batch = {task.batch_size} per rank x {dist.world_size} ranks x {config.grad_accum} "
            f"accumulation = {global_batch} sequences")
        if peak_flops:
            say(f"peak {precision} matmul on {device.type}: {peak_flops / 1e9:,.1f} GFLOP/s (measured, the MFU denominator)")
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(run_dir / "config.yaml", "# onebert run configuration (usable as --config)\n" + text + derived)
    log = MetricsLog(run_dir, enabled=dist.is_main, resume_step=step if resumed is not None else None)
    progress = Progress(config.max_steps if config.max_time is None else schedule.total_steps, initial=step,
                        enabled=dist.is_main)

    def save(at_step: int) -> Path | None:
        ranks = dist.gather_objects({"rng": ckpt.capture_rng_state(), "data": task.data_state()})
        if not dist.is_main:
            return None
        trainer_state["train_seconds"] = train_seconds()
        state = {"format": ckpt.FORMAT_VERSION, "step": at_step, "model": raw_model.state_dict(),
                 "optimizer": optimizer.state_dict(), "schedule": schedule.state_dict(),
                 "scaler": scaler.state_dict() if scaler.is_enabled() else None, "ranks": ranks,
                 "trainer": dict(trainer_state), "options": {k: v for k, v in resolved.items()
                                                             if isinstance(v, (str, int, float, bool, type(None)))}}
        return ckpt.save_checkpoint(run_dir, at_step, state, config.keep_last)

    def run_eval(at_step: int) -> dict[str, float]:
        raw_model.eval()
        with torch.no_grad():
            sums = task.evaluate(raw_model, autocast, device, dist)
        raw_model.train()
        if sums is None:
            return {}
        keys = sorted(sums)
        vector = dist.all_reduce_sum(torch.tensor([float(sums[k]) for k in keys], dtype=torch.float64,
                                                  device=comm_device))
        metrics = task.summarize(dict(zip(keys, vector.tolist())))
        if dist.is_main:
            log.write({"split": "eval", "step": at_step, **metrics})
            progress.write(f"eval at step {at_step}: {format_metrics(metrics)}")
            task.on_evaluate(at_step, metrics, raw_model, run_dir)
        return metrics

    # ---- the loop
    start_time = time.monotonic()
    seconds_before = float(trainer_state["train_seconds"])

    def train_seconds() -> float:
        return seconds_before + time.monotonic() - start_time

    batches = iter(task.train_batches())
    start_step = step
    evaluated_at = saved_at = -1
    result = TrainResult(step=step)
    count_keys: list[str] = []
    stat_sums: dict[str, torch.Tensor] = {}
    counts_sum = None
    grad_norm_sum, interval_steps = 0.0, 0
    nonfinite_in_a_row = 0
    interval_start = time.monotonic()
    paused = 0.0  # seconds spent evaluating/saving inside the interval, excluded from throughput
    estimate_start: tuple[int, float] | None = None
    params = [p for p in raw_model.parameters() if p.requires_grad]
    lr = schedule.lr(step + 1)

    with _StopRequest() as stop:
        while True:
            if config.max_steps is not None and step >= config.max_steps:
                break
            if step >= schedule.total_steps and config.max_time is not None:
                break
            # Fetch the whole step's micro-batches first: the loss normaliser needs all their counts.
            micro = [next(batches) for _ in range(config.grad_accum)]
            count_keys, global_counts, totals = step_totals(task, micro, dist, comm_device)
            counts_sum = global_counts if counts_sum is None else counts_sum + global_counts
            lr = schedule.lr(step + 1)
            set_lr(optimizer, lr)
            try:
                stats = accumulate_gradients(task, model_fn, micro, totals, device, autocast, scaler, dist)
            except RuntimeError as exc:  # torch.OutOfMemoryError on GPUs; a plain RuntimeError from the CPU allocator
                if not isinstance(exc, torch.OutOfMemoryError) and "can't allocate memory" not in str(exc):
                    raise
                raise OneBertError(f"step {step + 1}: out of {device.type} memory with {task.batch_size} sequences "
                                   f"per micro-batch; use a smaller --batch-size and a larger --grad-accum "
                                   f"(the same global batch of {global_batch})") from None
            for key, value in stats.items():
                stat_sums[key] = stat_sums[key] + value if key in stat_sums else value

            scaler.unscale_(optimizer)
            grad_norm = torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm or float("inf"))
            grad_norm_value = float(grad_norm)  # the step's one host-device sync (see module docstring)
            if math.isfinite(grad_norm_value):
                scaler.step(optimizer)
                nonfinite_in_a_row = 0
                grad_norm_sum += grad_norm_value
            elif scaler.is_enabled():
                scaler.step(optimizer)  # fp16 overflow: the scaler skips the update and lowers its scale
            else:
                trainer_state["skipped_steps"] += 1
                nonfinite_in_a_row += 1
                progress.write(f"step {step + 1}: non-finite gradient norm ({grad_norm_value}); update skipped")
                if nonfinite_in_a_row >= config.max_nonfinite:
                    raise OneBertError(f"step {step + 1}: the loss or gradients were non-finite for "
                                       f"{nonfinite_in_a_row} steps in a row; lower --lr, use --precision fp32, "
                                       "or resume from an earlier checkpoint")
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            interval_steps += 1
            progress.update()

            # ---- logging: the only place metrics leave the device
            if step % config.log_every == 0 or step == config.max_steps:
                prec.synchronize(device)
                keys = sorted(stat_sums)
                stat_vector = dist.all_reduce_sum(torch.stack([stat_sums[k] for k in keys]).double().to(comm_device))
                metrics = task.summarize(dict(zip(keys, stat_vector.tolist())))
                throughput = dict(zip(count_keys, counts_sum.tolist()))
                seconds = max(time.monotonic() - interval_start - paused, 1e-9)
                trainer_state["sequences"] += throughput["sequences"]
                trainer_state["tokens"] += throughput["tokens"]
                record = {"split": "train", "step": step, **metrics, "lr": lr,
                          "grad_norm": grad_norm_sum / max(interval_steps, 1),
                          "seq_per_s": throughput["sequences"] / seconds, "tokens_per_s": throughput["tokens"] / seconds}
                if peak_flops and "flops" in throughput:
                    achieved = throughput["flops"] / seconds / dist.world_size
                    if achieved > peak_flops and peak_remeasures < 3:
                        peak_remeasures += 1
                        # The peak was measured while something else used the machine: measure again.
                        peak_flops = max(peak_flops, prec.measure_peak_flops(device, precision))
                        progress.write(f"peak {precision} matmul re-measured: {peak_flops / 1e9:,.1f} GFLOP/s")
                    record["mfu"] = achieved / peak_flops
                record["elapsed_s"] = round(train_seconds(), 2)
                if trainer_state["skipped_steps"]:
                    record["skipped_steps"] = trainer_state["skipped_steps"]
                if dist.is_main:
                    log.write(record)
                    progress.show(record, ("loss", "mlm_accuracy", "accuracy", "lr", "tokens_per_s", "mfu"))
                result.train_metrics = record
                stat_sums, counts_sum = {}, None
                grad_norm_sum, interval_steps, paused = 0.0, 0, 0.0
                interval_start = time.monotonic()

            # ---- evaluation and checkpoints (their time is not training throughput)
            pause_start = time.monotonic()
            if config.eval_every and step % config.eval_every == 0:
                result.eval_metrics, evaluated_at = run_eval(step), step
            if config.save_every and step % config.save_every == 0:
                save(step)
                saved_at = step
            paused += time.monotonic() - pause_start

            # ---- stop requests and the time budget, agreed by all ranks
            new_total = 0
            time_up = False
            if config.max_time is not None:
                elapsed = train_seconds()
                time_up = elapsed >= config.max_time
                per_step = None
                if estimate_start is None and step >= start_step + config.estimate_after:
                    # A first, rough estimate (it includes start-up costs such as compilation), so
                    # that warm-up starts now; later estimates time the steps after this one.
                    estimate_start = (step, elapsed)
                    per_step = (elapsed - seconds_before) / (step - start_step)
                elif estimate_start is not None and step % config.log_every == 0:
                    per_step = (elapsed - estimate_start[1]) / max(step - estimate_start[0], 1)
                if per_step is not None:
                    new_total = step + int(max(config.max_time - elapsed, 0.0) / max(per_step, 1e-9))
                    if config.max_steps is not None:
                        new_total = min(new_total, config.max_steps)
            flags = torch.tensor([float(stop.requested), float(time_up), float(new_total)], dtype=torch.float64,
                                 device=comm_device)
            interrupt, time_up_all, agreed_total = dist.all_reduce_max(flags).tolist()
            if agreed_total > 0:
                schedule.refit(step, int(agreed_total), config.warmup_ratio)
                progress.set_total(schedule.total_steps)
            if interrupt:
                progress.write(f"stop requested: saving a checkpoint at step {step}")
                result.interrupted = True
                break
            if time_up_all:
                progress.write(f"time budget of {config.max_time:g}s spent at step {step}")
                break

    # ---- the end: a last evaluation, checkpoint and the exported model
    progress.close()
    result.step = step
    trainer_state["train_seconds"] = train_seconds()
    result.train_seconds = trainer_state["train_seconds"]
    result.skipped_steps = int(trainer_state["skipped_steps"])
    if not result.interrupted and evaluated_at != step:
        result.eval_metrics = run_eval(step) or result.eval_metrics
    checkpoint_path = save(step) if saved_at != step else ckpt.checkpoint_dir(run_dir) / ckpt.checkpoint_name(step)
    if dist.is_main and not result.interrupted:
        result.final_dir = run_dir / "final"
        task.save_final(raw_model, result.final_dir)
        say(f"done: {step} steps in {result.train_seconds:.0f}s; final model in {result.final_dir}")
    elif result.interrupted:
        say(f"interrupted: checkpoint {checkpoint_path} written; continue with --resume")
    log.close()
    return result


__all__ = ["TrainingTask", "TrainConfig", "TrainResult", "train", "step_totals", "accumulate_gradients"]
