"""AdamW parameter groups as in BERT, and the learning-rate schedule at its key steps."""

from __future__ import annotations

import math

import pytest
import torch

from onebert.errors import OneBertError
from onebert.model import BertForPreTraining
from onebert.train.optim import LRSchedule, build_optimizer, parameter_groups


def test_no_weight_decay_on_biases_and_layernorm_decay_on_everything_else(tiny_config):
    model = BertForPreTraining(tiny_config)
    decay, no_decay = parameter_groups(model, weight_decay=0.01)
    assert decay["weight_decay"] == 0.01 and no_decay["weight_decay"] == 0.0
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for p in decay["params"]}
    undecayed = {names[id(p)] for p in no_decay["params"]}
    assert all(n.endswith("bias") or "LayerNorm" in n for n in undecayed)
    assert not any(n.endswith("bias") or "LayerNorm" in n for n in decayed)
    assert "bert.embeddings.word_embeddings.weight" in decayed  # embeddings decay, as in the original
    assert "cls.predictions.bias" in undecayed and "bert.embeddings.LayerNorm.weight" in undecayed
    # every trainable parameter is in exactly one group, the tied decoder weight once
    assert len(decayed) + len(undecayed) == len(names) == len({id(p) for p in model.parameters()})


def test_optimizer_uses_a_fused_or_foreach_adamw(tiny_config):
    optimizer = build_optimizer(BertForPreTraining(tiny_config), lr=1e-3, weight_decay=0.01)
    assert isinstance(optimizer, torch.optim.AdamW)
    assert optimizer.defaults["fused"] or optimizer.defaults["foreach"]
    assert optimizer.defaults["eps"] == 1e-6


def test_linear_schedule_warms_up_then_decays_to_zero():
    s = LRSchedule(peak_lr=1e-3, warmup_steps=10, total_steps=110)
    assert s.lr(1) == pytest.approx(1e-4)
    assert s.lr(5) == pytest.approx(5e-4)
    assert s.lr(10) == pytest.approx(1e-3)
    assert s.lr(60) == pytest.approx(5e-4)
    assert s.lr(110) == pytest.approx(0.0)
    assert all(s.lr(u) >= s.lr(u + 1) for u in range(10, 110))


def test_cosine_and_constant_schedules():
    cosine = LRSchedule(peak_lr=1.0, warmup_steps=0, total_steps=100, kind="cosine")
    assert cosine.lr(0) == pytest.approx(1.0) and cosine.lr(50) == pytest.approx(0.5)
    assert cosine.lr(25) == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)))
    assert cosine.lr(100) == pytest.approx(0.0, abs=1e-12)
    constant = LRSchedule(peak_lr=2.0, warmup_steps=4, total_steps=100, kind="constant")
    assert constant.lr(2) == pytest.approx(1.0) and constant.lr(4) == constant.lr(99) == 2.0


def test_refit_keeps_the_rate_continuous_and_ends_at_the_new_total():
    s = LRSchedule(peak_lr=1.0, warmup_steps=10, total_steps=1000)
    before = s.lr(200)
    s.refit(200, 400)
    assert s.lr(200) == pytest.approx(before)
    assert s.lr(300) == pytest.approx(before / 2)
    assert s.lr(400) == 0.0
    s.refit(300, 500)  # a second estimate moves the end again, still without a jump
    assert s.lr(300) == pytest.approx(before / 2) and s.lr(500) == 0.0


def test_refit_during_warmup_rederives_a_ratio_warmup():
    s = LRSchedule(peak_lr=1.0, warmup_steps=60_000, total_steps=1_000_000)
    s.refit(5, 1000, warmup_ratio=0.1)
    assert s.warmup_steps == 100 and s.total_steps == 1000 and s.lr(100) == 1.0


def test_schedule_state_round_trips():
    s = LRSchedule(peak_lr=1.0, warmup_steps=10, total_steps=1000)
    s.refit(200, 400)
    t = LRSchedule(peak_lr=1.0, warmup_steps=10, total_steps=1000)
    t.load_state_dict(s.state_dict())
    assert [t.lr(u) for u in range(0, 401, 7)] == [s.lr(u) for u in range(0, 401, 7)]


def test_unknown_schedule_is_a_user_error():
    with pytest.raises(OneBertError, match="unknown schedule"):
        LRSchedule(peak_lr=1.0, warmup_steps=0, total_steps=10, kind="step")
