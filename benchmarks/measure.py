"""What the speed benchmark measures besides step times: the GEMM peak, peak memory, the machine.

- GEMM peak: FLOP/s of a large square matrix multiply in the benchmark's own dtype, timed in
  the same process between the model measurements. Model FLOPs utilisation divides by this, so
  it is never a datasheet number and it moves with whatever else loads the machine.
- Peak memory on CPU: the resident-set high-water mark (VmHWM) of a fresh process that builds
  one side only, reset through /proc/self/clear_refs just before the first step, so building
  the model does not count and each side pays for its own step only. On CUDA: the allocator's
  peak allocated bytes over the steps.
"""

from __future__ import annotations

import os
import platform
import resource
import statistics
import time
from pathlib import Path

import torch


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def gemm_peak_flops(dtype: torch.dtype, device: str, size: int = 2048, calls: int = 5) -> float:
    """Median FLOP/s of `calls` [size x size] @ [size x size] products after one untimed call."""
    generator = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(size, size, generator=generator, device=device).to(dtype)
    b = torch.randn(size, size, generator=generator, device=device).to(dtype)
    torch.matmul(a, b)
    times = []
    for _ in range(calls):
        synchronize(device)
        start = time.perf_counter()
        torch.matmul(a, b)
        synchronize(device)
        times.append(time.perf_counter() - start)
    return 2.0 * size**3 / statistics.median(times)


# ----------------------------------------------------------------------------- memory


def _status_kib(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def reset_peak_rss() -> bool:
    """Make VmHWM equal to the current RSS (Linux >= 4.0); False where that is not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def rss_mib() -> float:
    kib = _status_kib("VmRSS")
    return kib / 1024 if kib is not None else float("nan")


def peak_rss_mib() -> float:
    kib = _status_kib("VmHWM")
    if kib is None:  # not Linux: the lifetime peak, which includes building the model
        kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // (1024 if platform.system() == "Darwin" else 1)
    return kib / 1024


# ----------------------------------------------------------------------------- machine


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def allocator() -> str:
    preload = os.environ.get("LD_PRELOAD", "")
    for name in ("tcmalloc", "jemalloc", "mimalloc"):
        if name in preload:
            return f"{name} (LD_PRELOAD={preload})"
    return "system malloc (glibc)" if platform.system() == "Linux" else "system malloc"


def machine_info(device: str) -> dict:
    info = {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpu": cpu_model(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "logical_cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
        "allocator": allocator(),
        "mkldnn_bf16": bool(torch.ops.mkldnn._is_mkldnn_bf16_supported()),
        "device": device,
    }
    try:
        import transformers

        info["transformers"] = transformers.__version__
    except ImportError:
        info["transformers"] = None
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name()
    return info


def reexec_with_allocator(choice: str, module: str, argv: list[str]) -> None:
    """Re-execute `python -m module argv` once with the allocator chosen (auto / tcmalloc: preloaded; system:
    taken out of LD_PRELOAD), since it must be in place before the process starts; return when it already is."""
    import sys

    from onebert.launcher import find_tcmalloc

    preload = os.environ.get("LD_PRELOAD", "")
    env = dict(os.environ)
    if choice in ("auto", "tcmalloc") and "tcmalloc" not in preload:
        library = find_tcmalloc()
        if library is None:
            if choice == "tcmalloc":
                raise SystemExit("--allocator tcmalloc: libtcmalloc_minimal not found (apt-get install "
                                 "libtcmalloc-minimal4)")
            return
        env["LD_PRELOAD"] = ":".join(p for p in (library, preload) if p)
    elif choice == "system" and "tcmalloc" in preload:
        env["LD_PRELOAD"] = ":".join(p for p in preload.split(":") if "tcmalloc" not in p)
    else:
        return
    repo = str(Path(__file__).resolve().parents[1])  # so `-m benchmarks...` is found from any directory
    env["PYTHONPATH"] = os.pathsep.join(p for p in (repo, env.get("PYTHONPATH", "")) if p)
    os.execve(sys.executable, [sys.executable, "-m", module, *argv], env)
