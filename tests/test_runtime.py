"""onebert.runtime: the one device resolver of training and inference (cuda:N, xpu, mps, 'auto')."""

from __future__ import annotations

import pytest
import torch

from onebert import runtime
from onebert.errors import OneBertError


@pytest.fixture
def two_fake_gpus(monkeypatch):
    """CUDA with two devices, without a GPU: what resolve_device asks of torch.cuda."""
    chosen: list[int] = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "set_device", chosen.append)
    return chosen


def test_an_indexed_cuda_device_is_accepted_for_inference_without_changing_the_current_device(two_fake_gpus):
    assert runtime.resolve_device("cuda:1") == torch.device("cuda", 1)
    assert runtime.resolve_device("cuda") == torch.device("cuda", 0)
    assert two_fake_gpus == []  # only training (a local rank) makes a device current


def test_training_takes_the_local_rank_gpu_and_makes_it_current(two_fake_gpus):
    assert runtime.resolve_device("cuda", local_rank=1) == torch.device("cuda", 1)
    assert two_fake_gpus == [1]


def test_a_device_index_past_the_machine_is_one_error_line(two_fake_gpus):
    with pytest.raises(OneBertError, match=r"--device cuda:2: this machine has 2 cuda device\(s\)"):
        runtime.resolve_device("cuda:2")


@pytest.mark.parametrize("name", ["cuda:x", "cpu:0", "gpu"])
def test_an_unreadable_device_is_refused_by_name(name):
    with pytest.raises(OneBertError, match=rf"--device: .*'{name}'"):
        runtime.resolve_device(name)


def test_auto_prefers_mps_over_cpu_for_inference_too(monkeypatch):
    """The embedder's own resolver used to know only cuda and cpu."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(runtime, "_xpu_available", lambda: False)
    monkeypatch.setattr(runtime, "_mps_available", lambda: True)
    assert runtime.resolve_device(None) == torch.device("mps")
    assert runtime.resolve_device("auto") == torch.device("mps")


def test_inference_modules_have_no_device_resolver_of_their_own():
    import onebert.infer.embedder
    import onebert.infer.predictor

    assert not hasattr(onebert.infer.embedder, "resolve_device")
    assert not hasattr(onebert.infer.predictor, "resolve_device")
