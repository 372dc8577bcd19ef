"""`torchrun ... onebert pretrain`: two CPU processes (gloo) with per-rank batch B train exactly like one with batch 2B."""

from __future__ import annotations

import os

import pytest
import torch
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
