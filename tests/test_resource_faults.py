"""Resource faults: a full disk while writing shards or checkpoints, and out-of-memory on a step.

Each fault ends with one clear line and leaves no half-written file behind. The disk fills up two
ways: a write hook that fails like a full disk (ENOSPC) at a chosen write (always runs), and a real
small tmpfs (runs where the test may mount one, e.g. as root in a container; skipped otherwise).
"""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
import uuid

import numpy as np
import pytest
import torch
from synthetic_pretraining import SyntheticBatches, prepare_small_corpus

from onebert.cli import main
from onebert.errors import OneBertError
from onebert.model import BertForPreTraining
from onebert.train import checkpoint as ckpt
from onebert.train.trainer import TrainConfig, train
from onebert.train.pretraining import PretrainingTask

NO_SPACE = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py: one torch thread


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    return prepare_small_corpus(tmp_path_factory.mktemp("prepared"))


@contextlib.contextmanager
def small_filesystem(directory, size: str):
    """A real tmpfs of `size` mounted on `directory`; skips the test where mounting is not allowed."""
    directory.mkdir(parents=True, exist_ok=True)
    try:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", f"onebert-test-{uuid.uuid4().hex[:8]}",
                               str(directory)], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        pytest.skip(f"cannot mount a small tmpfs here ({exc}); the write-hook tests cover the same paths")
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({done.stderr.strip() or done.returncode}); "
                    "the write-hook tests cover the same paths")
    try:
        yield directory
    finally:
        subprocess.run(["umount", "-l", str(directory)], capture_output=True)


