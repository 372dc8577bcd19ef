"""`--precision auto` for training (onebert/train/precision.py): measured on a native-bf16 CPU, and harmless.

The measurement runs a step of the run's first batch in fp32 and bf16; the run must then be the one
it would have been without it (same batches, same RNG, no stray gradients), and a resumed run keeps
the precision its checkpoint was trained in.
"""

from __future__ import annotations

import pytest
import torch
from synthetic_pretraining import SyntheticBatches

from onebert import autotune, runtime
from onebert.model import BertForPreTraining
from onebert.train import precision as training_precision
from onebert.train.metrics_log import read_metrics
from onebert.train.pretraining import PretrainingTask
from onebert.train.trainer import TrainConfig, train

pytestmark = pytest.mark.usefixtures("one_thread")
CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ONEBERT_CACHE_DIR", str(tmp_path / "cache"))


def _run(config, run_dir, precision, max_steps=4, crash_at_batch=None, **options):
    torch.manual_seed(0)
    model = BertForPreTraining(config)
    data = SyntheticBatches(config.vocab_size, 24, 4, seed=0, crash_at_batch=crash_at_batch)
    task = PretrainingTask(config, data, 4, eval_data=data.eval_batches())
    settings = dict(output_dir=str(run_dir), max_steps=max_steps, lr=1e-3, warmup_steps=2, log_every=1,
                    device="cpu", precision=precision, measure_mfu=False, seed=0, **options)
    return train(task, model, TrainConfig(**settings), options={"model_config": "test"})


def _curve(run_dir):
    return [(r["step"], r["loss"]) for r in read_metrics(run_dir / "metrics.jsonl") if r["split"] == "train"]


def test_the_rule_where_nothing_is_measured(monkeypatch):
    monkeypatch.setattr(runtime, "cpu_has_native_bf16", lambda: True)
    assert training_precision.choose_training_precision("auto", CPU) == ("bf16", True)
    assert training_precision.choose_training_precision("fp32", CPU) == ("fp32", False)
    assert training_precision.choose_training_precision("auto", CPU, resumed="fp32") == ("fp32", False)
    assert training_precision.choose_training_precision("auto", CPU, can_measure=False) == ("bf16", False)
    monkeypatch.setattr(runtime, "cpu_has_native_bf16", lambda: False)
    assert training_precision.choose_training_precision("auto", CPU) == ("fp32", False)


@pytest.mark.parametrize("winner", ["fp32", "bf16"])
def test_a_measured_run_equals_the_run_with_the_precision_it_chose(tiny_config, tmp_path, monkeypatch, winner):
    monkeypatch.setattr(runtime, "cpu_has_native_bf16", lambda: True)
    measured = []

    def fastest(key, candidates, **kwargs):
        for call in candidates.values():  # really run both steps: the run must not notice
            call()
        measured.append(key)
        return autotune.Choice(winner, {"fp32": 1.0, "bf16": 1.0})

    monkeypatch.setattr(autotune, "fastest", fastest)
    auto = _run(tiny_config, tmp_path / "auto", "auto")
    assert measured and measured[0]["purpose"] == "training"
    fixed = _run(tiny_config, tmp_path / "fixed", winner)
    assert auto.step == fixed.step == 4
    assert _curve(tmp_path / "auto") == _curve(tmp_path / "fixed")  # same batches, same dropout, same updates
    config_text = (tmp_path / "auto" / "config.yaml").read_text(encoding="utf-8")
    assert f"precision: {winner}" in config_text and "precision_choice: auto: the faster here" in config_text


def test_a_resumed_run_keeps_its_precision_without_measuring(tiny_config, tmp_path, monkeypatch):
    monkeypatch.setattr(runtime, "cpu_has_native_bf16", lambda: True)
    monkeypatch.setattr(autotune, "fastest", lambda key, candidates, **kw: autotune.Choice("fp32", {}))
    with pytest.raises(RuntimeError, match="simulated crash"):
        _run(tiny_config, tmp_path / "run", "auto", max_steps=6, save_every=3, crash_at_batch=4)
    monkeypatch.setattr(autotune, "fastest", lambda *a, **k: pytest.fail("a resumed run measured again"))
    resumed = _run(tiny_config, tmp_path / "run", "auto", max_steps=6, save_every=3, resume="auto")
    assert resumed.step == 6
    straight = _run(tiny_config, tmp_path / "straight", "fp32", max_steps=6, save_every=3)
    assert straight.step == 6 and _curve(tmp_path / "run") == _curve(tmp_path / "straight")


def test_the_real_measurement_picks_one_and_leaves_no_gradients(tiny_config):
    from onebert.train.distributed import DistContext

    torch.manual_seed(0)
    model = BertForPreTraining(tiny_config)
    data = SyntheticBatches(tiny_config.vocab_size, 24, 4, seed=0)
    task = PretrainingTask(tiny_config, data, 4)
    batch = next(iter(task.train_batches()))
    rng = torch.get_rng_state()
    chosen, note = training_precision.measure(task, model, batch, CPU, DistContext())
    assert chosen in ("fp32", "bf16") and note.startswith("auto: the faster here")
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(p.grad is None for p in model.parameters())
