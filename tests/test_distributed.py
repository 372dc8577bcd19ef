"""`torchrun ... onebert pretrain`: two CPU processes (gloo) with per-rank batch B train exactly like one with batch 2B."""

from __future__ import annotations

import os

import pytest
import torch
from kill_helpers import wait_for_checkpoint
from synthetic_pretraining import prepare_small_corpus

from onebert.errors import OneBertError
from onebert.train.checkpoint import list_checkpoints, load_checkpoint
from onebert.train.distributed import backend_for, env_world
from onebert.train.metrics_log import read_metrics

CONFIG = dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
              max_position_embeddings=64, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)


def _curve(run_dir, split="train"):
    return [r for r in read_metrics(os.path.join(run_dir, "metrics.jsonl")) if r["split"] == split]


def test_world_size_and_backend_come_from_the_environment(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "2")
    monkeypatch.setenv("LOCAL_RANK", "0")
    assert env_world() == (2, 4, 0)
    monkeypatch.setenv("RANK", "4")
    with pytest.raises(OneBertError, match="RANK"):
        env_world()
    assert backend_for("cpu") == "gloo" and backend_for("cuda") == "nccl"
    with pytest.raises(OneBertError, match="mps"):
        backend_for("mps")


def test_torchrun_two_processes_match_one_process_on_prepared_data(tmp_path):
    """The real command under torchrun: rank 0 logs, the data is split by rank, losses equal batch 2B."""
    import json
    import subprocess
    import sys

    data = prepare_small_corpus(tmp_path)
    vocab = json.loads((data / "metadata.json").read_text())["tokenizer"]["vocab_size"]
    (tmp_path / "model.json").write_text(json.dumps({**CONFIG, "vocab_size": vocab}))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.getcwd()}
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)

    def pretrain(launcher, run_dir, batch_size, *extra):
        args = ["-m", "onebert", "pretrain", "--data", str(data), "--model-config", str(tmp_path / "model.json"),
                "--output", str(run_dir), "--batch-size", str(batch_size), "--max-steps", "3", "--lr", "1e-3",
                "--log-every", "1", "--eval-every", "3", "--precision", "fp32", "--device", "cpu", *extra]
        done = subprocess.run([*launcher, *args], env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        return done.stdout

    pretrain([sys.executable], tmp_path / "one", 8)
    out = pretrain([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"],
                   tmp_path / "two", 4)
    assert "global batch = 4 per rank x 2 ranks x 1 accumulation = 8 sequences" in out
    assert out.count("configuration:") == 1  # rank 0 alone prints and logs
    one, two = _curve(tmp_path / "one"), _curve(tmp_path / "two")
    assert len(one) == len(two) == 3
    for a, b in zip(one, two):
        for key in ("loss", "mlm_loss", "nsp_loss", "grad_norm"):
            assert b[key] == pytest.approx(a[key], rel=1e-5), (a["step"], key)
        assert (b["mlm_accuracy"], b["nsp_accuracy"]) == (a["mlm_accuracy"], a["nsp_accuracy"])
    assert _curve(tmp_path / "two", "eval")[-1]["mlm_loss"] == pytest.approx(_curve(tmp_path / "one", "eval")[-1]["mlm_loss"], rel=1e-5)

    from safetensors.torch import load_file

    expected = load_file(tmp_path / "one" / "final" / "model.safetensors")
    got = load_file(tmp_path / "two" / "final" / "model.safetensors")
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-4, atol=1e-6, msg=name)
    state = load_checkpoint(list_checkpoints(tmp_path / "two")[-1])
    assert [r["data"]["batch"] for r in state["ranks"]] == [3, 3]  # every rank's position is saved

    # The same global batch on one process continues the two-process run (the data re-splits).
    out = pretrain([sys.executable], tmp_path / "two", 8, "--max-steps", "4", "--resume")
    assert "written by 2 process(es), this run has 1" in out
    assert [r["step"] for r in _curve(tmp_path / "two")] == [1, 2, 3, 4]


# ---------------------------------------------------------------------- faults beyond one process
#
# A rank that dies or fails must end the whole torchrun job within a bounded time (no survivor hanging in
# a collective), with one clear line per rank and no traceback; see onebert/train/distributed.py.

FAULT_BOUND_S = 60  # from the fault to torchrun's exit; measured ~4-6 s on 2 busy cores


@pytest.fixture(scope="module")
def small_data(tmp_path_factory):
    import json

    root = tmp_path_factory.mktemp("faults")
    data = prepare_small_corpus(root)
    vocab = json.loads((data / "metadata.json").read_text())["tokenizer"]["vocab_size"]
    (root / "model.json").write_text(json.dumps({**CONFIG, "vocab_size": vocab}))
    return data, root / "model.json"


def _torchrun(small_data, run_dir, *extra):
    import sys

    data, model = small_data
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "onebert",
            "pretrain", "--data", str(data), "--model-config", str(model), "--output", str(run_dir),
            "--batch-size", "4", "--max-steps", "12", "--save-every", "2", "--lr", "1e-3", "--log-every", "1", "--eval-every", "1000",
            "--precision", "fp32", "--device", "cpu", *extra]


def _env():
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.getcwd()}
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    return env


def _worker_pids(launcher_pid: int, world_size: int = 2, timeout: float = 120.0) -> dict[int, int]:
    """{rank: pid} of torchrun's worker processes (its children, told apart by the RANK in their environment)."""
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ranks = {}
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/stat") as handle:
                    parent = int(handle.read().rsplit(")", 1)[1].split()[1])
                if parent != launcher_pid:
                    continue
                with open(f"/proc/{entry}/environ", "rb") as handle:
                    env = dict(item.split(b"=", 1) for item in handle.read().split(b"\0") if b"=" in item)
            except (OSError, ValueError, IndexError):
                continue  # the process ended meanwhile
            if b"RANK" in env:
                ranks[int(env[b"RANK"])] = int(entry)
        if len(ranks) == world_size:
            return ranks
        time.sleep(0.05)
    raise AssertionError(f"torchrun {launcher_pid} did not start {world_size} workers within {timeout} s")


