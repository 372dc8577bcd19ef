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


def test_auto_precision_is_fp32_for_inference_on_a_cpu_and_bf16_autocast_for_training_where_native(monkeypatch):
    import torch

    from onebert import runtime

    cpu = torch.device("cpu")
    monkeypatch.setattr(runtime, "cpu_has_native_bf16", lambda: True)
    assert runtime.resolve_precision("auto", cpu) == "bf16"
    assert runtime.resolve_precision("auto", cpu, "inference") == "fp32"
    assert runtime.resolve_precision("bf16", cpu, "inference") == "bf16"
    monkeypatch.setattr(runtime, "cpu_has_native_bf16", lambda: False)
    assert runtime.resolve_precision("auto", cpu) == "fp32"


# ----------------------------------------------------------------------------- the MFU denominator

CPU = torch.device("cpu")


@pytest.fixture
def one_thread():
    """One torch thread: a busy machine then slows a probe by its share of one core, not by a straggler thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def fake_rates(monkeypatch):
    """Products that take 2 n^3 / rate[n] seconds without running: the size choice, made deterministic."""
    rates: dict[int, float] = {}
    monkeypatch.setattr(runtime, "_warm_up", lambda a, b, device, seconds: None)
    monkeypatch.setattr(runtime, "_best_matmul_time",
                        lambda a, b, device, repeats: 2.0 * a.shape[0]**3 / rates[a.shape[0]])
    monkeypatch.setattr(torch, "randn", lambda *shape, device=None: torch.empty(*shape, device=device))
    return rates


def test_the_peak_is_the_best_of_several_sizes_not_the_first_that_takes_long_enough(fake_rates):
    """An AMX CPU: slow at 1024, fastest at 2048. One size gave 1.0 or 2.4 TFLOP/s by which size was probed."""
    fake_rates.update({1024: 1.0e12, 2048: 2.4e12, 4096: 2.0e12, 8192: 2.4e12})
    peak = runtime.measure_peak(CPU, "bf16")
    assert list(peak.per_size) == [1024, 2048, 4096]  # 8192 would take 0.46 s at the best rate: over 0.25 s
    assert (peak.flops, peak.size) == (2.4e12, 2048)
    assert runtime.measure_peak_flops(CPU, "bf16") == 2.4e12


def test_1024_and_2048_are_always_timed_and_larger_sizes_only_within_the_budget(fake_rates):
    """So that load, which slows the first size, does not change which sizes count (it did at 2 threads)."""
    fake_rates.update({1024: 1.0e11, 2048: 1.0e11})  # 2048 takes 0.17 s; 4096 would take 1.4 s: not timed
    assert list(runtime.measure_peak(CPU, "fp32").per_size) == [1024, 2048]
    fake_rates.update({1024: 3.0e10, 2048: 1.0e11})  # a busy machine: 2048 predicted at 0.57 s, timed all the same
    assert list(runtime.measure_peak(CPU, "fp32").per_size) == [1024, 2048]
    fake_rates.update({1024: 1.0e10})  # a slow device: 2048 would take 1.7 s, over 1 s
    assert list(runtime.measure_peak(CPU, "fp32").per_size) == [1024]


def test_measuring_the_peak_does_not_advance_the_training_rng():
    """A resumed run draws the same masks and dropout as the uninterrupted one only if the probe draws nothing."""
    torch.manual_seed(0)
    state = torch.get_rng_state()
    peak = runtime.measure_peak(CPU, "fp32", repeats=1)
    assert torch.equal(torch.get_rng_state(), state)
    assert tuple(peak.per_size) == runtime.PEAK_SIZES[:len(peak.per_size)]  # how many: load decides (5x: one)
    # The best of sizes bounds the largest size's figure: arithmetic, which no load can move.
    assert peak.flops == max(peak.per_size.values()) >= peak.per_size[max(peak.per_size)]


def _native_bf16_cpu() -> bool:
    """AVX512-BF16 or AMX: bf16 products at >= 2x the fp32 rate. (oneDNN's own check also says yes to plain
    AVX-512, where bf16 is emulated and no faster than fp32, so it cannot decide this test.)"""
    return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()


@pytest.mark.skipif(not _native_bf16_cpu(), reason="needs a CPU with AVX512-BF16 or AMX")
def test_two_probes_rank_bf16_above_fp32_alike(one_thread):
    """Stability that does not flake under load: ranks, not times.

    The figures themselves move with whatever else runs, so no tolerance on them is safe. What is asserted
    is the order (bf16 >= 2x fp32 on these CPUs; 2.2x measured on an EPYC with AVX512-BF16, more with AMX)
    in two probes taken back to back, fp32 and bf16 interleaved. Load that stays the same slows both sides
    of a probe alike (one thread: by the test's share of one core) and keeps the order; to swap it, the
    share would have to drop by more than 2x between two sub-probes 0.2 s apart and stay down through
    every one of the bf16 side's timed products, the best of which counts. (One size, 1024, keeps the test
    short; that the best is the maximum over several sizes is arithmetic, tested above.)
    """
    probes = [{p: runtime.measure_peak(CPU, p, sizes=(1024,)) for p in ("fp32", "bf16")} for _ in range(2)]
    for probe in probes:
        assert probe["bf16"].flops > probe["fp32"].flops, {p: m.per_size for p, m in probe.items()}
