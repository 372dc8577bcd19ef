"""Where and in which number format training and inference run: device, autocast, grad scaler, peak FLOP/s, IPEX.

Precision is one of fp32, bf16 or fp16. bf16 keeps fp32's exponent range, so it needs no loss
scaling and works under autocast on CPUs and GPUs alike; fp16 overflows without a GradScaler and is
offered on CUDA/XPU only. "auto" picks bf16 where the hardware computes it natively (CUDA with
bf16 support, XPU, CPUs with AVX512-BF16 or AMX) and fp32 elsewhere.

The MFU denominator is *measured* here, once per process, with a timed matmul in the training dtype
on the training device: a hard-coded datasheet peak is wrong for every CPU and most GPU clocks.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from typing import Any

import torch

from onebert.errors import OneBertError

DEVICES = ("auto", "cpu", "cuda", "xpu", "mps")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def _xpu_available() -> bool:
    return hasattr(torch, "xpu") and torch.xpu.is_available()


def _mps_available() -> bool:
    return hasattr(torch.backends, "mps") and torch.backends.mps.is_available()


def _split_index(name: str) -> tuple[str, int | None]:
    """'cuda:1' -> ('cuda', 1): one device of several, as --device accepts it on every command."""
    kind, _, index = str(name).partition(":")
    return (kind, int(index)) if kind in ("cuda", "xpu") and index.isdigit() else (name, None)


def device_type(name: str) -> str:
    """'auto' prefers cuda, then xpu, then mps, then cpu; 'cuda:1' is of type cuda."""
    name = _split_index(name)[0]
    if name not in DEVICES:
        raise OneBertError(f"--device: unknown device '{name}' (choose one of {', '.join(DEVICES)})")
    if name == "auto":
        return ("cuda" if torch.cuda.is_available() else "xpu" if _xpu_available()
                else "mps" if _mps_available() else "cpu")
    return name


def resolve_device(name: str | None = "auto", local_rank: int | None = None) -> torch.device:
    """The one device resolver of training and inference: 'auto' (None too), a type, or a type with an index.

    'cuda:1' / 'xpu:0' pick a device; a bare 'cuda' takes `local_rank` under torchrun (each rank its
    local GPU, made the current device) and the current device otherwise. Anything torch cannot
    use here is an error that says so, not a crash at the first tensor.
    """
    name = "auto" if name is None else str(name)
    kind, colon, index = name.partition(":")
    if colon and not (index.isdigit() and kind in ("cuda", "xpu")):
        raise OneBertError(f"--device: cannot read '{name}' (use {', '.join(DEVICES)}, or cuda:N / xpu:N)")
    kind = device_type(kind)
    available = {"cpu": True, "cuda": torch.cuda.is_available(), "xpu": _xpu_available(), "mps": _mps_available()}
    if not available[kind]:
        raise OneBertError(f"--device {name}: no {kind} device is available to this PyTorch "
                           f"({torch.__version__}); use --device cpu or --device auto")
    if kind not in ("cuda", "xpu"):
        return torch.device(kind)
    backend = getattr(torch, kind)
    if colon and local_rank not in (None, 0):
        raise OneBertError(f"--device {name} names one device; with several processes give --device {kind} "
                           "(each process takes its local rank's)")
    ordinal = int(index) if colon else local_rank if local_rank is not None else backend.current_device()
    if ordinal >= backend.device_count():
        raise OneBertError(f"--device {name}: this machine has {backend.device_count()} {kind} device(s), "
                           f"numbered from 0")
    if local_rank is not None:
        backend.set_device(ordinal)
    return torch.device(kind, ordinal)


def cpu_has_native_bf16() -> bool:
    """AVX512-BF16 or AMX-BF16: bf16 products in hardware. (oneDNN's own `_is_mkldnn_bf16_supported`
    also says yes on Skylake/Cascade Lake, which only have AVX512 BW/VL/DQ and emulate bf16 at a
    fraction of fp32's speed, so it would make auto pick the slower format there.)"""
    cpu = getattr(torch, "cpu", None)
    try:
        return bool(cpu._is_avx512_bf16_supported() or cpu._is_amx_tile_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve_precision(precision: str, device: torch.device, purpose: str = "training") -> str:
    """The precision `auto` stands for, or the one given, checked against the device.

    auto on a GPU: bf16 (fp16 without bf16). auto on a CPU: bf16 autocast for training where the CPU
    computes bf16 natively (mixed precision, fp32 master weights: the loss curve is unchanged within
    noise), but fp32 for inference (`purpose="inference"`), whose outputs are expected to equal the
    reference implementation's (transformers, sentence-transformers) to float tolerance; bf16 moves an
    embedding by ~1e-3. `--precision bf16` trades that for speed.
    """
    if precision not in PRECISIONS:
        raise OneBertError(f"--precision: unknown precision '{precision}' (choose one of {', '.join(PRECISIONS)})")
    if purpose not in ("training", "inference"):
        raise ValueError(f"purpose must be 'training' or 'inference', got {purpose!r}")
    if precision == "auto":
        if device.type == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        if device.type == "xpu":
            return "bf16"
        if device.type == "cpu" and purpose == "training" and cpu_has_native_bf16():
            return "bf16"
        return "fp32"
    if precision == "fp16" and device.type not in ("cuda", "xpu"):
        raise OneBertError(f"--precision fp16 needs a CUDA or XPU device (it needs loss scaling and fp16 "
                           f"kernels); on {device.type} use --precision bf16 or fp32")
    return precision


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """Mixed precision for the forward pass; weights, gradients and optimizer state stay fp32."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=DTYPES[precision])


def grad_scaler(device: torch.device, precision: str) -> "torch.amp.GradScaler":
    """A real scaler for fp16 only; a disabled one (a no-op with the same interface) otherwise."""
    return torch.amp.GradScaler(device.type, enabled=precision == "fp16")


def synchronize(device: torch.device) -> None:
    if device.type in ("cuda", "xpu", "mps"):
        getattr(torch, device.type).synchronize()


# The sizes the peak is the best of. One size alone (the first whose product took 50 ms) gave 900-1,300 and
# 2,240-2,623 GFLOP/s bf16 in two probes on an AMX CPU (issue 14): AMX kernels and their warm-up differ between
# 1024, 2048 and 4096. The best of several warm sizes does not depend on which size crossed a threshold.
PEAK_SIZES = (1024, 2048, 4096, 8192)  # none smaller: those fit in cache as no training GEMM does
# 1024 and 2048 are always timed (unless 2048 would take > 1 s: a slow device), so a busy machine, which
# slows the first size, does not change the set; larger sizes only while one product would take <= 0.25 s.
PEAK_ALWAYS, PEAK_SLOW_S, PEAK_MAX_PRODUCT_S = 2, 1.0, 0.25
PEAK_SIZE_S = 1.0  # a size's timed products stop after this, once 3 of them are in
PEAK_WARM_S = 0.1  # untimed products first, so threads, clocks and AMX tiles are up before anything counts


@dataclass(frozen=True)
class PeakFlops:
    """A measured matmul peak: FLOP/s per square size timed (the best of its repeats) and the best of those."""

    device: str
    precision: str
    per_size: dict[int, float]

    @property
    def flops(self) -> float:
        return max(self.per_size.values())

    @property
    def size(self) -> int:
        return max(self.per_size, key=self.per_size.__getitem__)


def measure_peak_flops(device: torch.device, precision: str, repeats: int = 5) -> float:
    """FLOP/s of a large square matmul in `precision` on `device`: the MFU denominator (see `measure_peak`)."""
    return measure_peak(device, precision, repeats).flops


def measure_peak(device: torch.device, precision: str, repeats: int = 5,
                 sizes: tuple[int, ...] = PEAK_SIZES) -> PeakFlops:
    """The best FLOP/s of square matmuls in `precision` on `device`, over warm sizes and `repeats` each.

    Of `sizes`, the first two are timed (the second not where it would take over 1 s: a slow device), then
    larger ones while one product is predicted, from the best rate so far, to take at most 0.25 s. Each size
    is warmed by untimed products, then gets `repeats` timed products (3 where more would take over 1 s).
    The best of them counts, because other processes can only make a product slower; the best over sizes,
    because the fastest size differs between machines and libraries. On a CPU the result depends on the
    threads torch uses, which are the threads training uses.
    """
    dtype = DTYPES[precision]
    per_size: dict[int, float] = {}
    devices = [device] if device.type in ("cuda", "xpu") else []
    with torch.random.fork_rng(devices=devices, device_type=device.type if devices else "cuda"):
        # The random operands must not advance the training RNG: a resumed run would diverge.
        for index, size in enumerate(sizes):
            budget = PEAK_SLOW_S if index < PEAK_ALWAYS else PEAK_MAX_PRODUCT_S
            if per_size and 2.0 * size**3 / max(per_size.values()) > budget:
                break
            a = torch.randn(size, size, device=device).to(dtype)
            b = torch.randn(size, size, device=device).to(dtype)
            _warm_up(a, b, device, PEAK_WARM_S if not per_size else 0.0)
            per_size[size] = 2.0 * size**3 / _best_matmul_time(a, b, device, repeats=max(repeats, 1))
    return PeakFlops(device.type, precision, per_size)


def _warm_up(a: torch.Tensor, b: torch.Tensor, device: torch.device, seconds: float) -> None:
    """Untimed products until `seconds` have passed: at least one (kernel selection, allocator, packing),
    two where one is short (< 50 ms; a longer one warms itself), at most 1000."""
    start, products = time.perf_counter(), 0
    while products < 1000:
        elapsed = time.perf_counter() - start
        if products >= 1 and elapsed >= seconds and (products >= 2 or elapsed >= 0.05):
            break
        torch.matmul(a, b)
        synchronize(device)
        products += 1


def _best_matmul_time(a: torch.Tensor, b: torch.Tensor, device: torch.device, repeats: int) -> float:
    best, start = float("inf"), time.perf_counter()
    for done in range(repeats):
        if done >= 3 and time.perf_counter() - start > PEAK_SIZE_S:
            break
        product_start = time.perf_counter()
        torch.matmul(a, b)
        synchronize(device)
        best = min(best, time.perf_counter() - product_start)
    return best


def apply_ipex(model: torch.nn.Module, optimizer: torch.optim.Optimizer, precision: str) -> tuple[Any, Any]:
    """Intel Extension for PyTorch: fused kernels and a fused optimizer step on Intel CPUs/GPUs.

    Asked for explicitly, so a missing or broken installation is an error rather than a silent
    fallback that would leave the user believing the run was accelerated.
    """
    try:
        import intel_extension_for_pytorch as ipex
    except Exception as exc:  # noqa: BLE001 - a version mismatch raises more than ImportError
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise OneBertError(f"--ipex: intel_extension_for_pytorch cannot be imported ({reason}); install the "
                           f"build matching torch {torch.__version__.split('+')[0]} or leave out --ipex") from None
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    model.train()
    model, optimizer = ipex.optimize(model, optimizer=optimizer, dtype=dtype)
    print(f"ipex {getattr(ipex, '__version__', '?')}: model and optimizer optimized for {str(dtype).split('.')[-1]}")
    return model, optimizer
