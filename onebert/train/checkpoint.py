"""Training checkpoints: atomic, checksummed, last-K kept, and exact to resume from.

Layout: RUN_DIR/checkpoints/step-00001000/{state.pt, manifest.json}. A checkpoint is written into a
hidden temporary directory, `state.pt` first (fsynced), then `manifest.json` with the file's size
and SHA-256, then the directory is renamed to its final name. The rename is the commit point: a
kill -9 at any moment leaves either a complete checkpoint or a hidden leftover that is ignored and
cleaned up later, never a half checkpoint under a real name. On load the size and checksum are
checked before unpickling, and `torch.load(weights_only=True)` refuses anything but tensors and
plain Python values, so a checkpoint from elsewhere cannot run code.

`state.pt` holds one dict: model, optimizer, schedule and grad-scaler state, the step, the trainer's
counters, and per rank the RNG states (python, numpy, torch, cuda) and the data iterator position.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import random
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from onebert.errors import OneBertError
from onebert.io_utils import fsync_dir, os_error_behind
from onebert.model.weights import unpickling_refusal_reason

CHECKPOINTS = "checkpoints"
STATE_FILE = "state.pt"
MANIFEST_FILE = "manifest.json"
FORMAT_VERSION = 1
REQUIRED_KEYS = ("format", "step", "model", "optimizer", "schedule", "ranks", "trainer")


class CheckpointError(Exception):
    """A checkpoint that cannot be used; the message says why (missing file, checksum, ...)."""


def checkpoint_dir(run_dir: str | os.PathLike) -> Path:
    return Path(run_dir) / CHECKPOINTS


def checkpoint_name(step: int) -> str:
    return f"step-{step:08d}"


def list_checkpoints(run_dir: str | os.PathLike) -> list[Path]:
    """Committed checkpoint directories (complete or not: `verify_checkpoint` decides), oldest first."""
    directory = checkpoint_dir(run_dir)
    if not directory.is_dir():
        return []
    found = []
    for path in directory.iterdir():
        if path.is_dir() and path.name.startswith("step-") and path.name[5:].isdigit():
            found.append((int(path.name[5:]), path))
    return [path for _, path in sorted(found)]


# ----------------------------------------------------------------------------- RNG states


def capture_rng_state() -> dict[str, Any]:
    """Every generator a training step draws from, as tensors and plain values (weights_only-loadable)."""
    version, mt_state, gauss = random.getstate()
    np_kind, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state: dict[str, Any] = {
        "python": [version, list(mt_state), gauss],
        "numpy": [np_kind, torch.from_numpy(np_keys.astype(np.int64)), int(np_pos), int(np_has_gauss), float(np_gauss)],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    if hasattr(torch, "xpu") and torch.xpu.is_available():
        state["xpu"] = torch.xpu.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    version, mt_state, gauss = state["python"]
    random.setstate((version, tuple(mt_state), gauss))
    np_kind, np_keys, np_pos, np_has_gauss, np_gauss = state["numpy"]
    np.random.set_state((np_kind, np_keys.numpy().astype(np.uint32), np_pos, np_has_gauss, np_gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if "xpu" in state and hasattr(torch, "xpu") and torch.xpu.is_available():
        torch.xpu.set_rng_state_all(state["xpu"])


# ----------------------------------------------------------------------------- save


class _HashingWriter:
    """A file wrapper that hashes what torch.save writes, so saving needs no second read pass."""

    def __init__(self, handle):
        self.handle = handle
        self.sha256 = hashlib.sha256()
        self.size = 0

    def write(self, data) -> int:
        view = memoryview(data)
        self.sha256.update(view)
        self.size += view.nbytes
        return self.handle.write(view)

    def flush(self) -> None:
        self.handle.flush()


def save_checkpoint(run_dir: str | os.PathLike, step: int, state: dict[str, Any], keep_last: int | None = None) -> Path:
    """Write `state` as checkpoint `step` atomically, then keep only the newest `keep_last` checkpoints."""
    root = checkpoint_dir(run_dir)
    root.mkdir(parents=True, exist_ok=True)
    final = root / checkpoint_name(step)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=root))
    try:
        with open(tmp / STATE_FILE, "wb") as handle:
            writer = _HashingWriter(handle)
            torch.save(state, writer)
            handle.flush()
            os.fsync(handle.fileno())
        manifest = {"format": FORMAT_VERSION, "step": step, "file": STATE_FILE, "bytes": writer.size,
                    "sha256": writer.sha256.hexdigest(), "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        with open(tmp / MANIFEST_FILE, "w", encoding="utf-8") as handle:
            json.dump(manifest, handle, indent=2)
            handle.flush()
            os.fsync(handle.fileno())
        if final.exists():  # the same step saved again after a resume: replace it
            shutil.rmtree(final)
        os.replace(tmp, final)
        fsync_dir(root)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        os_error = os_error_behind(exc)  # torch.save reports a full disk as a RuntimeError around it
        if os_error is None:
            raise
        raise OneBertError(f"{final}: could not write checkpoint: {os_error.strerror or os_error}") from None
    prune_checkpoints(run_dir, keep_last)
    return final


def prune_checkpoints(run_dir: str | os.PathLike, keep_last: int | None) -> None:
    """Delete all but the newest `keep_last` checkpoints, and leftovers of interrupted saves."""
    root = checkpoint_dir(run_dir)
    for leftover in root.glob(".step-*.tmp"):
        shutil.rmtree(leftover, ignore_errors=True)
    if keep_last is None or keep_last <= 0:
        return
    for old in list_checkpoints(run_dir)[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)


# ----------------------------------------------------------------------------- load


def verify_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Return the manifest if the checkpoint is complete and intact; raise CheckpointError otherwise."""
    path = Path(path)
    manifest_path = path / MANIFEST_FILE
    if not path.is_dir():
        raise CheckpointError("not a checkpoint directory")
    if not manifest_path.is_file():
        raise CheckpointError(f"no {MANIFEST_FILE} (the save did not finish)")
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        expected_size, expected_sha = int(manifest["bytes"]), str(manifest["sha256"])
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        raise CheckpointError(f"{MANIFEST_FILE} is unreadable") from None
    state_path = path / STATE_FILE
    if not state_path.is_file():
        raise CheckpointError(f"{STATE_FILE} is missing")
    size = state_path.stat().st_size
    if size != expected_size:
        raise CheckpointError(f"{STATE_FILE} has {size} bytes, the manifest says {expected_size} (truncated?)")
    digest = hashlib.sha256()
    with open(state_path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    if digest.hexdigest() != expected_sha:
        raise CheckpointError(f"{STATE_FILE} does not match its SHA-256 checksum (corrupt)")
    return manifest


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Verify, then load with weights_only=True (tensors and plain values only) onto the CPU."""
    path = Path(path)
    verify_checkpoint(path)
    try:
        state = torch.load(path / STATE_FILE, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(f"{STATE_FILE} cannot be loaded (refused to unpickle anything but tensors and plain "
                              f"values: {unpickling_refusal_reason(exc)})") from None
    except Exception as exc:  # noqa: BLE001 - a damaged file fails in many types
        reason = unpickling_refusal_reason(exc) if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{STATE_FILE} cannot be loaded: {reason}") from None
    if not isinstance(state, dict) or any(key not in state for key in REQUIRED_KEYS):
        raise CheckpointError(f"{STATE_FILE} is not a onebert training checkpoint")
    if state["format"] != FORMAT_VERSION:
        raise CheckpointError(f"checkpoint format {state['format']} is not the supported {FORMAT_VERSION}")
    return state


def resolve_resume(run_dir: str | os.PathLike, resume: str, log=print) -> tuple[Path, dict[str, Any]] | None:
    """The checkpoint to resume from: 'auto' = the newest intact one in RUN_DIR, else an explicit path.

    With 'auto', damaged checkpoints are skipped with a message naming what is wrong; none at all
    means a fresh start (returns None). An explicit checkpoint that is damaged is an error.
    """
    if resume != "auto":
        path = Path(resume)
        try:
            return path, load_checkpoint(path)
        except CheckpointError as exc:
            raise OneBertError(f"{path}: cannot resume from this checkpoint: {exc}") from None
    candidates = list_checkpoints(run_dir)
    for path in reversed(candidates):
        try:
            state = load_checkpoint(path)
        except CheckpointError as exc:
            log(f"resume: skipping checkpoint {path}: {exc}")
            continue
        return path, state
    if candidates:
        raise OneBertError(f"{checkpoint_dir(run_dir)}: none of the {len(candidates)} checkpoints is intact; "
                           "nothing to resume from (remove them to start afresh)")
    return None


def find_resume(run_dir: str | os.PathLike, resume: str | None, log=print) -> tuple[Path, dict[str, Any]] | None:
    """Resume or fresh start, decided before anything in RUN_DIR is written.

    A fresh start into a directory that already holds checkpoints is refused: it would mix two runs.
    """
    if resume is None:
        if list_checkpoints(run_dir):
            raise OneBertError(f"{run_dir}: already holds a training run (checkpoints/); pass --resume to continue "
                               "it or choose another --output")
        return None
    resumed = resolve_resume(run_dir, resume, log=log)
    if resumed is None:
        log(f"resume: no checkpoint in {checkpoint_dir(run_dir)} yet; starting from step 0")
    return resumed


def restore_training(resumed: tuple[Path, dict[str, Any]], model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                     schedule, scaler, task, dist, seed: int, log=print) -> tuple[int, dict[str, Any]]:
    """Load a checkpoint into this run's objects; return its step and the trainer's counters.

    The data position and RNG streams are restored per rank; under another number of processes the
    data position of the global batch carries over and dropout is reseeded (see below).
    """
    path, state = resumed
    try:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
    except (RuntimeError, ValueError, KeyError) as exc:
        first = str(exc).strip().splitlines()[-1].strip() if str(exc).strip() else type(exc).__name__
        raise OneBertError(f"{path}: this checkpoint does not fit the model or optimizer of this run "
                           f"(was --model-config changed?): {first}") from None
    schedule.load_state_dict(state["schedule"])
    if state.get("scaler"):
        scaler.load_state_dict(state["scaler"])
    step = int(state["step"])
    saved_world = len(state["ranks"])
    if saved_world == dist.world_size:
        task.load_data_state(state["ranks"][dist.rank]["data"])
        restore_rng_state(state["ranks"][dist.rank]["rng"])
    else:
        # The data position is that of the global batch (the same on every rank), so it carries
        # over when the task's data can re-split it; per-rank dropout streams cannot.
        task.load_data_state(state["ranks"][0]["data"])
        torch.manual_seed(seed + dist.rank + 1_000_003 * step)
        log(f"resume: the checkpoint was written by {saved_world} process(es), this run has {dist.world_size}; "
            "the data position carries over, dropout randomness differs from an uninterrupted run")
    return step, dict(state["trainer"])
