"""Choose by measuring, on this machine: the fastest of a few equivalent ways to run the same model.

Which precision or inference runtime is fastest depends on the CPU (AMX makes bf16 matmuls 6x
fp32's; AVX512-BF16 without AMX makes them ~2x; without either bf16 is emulated), on the model's
size (a tiny model spends its time around the matmuls, where bf16 casts cost more than they save)
and on the batch shape (OpenVINO wins at batch 1, PyTorch's unpadding at large padded batches). A
rule tuned on one machine is wrong on the next, so `fastest` times the candidates here, on the
real model and a batch of the real shape, and remembers the answer: the decision is made once per
machine, library versions, thread count and model shape, and a later run reads it (so two runs of
the same command choose the same way, and the measurement costs nothing the second time).

The candidates take turns round by round, so a change in the machine's load falls on all of them
alike; each one's median counts. The first candidate is the reference (fp32, PyTorch): another
replaces it only when it is faster by more than `margin`, so noise never trades exactness for
nothing.

Decisions live in `cache_dir()/choices.json` (ONEBERT_CACHE_DIR, else ~/.cache/onebert); delete the
file, or set ONEBERT_REMEASURE=1, to measure again (after moving a disk to another machine, say).
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping

CHOICES_FILE = "choices.json"


def cache_dir() -> Path:
    """Where onebert keeps what it derives once per machine: exported graphs and measured choices."""
    root = os.environ.get("ONEBERT_CACHE_DIR")
    if root:
        return Path(root)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "onebert"


def cpu_model() -> str:
    """The processor's name as the kernel reports it ('AMD EPYC', 'Intel(R) Xeon(R) Platinum ...')."""
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


@dataclass
class Choice:
    """What was chosen, the medians (seconds per call) behind it, and whether it came from the cache."""

    name: str
    seconds: dict[str, float] = field(default_factory=dict)
    cached: bool = False

    def explain(self) -> str:
        if not self.seconds:
            return self.name
        ranked = sorted(self.seconds.items(), key=lambda item: item[1])
        base = self.seconds[self.name]
        parts = ", ".join(f"{name} {seconds * 1e3:.1f} ms" for name, seconds in ranked)
        others = [s for n, s in ranked if n != self.name]
        gain = f", {min(others) / base:.2f}x the next" if others and base > 0 else ""
        source = "measured earlier on this machine" if self.cached else "measured now"
        return f"{self.name} ({source}: {parts}{gain})"


def fastest(key: Mapping[str, object], candidates: Mapping[str, Callable[[], object]], *, rounds: int = 3,
            margin: float = 0.05, min_seconds: float = 0.05, clock: Callable[[], float] = time.perf_counter) -> Choice:
    """The candidate whose call is fastest, measured here (or read from an earlier measurement of `key`).

    key: everything the answer depends on besides the machine (model shape, batch, precision asked,
    purpose); the CPU, thread count and library versions are added here. Each candidate is called
    once untimed (kernel selection, caches), then `rounds` rounds in turn, each round repeating a
    call until `min_seconds` passed (so a fast call is not all timer noise).
    """
    names = list(candidates)
    if len(names) == 1:
        return Choice(names[0])
    earlier = remembered(key, names)
    if earlier is not None:
        return earlier
    full_key = _machine_key(key)
    for call in candidates.values():
        call()
    samples: dict[str, list[float]] = {name: [] for name in names}
    for _ in range(rounds):
        for name in names:
            samples[name].append(_seconds_per_call(candidates[name], min_seconds, clock))
    medians = {name: statistics.median(values) for name, values in samples.items()}
    best = min(names, key=lambda name: medians[name])
    if medians[best] > medians[names[0]] * (1 - margin):
        best = names[0]  # not clearly faster than the reference: keep the reference
    choice = Choice(best, medians)
    _write_choice(full_key, choice)
    return choice


def remembered(key: Mapping[str, object], names: list[str]) -> Choice | None:
    """The choice an earlier `fastest(key, ...)` made among `names` on this machine, if any (None under
    ONEBERT_REMEASURE): callers whose candidates are costly to build ask first and build only the one."""
    if os.environ.get("ONEBERT_REMEASURE"):
        return None
    earlier = _read_choices().get(_machine_key(key))
    if earlier and earlier.get("name") in names:
        return Choice(earlier["name"], dict(earlier.get("seconds", {})), cached=True)
    return None


def measured_choices() -> list[tuple[dict, dict]]:
    """Every remembered decision made on this machine: (its key, {"name", "seconds", "measured"})."""
    cpu = cpu_model()
    out = []
    for text, entry in _read_choices().items():
        try:
            key = json.loads(text)
        except ValueError:
            continue
        if isinstance(key, dict) and key.get("cpu") == cpu and isinstance(entry, dict):
            out.append((key, entry))
    return out


def _seconds_per_call(call: Callable[[], object], min_seconds: float, clock: Callable[[], float]) -> float:
    calls, start = 0, clock()
    while True:
        call()
        calls += 1
        elapsed = clock() - start
        if elapsed >= min_seconds or calls >= 1000:
            return elapsed / calls


def _machine_key(key: Mapping[str, object]) -> str:
    """The key plus what else decides the answer. The runtimes' versions come from their package metadata:
    importing onnxruntime and OpenVINO only to read them would cost every command a fraction of a second."""
    from importlib import metadata

    import torch

    versions = {"torch": torch.__version__}
    for package in ("onnxruntime", "openvino"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    full = {"cpu": cpu_model(), "threads": torch.get_num_threads(), **versions, **dict(key)}
    return json.dumps(full, sort_keys=True, default=str)


def _read_choices() -> dict[str, dict]:
    path = cache_dir() / CHOICES_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}  # none yet, or damaged: measure again (and rewrite it whole)
    return data if isinstance(data, dict) else {}


def _write_choice(key: str, choice: Choice) -> None:
    """Atomically (temp file + rename), so two processes deciding at once leave a whole file."""
    path = cache_dir() / CHOICES_FILE
    choices = _read_choices()
    choices[key] = {"name": choice.name, "seconds": choice.seconds,
                    "measured": time.strftime("%Y-%m-%dT%H:%M:%S")}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(choices, indent=1, sort_keys=True) + "\n", encoding="utf-8")
        os.replace(tmp, path)
    except OSError:
        pass  # a read-only home: the choice still holds for this run, it is only not remembered


__all__ = ["Choice", "fastest", "remembered", "measured_choices", "cache_dir", "cpu_model"]
