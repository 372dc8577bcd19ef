"""Two CPU processes (gloo) with per-rank batch B train exactly like one process with batch 2B."""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.multiprocessing as mp
from synthetic_pretraining import SyntheticBatches

from onebert.config import BertConfig
from onebert.errors import OneBertError
from onebert.train.distributed import backend_for, env_world
from onebert.train.metrics_log import read_metrics

CONFIG = dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
              max_position_embeddings=64, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _train(run_dir: str, batch_size: int, rank: int, world_size: int, grad_accum: int = 1) -> None:
    from onebert.model import BertForPreTraining
    from onebert.train.loop import TrainConfig, train
    from onebert.train.pretraining import PretrainingTask

    torch.set_num_threads(1)  # two processes share two cores
    config = BertConfig(**CONFIG)
    torch.manual_seed(0)
    model = BertForPreTraining(config)
    data = SyntheticBatches(config.vocab_size, 24, batch_size, rank=rank, world_size=world_size)
    task = PretrainingTask(config, data, batch_size, eval_data=data.eval_batches())
    train(task, model, TrainConfig(output_dir=run_dir, max_steps=4, lr=1e-3, warmup_steps=1, log_every=1,
                                   eval_every=4, save_every=2, grad_accum=grad_accum, device="cpu",
                                   precision="fp32", measure_mfu=False))


def _worker(rank: int, world_size: int, port: int, run_dir: str, batch_size: int, grad_accum: int) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    try:
        _train(run_dir, batch_size, rank, world_size, grad_accum)
    finally:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


def _curve(run_dir, split="train"):
    return [r for r in read_metrics(os.path.join(run_dir, "metrics.jsonl")) if r["split"] == split]


def test_two_gloo_processes_with_batch_b_match_one_process_with_batch_2b(tmp_path, monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    threads = torch.get_num_threads()
    try:
        _train(str(tmp_path / "one"), batch_size=4, rank=0, world_size=1)
    finally:
        torch.set_num_threads(threads)
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path / "two"), 2, 1), nprocs=2, join=True)

    one, two = _curve(tmp_path / "one"), _curve(tmp_path / "two")
    assert [r["step"] for r in two] == [1, 2, 3, 4]
    for a, b in zip(one, two):
        for key in ("loss", "mlm_loss", "nsp_loss", "grad_norm", "lr"):
            assert b[key] == pytest.approx(a[key], rel=1e-5, abs=1e-7), (a["step"], key)
        assert (b["mlm_accuracy"], b["nsp_accuracy"]) == (a["mlm_accuracy"], a["nsp_accuracy"])
    eval_one, eval_two = _curve(tmp_path / "one", "eval")[-1], _curve(tmp_path / "two", "eval")[-1]
    assert eval_two["mlm_loss"] == pytest.approx(eval_one["mlm_loss"], rel=1e-5)

    from safetensors.torch import load_file

    expected = load_file(tmp_path / "one" / "final" / "model.safetensors")
    got = load_file(tmp_path / "two" / "final" / "model.safetensors")
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-4, atol=1e-6, msg=name)
    # rank 0 alone wrote the run directory; the checkpoint holds both ranks' data positions
    from onebert.train.checkpoint import list_checkpoints, load_checkpoint

    state = load_checkpoint(list_checkpoints(tmp_path / "two")[-1])
    assert [r["data"]["position"] for r in state["ranks"]] == [4, 4]


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
