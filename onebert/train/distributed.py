"""Several processes through PyTorch's own engine: `torchrun --nproc_per_node=N -m onebert pretrain ...`.

torchrun sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT; `init_distributed` reads
them and picks the backend for the device: gloo on CPU, nccl on CUDA, xccl on Intel GPUs where this
PyTorch provides it. Without those variables (a plain `onebert pretrain`) nothing is initialised
and every helper here is a no-op, so the loop has one code path for one process and many.

When a rank dies (a crash, kill -9, out of memory) or exits on an error, the job ends within a bounded
time, it does not hang: the survivors' next collective fails at once (gloo and nccl see the closed
connection) and each says so in one line (`peer_failure`), and torchrun, which checks its workers
every 0.1 s, sends the others SIGTERM and, 30 s later, SIGKILL. Measured on CPU/gloo: about 4 s from
a kill -9 to torchrun's exit (tests/test_distributed.py allows 60 s). A rank that hangs without dying
is caught by the collective timeout instead (`init_distributed`, 30 minutes: longer than rank 0 alone
needs to write a large checkpoint). The run's last complete checkpoint continues it with --resume.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import re
from dataclasses import dataclass
from typing import Any, Iterator

import torch
import torch.distributed as dist

from onebert.errors import OneBertError


@dataclass
class DistContext:
    """This process's place in the job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0 alone logs, evaluates into files and writes checkpoints."""
        return self.rank == 0

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum over ranks, in place; the tensor must live where the backend can reach it."""
        if self.enabled:
            with self.failures(any_runtime_error=True):
                dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def all_reduce_max(self, tensor: torch.Tensor) -> torch.Tensor:
        """Max over ranks, in place: how ranks agree on a stop flag or a re-fitted step count."""
        if self.enabled:
            with self.failures(any_runtime_error=True):
                dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
        return tensor

    def gather_objects(self, obj: Any) -> list[Any]:
        """Every rank's `obj` as a list indexed by rank (on every rank; picklable objects only)."""
        if not self.enabled:
            return [obj]
        gathered: list[Any] = [None] * self.world_size
        with self.failures(any_runtime_error=True):
            dist.all_gather_object(gathered, obj)
        return gathered

    def barrier(self) -> None:
        if self.enabled:
            with self.failures(any_runtime_error=True):
                dist.barrier()

    @contextlib.contextmanager
    def failures(self, any_runtime_error: bool = False) -> Iterator[None]:
        """Turn a collective that failed because another rank is gone into one line (`peer_failure`).

        Around the training loop this catches what DDP's gradient all-reduce raises inside
        backward(), recognised by the backend's words; around a collective call alone
        (`any_runtime_error`) every RuntimeError is the collective's.
        """
        try:
            yield
        except RuntimeError as exc:
            if not self.enabled or not (any_runtime_error or is_collective_failure(exc)):
                raise
            raise peer_failure(self, exc) from None


# What gloo, nccl and c10d say when the other side of a collective is gone or silent.
_COLLECTIVE_WORDS = ("gloo", "nccl", "xccl", "connection reset", "connection closed", "broken pipe",
                     "processgroup", "c10d")


def is_collective_failure(exc: BaseException) -> bool:
    if isinstance(exc, getattr(dist, "DistError", ())):
        return True
    return isinstance(exc, RuntimeError) and any(word in str(exc).lower() for word in _COLLECTIVE_WORDS)


def peer_failure(ctx: DistContext, exc: BaseException) -> OneBertError:
    """One line for a collective that failed: which rank saw it, the backend's reason, what to do."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    text = re.sub(r"^\[[^\]]*\.(?:cc|cpp|h)(?::\d+)?\]\s*", "", text)  # gloo's "[.../pair.cc:537] " prefix
    text = text.split(". This is typically")[0].rstrip(". ")
    return OneBertError(f"rank {ctx.rank} of {ctx.world_size}: a collective operation failed because another rank "
                        f"stopped or stopped answering ({text}); the job ends here: the other ranks' output says "
                        "why, and --resume continues the run from its last checkpoint")


def env_world() -> tuple[int, int, int]:
    """(rank, world_size, local_rank) from torchrun's environment; (0, 1, 0) without it."""
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local_rank = int(os.environ.get("LOCAL_RANK", str(rank)))
    except ValueError:
        raise OneBertError("RANK / WORLD_SIZE / LOCAL_RANK must be integers (they are set by torchrun)") from None
    if world < 1 or not 0 <= rank < world:
        raise OneBertError(f"RANK={rank} WORLD_SIZE={world}: need 0 <= RANK < WORLD_SIZE")
    return rank, world, local_rank


def backend_for(device_type: str) -> str:
    if device_type == "cuda":
        return "nccl"
    if device_type == "xpu":
        if dist.is_backend_available("xccl"):
            return "xccl"
        raise OneBertError("multi-process training on XPU needs the xccl backend, which this PyTorch "
                           f"({torch.__version__}) does not provide; use a PyTorch build with XPU distributed support")
    if device_type == "mps":
        raise OneBertError("multi-process training is not supported on mps; run one process or use --device cpu")
    return "gloo"


def init_distributed(device_type: str, timeout_minutes: float = 30.0) -> DistContext:
    """Join the process group torchrun described, or return a single-process context.

    `timeout_minutes` bounds how long a collective waits for a rank that neither answers nor dies.
    """
    rank, world, local_rank = env_world()
    if world == 1:
        return DistContext()
    if not dist.is_available():
        raise OneBertError("WORLD_SIZE > 1 but this PyTorch was built without torch.distributed")
    backend = backend_for(device_type)
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, rank=rank, world_size=world,
                                timeout=datetime.timedelta(minutes=timeout_minutes))
    return DistContext(rank=rank, world_size=world, local_rank=local_rank, backend=backend)


def wrap_ddp(model: torch.nn.Module, ctx: DistContext, device: torch.device) -> torch.nn.Module:
    if not ctx.enabled:
        return model
    from torch.nn.parallel import DistributedDataParallel

    device_ids = [device.index] if device.type in ("cuda", "xpu") else None
    with ctx.failures(any_runtime_error=True):  # the constructor broadcasts rank 0's parameters
        return DistributedDataParallel(model, device_ids=device_ids)


def shutdown(ctx: DistContext) -> None:
    if ctx.enabled and dist.is_initialized():
        dist.destroy_process_group()
