"""Helpers for the tests that kill a real training process with kill -9."""

from __future__ import annotations

from pathlib import Path


def wait_for_checkpoint(process, run_dir: Path, step: int, timeout: float = 120.0) -> None:
    """Block until `process` (a training run) has written checkpoint `step` completely (its manifest is the
    last file of a save); fail if the process ends or the time runs out first. The kill -9 tests use it."""
    import time

    manifest = run_dir / "checkpoints" / f"step-{step:08d}" / "manifest.json"
    deadline = time.monotonic() + timeout
    while not manifest.exists():
        assert process.poll() is None, process.stderr.read()[-2000:]
        assert time.monotonic() < deadline, f"no checkpoint {step} after {timeout} s"
        time.sleep(0.002)
