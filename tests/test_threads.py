"""No onebert thread outlives a training run, on success and on error, so nothing aborts at interpreter exit.

Background: a tiny `pretrain` that printed "done" once exited 134 ("terminate called without an
active exception", 1 in ~25 runs). The batch prefetcher's daemon thread was still building a batch
(torch code) when the interpreter shut down; a daemon thread that then asks for the GIL is torn down
mid-C++ and the process aborts. `train` now joins the prefetcher before it returns or raises.
"""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
import threading

import pytest
from synthetic_pretraining import prepare_small_corpus
from tiny_finetune import make_tiny_model, write_pairs

from onebert.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py: one torch thread


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    return prepare_small_corpus(tmp_path_factory.mktemp("prepared"))


def _pretrain_args(data, run_dir, *extra):
    # --num-workers 2: the prefetcher runs and keeps a deep queue (4 batches) to abandon at the end
    return ["pretrain", "--data", str(data), "--model-config", "tiny", "--output", str(run_dir), "--batch-size", "4",
            "--lr", "1e-3", "--log-every", "1", "--precision", "fp32", "--device", "cpu", "--num-workers", "2",
            *map(str, extra)]


def _new_threads(before: set[threading.Thread]) -> list[str]:
    return [t.name for t in threading.enumerate() if t not in before and t.is_alive()]


def _quiet_main(argv):
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        return main(argv)


def test_pretrain_leaves_no_thread_alive_when_it_returns(prepared, tmp_path):
    before = set(threading.enumerate())
    assert _quiet_main(_pretrain_args(prepared, tmp_path / "run", "--max-steps", 3, "--eval-every", 3)) == 0
    assert _new_threads(before) == []


def test_pretrain_leaves_no_thread_alive_when_a_step_raises(prepared, tmp_path, monkeypatch):
    """A crash mid-training (here a step that raises) joins the prefetcher before the error propagates,
    although the traceback keeps the loop's frame, and so the batch iterator, alive."""
    import onebert.train.step as step

    real, calls = step.accumulate_gradients, []

    def failing(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("injected failure in step 2")
        return real(*args, **kwargs)

    monkeypatch.setattr(step, "accumulate_gradients", failing)
    before = set(threading.enumerate())
    with pytest.raises(RuntimeError, match="injected failure"):
        _quiet_main(_pretrain_args(prepared, tmp_path / "run", "--max-steps", 5))
    assert _new_threads(before) == []


def test_pretrain_leaves_no_thread_alive_when_the_batch_source_raises(prepared, tmp_path, monkeypatch):
    """The error raised in the prefetch thread itself reaches the caller, and the thread is gone."""
    from onebert.data import shards

    real, calls = shards.InstanceStore.collate, []

    def failing(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise OSError(5, "Input/output error", "shard-00000.tokens.npy")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(shards.InstanceStore, "collate", failing)
    before = set(threading.enumerate())
    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        assert main(_pretrain_args(prepared, tmp_path / "run", "--max-steps", 5)) == 2
    assert "Input/output error" in err.getvalue()
    assert _new_threads(before) == []


def test_finetune_leaves_no_thread_alive_on_success_and_on_error(tmp_path, monkeypatch):
    model = make_tiny_model(tmp_path / "model")
    train = write_pairs(tmp_path / "train.tsv", 32, 1)
    args = ["finetune", "--model", str(model), "--train", str(train), "--task", "classification", "--lr", "2e-3",
            "--batch-size", "8", "--max-steps", "3", "--device", "cpu"]
    before = set(threading.enumerate())
    assert _quiet_main([*args, "--output", str(tmp_path / "ok")]) == 0
    assert _new_threads(before) == []

    import onebert.train.step as step

    def failing(*a, **k):
        raise RuntimeError("injected failure")

    monkeypatch.setattr(step, "accumulate_gradients", failing)
    with pytest.raises(RuntimeError, match="injected failure"):
        _quiet_main([*args, "--output", str(tmp_path / "failed")])
    assert _new_threads(before) == []


_ABANDONED_PREFETCH = """
import torch
from onebert.train.prefetch import PrefetchedBatches

class Slow:  # every batch is a few ms of torch code that runs without the GIL
    def __iter__(self):
        while True:
            a = torch.randn(300, 300)
            for _ in range(20):
                a = a @ a / 300
            yield {"x": a}
    def state_dict(self):
        return {}

batches = iter(PrefetchedBatches(Slow(), depth=1))
next(batches)
batches.close()  # what the training loop does when it ends
print("done", flush=True)
"""


def test_a_process_exits_cleanly_right_after_closing_a_prefetcher_mid_batch():
    """The abort itself, deterministically: the producer is inside torch code when the process exits.
    Before the fix this printed "terminate called without an active exception" and exited 134 every time."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.getcwd()}
    done = subprocess.run([sys.executable, "-c", _ABANDONED_PREFETCH], env=env, capture_output=True, text=True,
                          timeout=120)
    assert (done.returncode, done.stdout, done.stderr) == (0, "done\n", "")


def test_repeated_tiny_pretrain_processes_all_exit_zero(prepared, tmp_path):
    """Statistical: the abort at exit was seen in 1 of ~25 runs, so 3 runs catch it only rarely (kept few:
    each costs a torch start-up); the tests above are the deterministic checks of its cause."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.getcwd()}
    for run in range(3):
        done = subprocess.run([sys.executable, "-m", "onebert",
                               *_pretrain_args(prepared, tmp_path / f"run{run}", "--max-steps", 2, "--eval-every", 2)],
                              env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0 and "done:" in done.stdout, (run, done.returncode, done.stderr[-2000:])
