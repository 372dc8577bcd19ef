"""What `--precision auto` means for a training run: the faster of fp32 and bf16 for this model, here.

bf16 autocast halves the bytes of every matmul operand, and on a CPU with AVX512-BF16 or AMX its
products run 2-6x faster; but each forward also casts the weights, and LayerNorm, GELU, softmax
and the optimizer stay fp32. For a small model that overhead is most of the step: measured on an
AMX Xeon, the tiny preset trained at 251 seq/s in bf16 against 356 in fp32 (issue 14). So on such a
CPU auto times one training step (forward and backward of the run's first micro-batch) in each and
keeps the faster (`onebert.autotune.fastest`, remembered per machine and model shape); fp32 wins
ties. Elsewhere the rule is simple: a GPU takes bf16 (fp16 without it), a CPU without native bf16
takes fp32.

A resumed run keeps the precision its checkpoint was trained in, so resume stays exact whatever a
later measurement would say. Several processes (torchrun) use the rule, bf16 where native, because
each rank measuring alone could choose differently.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator

import torch

from onebert import runtime


def choose_training_precision(asked: str, device: torch.device, *, resumed: str | None = None,
                              can_measure: bool = True) -> tuple[str, bool]:
    """(precision, whether it must be measured). Measuring happens only for auto on a native-bf16 CPU."""
    rule = runtime.resolve_precision(asked, device)
    if asked != "auto":
        return rule, False
    if resumed in ("fp32", "bf16", "fp16"):
        return resumed, False
    return rule, bool(can_measure and device.type == "cpu" and rule == "bf16")


def measure(task, model: torch.nn.Module, batch: dict[str, Any], device: torch.device, dist) -> tuple[str, str]:
    """(the faster of fp32 and bf16 for one training step on `batch`, how it was decided).

    The model's gradients are cleared afterwards and the RNG is left where it was: the run then
    starts exactly as it would have without the measurement.
    """
    from onebert import autotune
    from onebert.train.step import step_totals, to_device

    batch = to_device(batch, device)
    _, _, totals = step_totals(task, [batch], dist, torch.device("cpu"))
    config = getattr(model, "config", None)

    def step(precision: str) -> Callable[[], None]:
        def call() -> None:
            with runtime.autocast(device, precision):
                loss, _ = task.loss(model, batch, totals)
            loss.backward()
        return call

    key = {"purpose": "training", "class": type(model).__name__,
           "shape": {name: list(value.shape) for name, value in batch.items() if isinstance(value, torch.Tensor)},
           **({k: getattr(config, k) for k in ("hidden_size", "num_hidden_layers", "intermediate_size",
                                              "num_attention_heads", "vocab_size")} if config is not None else {})}
    with torch.random.fork_rng(devices=[]):
        choice = autotune.fastest(key, {"fp32": step("fp32"), "bf16": step("bf16")}, rounds=2, min_seconds=0.02)
    model.zero_grad(set_to_none=True)
    return choice.name, f"auto: the faster here for this model ({choice.explain()})"


def with_first(first: Any, rest: Iterator[Any]) -> Iterator[Any]:
    """`first`, then the rest of the stream; closing this closes the stream (its prefetch thread with it)."""
    return _Prepended(first, rest)


class _Prepended:
    def __init__(self, first: Any, rest: Iterator[Any]):
        self._first, self._rest, self._given = first, rest, False

    def __iter__(self) -> "_Prepended":
        return self

    def __next__(self) -> Any:
        if not self._given:
            self._given = True
            first, self._first = self._first, None
            return first
        return next(self._rest)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            getattr(self._rest, "close", lambda: None)()


__all__ = ["choose_training_precision", "measure", "with_first"]