def _one_line_error(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err, err
    last = err.splitlines()[-1]  # progress notes may come first; the error is the one last line
    assert " error: " in last, err
    return last


def _prepare_args(corpus, output):
    return ["prepare", "--corpus", str(corpus), "--format", "lines", "--vocab-size", "1000", "--max-seq-length", "48",
            "--shard-size", "2000", "--workers", "1", "--no-progress", "--output", str(output)]


def _pretrain_args(data, run_dir, *extra):
    return ["pretrain", "--data", str(data), "--model-config", "tiny", "--output", str(run_dir), "--batch-size", "8",
            "--lr", "1e-3", "--log-every", "1", "--precision", "fp32", "--device", "cpu", "--eval-every", "1000",
            *map(str, extra)]


# ---------------------------------------------------------------- disk full: write hook


def test_disk_full_while_writing_shards_is_one_line_and_leaves_no_data_directory(prepared, tmp_path, capsys,
                                                                                 monkeypatch):
    corpus = prepared.parent / "corpus.txt"
    real_save, calls = np.save, []

    def save_until_full(handle, array, **kwargs):
        calls.append(1)
        if len(calls) == 4:  # the second shard's first file: some data is already on disk
            handle.write(b"\x93NUMPY partial")
            raise NO_SPACE
        return real_save(handle, array, **kwargs)

    monkeypatch.setattr(np, "save", save_until_full)
    err = _one_line_error(capsys, _prepare_args(corpus, tmp_path / "data"))
    assert "could not write" in err and "No space left on device" in err and ".npy" in err
    assert len(calls) == 4
    assert list(tmp_path.iterdir()) == []  # neither the data directory nor its partial work directory


def test_disk_full_while_writing_a_checkpoint_keeps_the_previous_one_and_resume_continues(prepared, tmp_path, capsys,
                                                                                         monkeypatch):
    run_dir = tmp_path / "run"
    real_save, saves = torch.save, []

    def save_until_full(obj, handle, *args, **kwargs):
        saves.append(1)
        if len(saves) == 2:  # the step-4 checkpoint, half written
            handle.write(b"\0" * 4096)
            raise NO_SPACE
        return real_save(obj, handle, *args, **kwargs)

    monkeypatch.setattr(ckpt.torch, "save", save_until_full)
    err = _one_line_error(capsys, _pretrain_args(prepared, run_dir, "--max-steps", 6, "--save-every", 2))
    assert "step-00000004: could not write checkpoint: No space left on device" in err
    assert [p.name for p in ckpt.list_checkpoints(run_dir)] == ["step-00000002"]
    assert not list(ckpt.checkpoint_dir(run_dir).glob(".*"))  # no half-written checkpoint left behind
    assert not (run_dir / "final").exists()

    monkeypatch.undo()
    assert main(_pretrain_args(prepared, run_dir, "--max-steps", 6, "--save-every", 2, "--resume")) == 0
    out = capsys.readouterr().out
    assert "step-00000002 (step 2)" in out
    assert [p.name for p in ckpt.list_checkpoints(run_dir)][-1] == "step-00000006"
    assert (run_dir / "final" / "model.safetensors").is_file()


# ---------------------------------------------------------------- disk full: a real small filesystem


def test_real_full_filesystem_while_preparing_leaves_it_empty(prepared, tmp_path, capsys):
    corpus = prepared.parent / "corpus.txt"
    with small_filesystem(tmp_path / "small", "96k") as small:
        err = _one_line_error(capsys, _prepare_args(corpus, small / "data"))
        assert "No space left on device" in err
        assert list(small.iterdir()) == []


def test_real_full_filesystem_while_checkpointing_is_one_line_and_leaves_no_partial_checkpoint(prepared, tmp_path,
                                                                                               capsys):
    # Room for the run's small files but not for a checkpoint (weights + AdamW state, several MB).
    with small_filesystem(tmp_path / "small", "1m") as small:
        run_dir = small / "run"
        err = _one_line_error(capsys, _pretrain_args(prepared, run_dir, "--max-steps", 2, "--save-every", 1))
        assert "could not write checkpoint: No space left on device" in err
        assert ckpt.list_checkpoints(run_dir) == []
        assert not list(ckpt.checkpoint_dir(run_dir).glob(".*"))
        assert not (run_dir / "final").exists()


# ---------------------------------------------------------------- out of memory


@pytest.mark.parametrize("error", [
    RuntimeError("[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: can't allocate memory: "
                 "you tried to allocate 68719476736 bytes. Error code 12 (Cannot allocate memory)"),
    torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB"),
])
def test_out_of_memory_on_a_step_suggests_a_smaller_batch_with_accumulation(tiny_config, tmp_path, error):
    class Exhausting(PretrainingTask):
        def loss(self, model, batch, totals):
            raise error

    data = SyntheticBatches(tiny_config.vocab_size, 24, 8)
    config = TrainConfig(output_dir=str(tmp_path), max_steps=3, grad_accum=2, device="cpu", precision="fp32",
                         measure_mfu=False)
    torch.manual_seed(0)
    with pytest.raises(OneBertError) as caught:
        train(Exhausting(tiny_config, data, 8), BertForPreTraining(tiny_config), config)
    message = str(caught.value)
    assert "\n" not in message
    assert "step 1: out of cpu memory with 8 sequences per micro-batch" in message
    assert "smaller --batch-size and a larger --grad-accum (the same global batch of 16)" in message


def test_an_ordinary_runtime_error_is_not_reported_as_out_of_memory(tiny_config, tmp_path):
    class Broken(PretrainingTask):
        def loss(self, model, batch, totals):
            raise RuntimeError("shape mismatch somewhere")

    data = SyntheticBatches(tiny_config.vocab_size, 24, 4)
    config = TrainConfig(output_dir=str(tmp_path), max_steps=1, device="cpu", precision="fp32", measure_mfu=False)
    with pytest.raises(RuntimeError, match="shape mismatch"):
        train(Broken(tiny_config, data, 4), BertForPreTraining(tiny_config), config)


# ---------------------------------------------------------------- any command


def _raise_wrapped_os_error(args):
    try:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "/runs/x/metrics.jsonl")
    except OSError:
        raise RuntimeError("[enforce fail at inline_container.cc:672] unexpected pos")  # as torch's writers do


@pytest.mark.parametrize("failure", ["plain", "wrapped"])
def test_a_full_disk_anywhere_in_a_command_is_one_line_naming_the_file(tmp_path, capsys, monkeypatch, failure):
    import onebert.cli.commands.info as info

    def plain(args):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "/runs/x/metrics.jsonl")

    monkeypatch.setattr(info, "run", plain if failure == "plain" else _raise_wrapped_os_error)
    assert main(["info", str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip() == "onebert info: error: /runs/x/metrics.jsonl: No space left on device"


def test_a_bug_is_not_disguised_as_an_environment_error(tmp_path, monkeypatch):
    import onebert.cli.commands.info as info

    def bug(args):
        raise ValueError("a programming error")

    monkeypatch.setattr(info, "run", bug)
    with pytest.raises(ValueError):
        main(["info", str(tmp_path)])