def _no_rank_traceback(stderr: str) -> None:
    """The only traceback is torchrun's own ChildFailedError report (worker tracebacks are prefixed "[rankN]:")."""
    assert "]: Traceback" not in stderr and stderr.count("Traceback (most recent call last)") == 1, stderr[-4000:]


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="finds torchrun's workers through /proc")
def test_kill_9_of_one_torchrun_rank_ends_the_job_in_bounded_time_and_resume_equals_the_uninterrupted_run(
        small_data, tmp_path):
    import signal
    import subprocess
    import time

    from safetensors.torch import load_file

    straight = subprocess.run(_torchrun(small_data, tmp_path / "straight"), env=_env(), capture_output=True,
                              text=True, timeout=300)
    assert straight.returncode == 0, straight.stderr[-3000:]

    killed = tmp_path / "killed"
    process = subprocess.Popen(_torchrun(small_data, killed), env=_env(), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    try:
        ranks = _worker_pids(process.pid)
        wait_for_checkpoint(process, killed, 2, timeout=300)
        os.kill(ranks[1], signal.SIGKILL)
        killed_at = time.monotonic()
        _, stderr = process.communicate(timeout=FAULT_BOUND_S)
        took = time.monotonic() - killed_at
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode != 0 and not (killed / "final").exists()
    assert took < FAULT_BOUND_S
    # torchrun names the killed rank; the survivor, unless torchrun's SIGTERM ended it first, says in one
    # line what it saw, instead of gloo's traceback
    assert "rank      : 1 (local_rank: 1)\n  exitcode  : -9" in stderr, stderr[-3000:]
    survivor = [line for line in stderr.splitlines() if line.startswith("onebert pretrain: error: rank 0 of 2:")]
    assert survivor or "exitcode  : -15" in stderr, stderr[-3000:]
    assert all("another rank stopped" in line and "--resume" in line for line in survivor)
    _no_rank_traceback(stderr)

    resumed = subprocess.run(_torchrun(small_data, killed, "--resume"), env=_env(), capture_output=True, text=True,
                             timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resume: continuing from" in resumed.stdout
    def losses(run_dir):
        return [(r["step"], r["loss"], r["mlm_accuracy"], r["grad_norm"]) for r in _curve(run_dir)]

    assert losses(killed) == losses(tmp_path / "straight")
    expected, got = load_file(tmp_path / "straight" / "final" / "model.safetensors"), load_file(
        killed / "final" / "model.safetensors")
    assert all(torch.equal(got[name], expected[name]) for name in expected)


def test_a_rank_that_fails_ends_the_torchrun_job_with_its_error_on_one_line(small_data, tmp_path):
    """A real fault that one rank alone meets: rank 0 alone writes checkpoints, and a file size limit
    (as a full disk or a quota would) makes its first checkpoint fail while rank 1 waits in a collective."""
    import resource
    import subprocess
    import time

    limit = 64 * 1024  # the tiny model's checkpoint is ~300 KB; config.yaml and metrics.jsonl stay below

    def limit_file_size():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    started = time.monotonic()
    done = subprocess.run(_torchrun(small_data, tmp_path / "run"), env=_env(), capture_output=True, text=True,
                          timeout=300, preexec_fn=limit_file_size)
    took = time.monotonic() - started
    assert done.returncode != 0, done.stderr[-3000:]
    assert took < FAULT_BOUND_S + 60, took  # the fault comes after start-up (up to a minute on busy cores)
    errors = [line for line in done.stderr.splitlines() if line.startswith("onebert pretrain: error:")]
    assert any("File too large" in line for line in errors), done.stderr[-3000:]
    assert "rank      : 0 (local_rank: 0)\n  exitcode  : 2" in done.stderr  # torchrun: the root cause is rank 0
    assert all("File too large" in line or line.startswith("onebert pretrain: error: rank 1 of 2:") for line in errors)
    _no_rank_traceback(done.stderr)
    assert not (tmp_path / "run" / "final").exists()


def test_a_collective_broken_by_a_lost_rank_is_one_line_and_other_errors_pass_through():
    """What a survivor prints (the torchrun tests above see it only when it wins the race with torchrun's SIGTERM)."""
    from onebert.train.distributed import DistContext

    gloo = RuntimeError("[/__w/pytorch/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:537] Read error "
                        "[127.0.0.1]:47793: Connection reset by peer. This is typically caused by a remote worker "
                        "hanging or bugs in the application. Check the logs of the remote worker before reporting "
                        "an error. GLHF!\nmore")
    ctx = DistContext(rank=1, world_size=2, backend="gloo")
    with pytest.raises(OneBertError) as caught:
        with ctx.failures():
            raise gloo
    message = str(caught.value)
    assert message.startswith("rank 1 of 2: a collective operation failed because another rank stopped")
    assert "(Read error [127.0.0.1]:47793: Connection reset by peer)" in message and "--resume" in message
    assert "\n" not in message and "pair.cc" not in message
    with pytest.raises(RuntimeError, match="a bug"):  # not a collective's error: the traceback stays
        with ctx.failures():
            raise RuntimeError("a bug")
    with pytest.raises(RuntimeError, match="gloo"):  # one process: nothing to translate
        with DistContext().failures():
            raise gloo
