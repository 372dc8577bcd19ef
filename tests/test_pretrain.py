"""The training loop on pretraining: accumulation equals one big batch, exact resume, time budget, CLI."""

from __future__ import annotations

import contextlib
import json
import sys
import types

import pytest
import torch
from kill_helpers import wait_for_checkpoint
from synthetic_pretraining import SyntheticBatches, prepare_small_corpus

from onebert.errors import OneBertError
from onebert.model import BertForPreTraining
from onebert.train.distributed import DistContext
from onebert.train.step import accumulate_gradients, step_totals
from onebert.train.trainer import TrainConfig, train
from onebert.train.metrics_log import read_metrics
from onebert.train.pretraining import PretrainingTask

CPU = torch.device("cpu")


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py: one torch thread


def _model(config, seed=0):
    torch.manual_seed(seed)
    return BertForPreTraining(config)


def _grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _run(config, run_dir, batch_size=4, max_steps=4, seed=0, data_seed=0, crash_at_batch=None, **options):
    data = SyntheticBatches(config.vocab_size, 24, batch_size, seed=data_seed, crash_at_batch=crash_at_batch)
    task = PretrainingTask(config, data, batch_size, eval_data=data.eval_batches())
    settings = dict(output_dir=str(run_dir), max_steps=max_steps, lr=1e-3, warmup_steps=2, log_every=1,
                    device="cpu", precision="fp32", measure_mfu=False, seed=seed)
    settings.update(options)
    return train(task, _model(config, seed), TrainConfig(**settings), options={"model_config": "test"})


def _train_curve(run_dir):
    return [(r["step"], r["loss"], r["mlm_accuracy"]) for r in read_metrics(run_dir / "metrics.jsonl")
            if r["split"] == "train"]


def _final_state(run_dir):
    from safetensors.torch import load_file

    return load_file(run_dir / "final" / "model.safetensors")


def test_two_accumulated_micro_batches_give_the_gradient_of_one_double_batch(tiny_config):
    data = SyntheticBatches(tiny_config.vocab_size, 24, batch_size=2)
    micro = [data.batch(0), data.batch(1)]
    big = SyntheticBatches(tiny_config.vocab_size, 24, batch_size=4).batch(0)
    task = PretrainingTask(tiny_config, data, batch_size=2)
    masked = [task.count(b)["masked"] for b in micro]
    assert masked[0] != masked[1]  # the case a per-micro-batch mean gets wrong
    scaler, ctx = torch.amp.GradScaler("cpu", enabled=False), DistContext()

    one, two = _model(tiny_config), _model(tiny_config)
    _, _, totals = step_totals(task, [big], ctx, CPU)
    accumulate_gradients(task, one, [big], totals, CPU, contextlib.nullcontext(), scaler, ctx)
    _, _, totals = step_totals(task, micro, ctx, CPU)
    accumulate_gradients(task, two, micro, totals, CPU, contextlib.nullcontext(), scaler, ctx)
    expected, got = _grads(one), _grads(two)
    assert expected.keys() == got.keys() and len(got) > 20
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-5, atol=1e-7, msg=name)

    # The naive way (mean per micro-batch, averaged over micro-batches) is measurably different,
    # so the comparison above can fail.
    naive = _model(tiny_config)
    for batch in micro:
        (naive(**batch).loss / len(micro)).backward()
    word = "bert.embeddings.word_embeddings.weight"
    assert not torch.allclose(_grads(naive)[word], expected[word], rtol=1e-3, atol=1e-6)


def test_accumulation_gives_the_same_training_run_as_a_double_batch(tiny_config, tmp_path):
    _run(tiny_config, tmp_path / "big", batch_size=4, max_steps=3)
    _run(tiny_config, tmp_path / "accum", batch_size=2, grad_accum=2, max_steps=3)
    big, accum = _train_curve(tmp_path / "big"), _train_curve(tmp_path / "accum")
    assert [s for s, *_ in big] == [1, 2, 3]
    for (s1, loss1, acc1), (s2, loss2, acc2) in zip(big, accum):
        assert loss2 == pytest.approx(loss1, rel=1e-5) and acc2 == acc1
    expected, got = _final_state(tmp_path / "big"), _final_state(tmp_path / "accum")
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-4, atol=1e-6, msg=name)


def test_interrupted_and_resumed_run_equals_the_uninterrupted_run(tiny_config, tmp_path):
    straight = _run(tiny_config, tmp_path / "straight", max_steps=6, save_every=3)
    with pytest.raises(RuntimeError, match="simulated crash"):  # dies during step 5, after the step-3 checkpoint
        _run(tiny_config, tmp_path / "resumed", max_steps=6, save_every=3, crash_at_batch=4)
    assert [r["step"] for r in read_metrics(tmp_path / "resumed" / "metrics.jsonl") if r["split"] == "train"] == [1, 2, 3, 4]
    resumed = _run(tiny_config, tmp_path / "resumed", max_steps=6, save_every=3, resume="auto", seed=123)
    assert resumed.step == straight.step == 6
    assert _train_curve(tmp_path / "resumed") == _train_curve(tmp_path / "straight")  # bit-identical on CPU
    expected, got = _final_state(tmp_path / "straight"), _final_state(tmp_path / "resumed")
    assert all(torch.equal(got[name], expected[name]) for name in expected)


def test_ctrl_c_saves_a_checkpoint_at_a_step_boundary_and_resume_continues_exactly(tiny_config, tmp_path):
    import os
    import signal

    class CtrlC(SyntheticBatches):
        def batch(self, position):
            if position == 3:  # while step 4's batches are being fetched
                os.kill(os.getpid(), signal.SIGINT)
            return super().batch(position)

    _run(tiny_config, tmp_path / "straight", max_steps=6)
    handler_before = signal.getsignal(signal.SIGINT)  # SIG_IGN in a background job, else Python's default
    data = CtrlC(tiny_config.vocab_size, 24, 4)
    settings = dict(max_steps=6, lr=1e-3, warmup_steps=2, log_every=1, device="cpu", precision="fp32",
                    measure_mfu=False)
    result = train(PretrainingTask(tiny_config, data, 4), _model(tiny_config),
                   TrainConfig(output_dir=str(tmp_path / "stopped"), **settings))
    assert result.interrupted and result.step == 4 and not (tmp_path / "stopped" / "final").exists()
    assert signal.getsignal(signal.SIGINT) is handler_before  # the handler is given back
    _run(tiny_config, tmp_path / "stopped", max_steps=6, resume="auto")
    assert _train_curve(tmp_path / "stopped") == _train_curve(tmp_path / "straight")


def test_dropout_randomness_is_restored_on_resume(tmp_path):
    from onebert.model.config import BertConfig

    config = BertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                        intermediate_size=37, max_position_embeddings=64)  # dropout 0.1 on
    _run(config, tmp_path / "straight", max_steps=4, save_every=2)
    with pytest.raises(RuntimeError):
        _run(config, tmp_path / "resumed", max_steps=4, save_every=2, crash_at_batch=3)
    _run(config, tmp_path / "resumed", max_steps=4, save_every=2, resume="auto")
    assert _train_curve(tmp_path / "resumed") == _train_curve(tmp_path / "straight")


def test_resuming_with_another_model_shape_is_a_one_line_error(tiny_config, tmp_path):
    import dataclasses

    _run(tiny_config, tmp_path, max_steps=1)
    wider = dataclasses.replace(tiny_config, intermediate_size=40)
    with pytest.raises(OneBertError, match="does not fit the model") as info:
        _run(wider, tmp_path, max_steps=2, resume="auto")
    assert "\n" not in str(info.value)


def test_existing_run_without_resume_is_refused_and_left_untouched(tiny_config, tmp_path):
    _run(tiny_config, tmp_path, max_steps=2)
    before = (tmp_path / "metrics.jsonl").read_bytes()
    with pytest.raises(OneBertError, match="--resume"):
        _run(tiny_config, tmp_path, max_steps=2)
    assert (tmp_path / "metrics.jsonl").read_bytes() == before


def test_logged_metrics_and_evaluation(tiny_config, tmp_path):
    result = _run(tiny_config, tmp_path, max_steps=4, eval_every=2, log_every=2, measure_mfu=True)
    records = read_metrics(tmp_path / "metrics.jsonl")
    train_records = [r for r in records if r["split"] == "train"]
    evals = [r for r in records if r["split"] == "eval"]
    assert [r["step"] for r in train_records] == [2, 4] and [r["step"] for r in evals] == [2, 4]
    for key in ("loss", "mlm_loss", "mlm_accuracy", "nsp_loss", "nsp_accuracy", "lr", "grad_norm",
                "seq_per_s", "tokens_per_s", "mfu"):
        assert key in train_records[0], key
    assert 0 < train_records[0]["mfu"] < 1 and train_records[0]["tokens_per_s"] > train_records[0]["seq_per_s"]
    assert {"mlm_accuracy", "nsp_accuracy", "mlm_loss", "nsp_loss"} <= evals[0].keys()
    assert result.eval_metrics == {k: v for k, v in evals[-1].items() if k not in ("split", "step")}
    config_text = (tmp_path / "config.yaml").read_text()
    assert "precision: fp32" in config_text and "global_batch: 4" in config_text


def test_time_budget_ends_on_time_with_the_schedule_fitted_to_it(tiny_config, tmp_path):
    result = _run(tiny_config, tmp_path, max_steps=None, max_time=3.0, warmup_steps=None, warmup_ratio=0.1,
                  estimate_after=2)
    assert 2.5 < result.train_seconds < 6.0
    lrs = [r["lr"] for r in read_metrics(tmp_path / "metrics.jsonl") if r["split"] == "train"]
    assert len(lrs) == result.step > 10
    peak = max(lrs)
    assert peak == pytest.approx(1e-3, rel=0.05)  # warm-up reached the peak
    assert lrs[-1] < 0.2 * peak  # and the decay was fitted to end near zero at the deadline


def test_ipex_flag_calls_ipex_optimize_with_model_and_optimizer(tiny_config, tmp_path, monkeypatch):
    calls = []

    def optimize(model, optimizer=None, dtype=None):
        calls.append((type(model).__name__, type(optimizer).__name__, dtype))
        return model, optimizer

    monkeypatch.setitem(sys.modules, "intel_extension_for_pytorch",
                        types.SimpleNamespace(optimize=optimize, __version__="mock"))
    _run(tiny_config, tmp_path, max_steps=1, ipex=True)
    assert calls == [("BertForPreTraining", "AdamW", torch.float32)]


def test_ipex_flag_without_ipex_installed_is_a_one_line_error(tiny_config, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "intel_extension_for_pytorch", None)  # import raises ImportError
    with pytest.raises(OneBertError) as info:
        _run(tiny_config, tmp_path, max_steps=1, ipex=True)
    assert "intel_extension_for_pytorch" in str(info.value) and "\n" not in str(info.value)
    assert not (tmp_path / "checkpoints").exists()


def test_non_finite_steps_are_skipped_then_stop_the_run(tiny_config, tmp_path):
    class Poisoned(PretrainingTask):
        def loss(self, model, batch, totals):
            loss, stats = super().loss(model, batch, totals)
            return loss * float("nan"), stats

    data = SyntheticBatches(tiny_config.vocab_size, 24, 2)
    config = TrainConfig(output_dir=str(tmp_path), max_steps=10, device="cpu", precision="fp32",
                         measure_mfu=False, max_nonfinite=3)
    with pytest.raises(OneBertError, match="non-finite for 3 steps in a row"):
        train(Poisoned(tiny_config, data, 2), _model(tiny_config), config)


def test_bf16_autocast_trains_on_cpu(tiny_config, tmp_path):
    result = _run(tiny_config, tmp_path, max_steps=2, precision="bf16")
    assert result.step == 2 and json.loads((tmp_path / "final" / "config.json").read_text())["hidden_size"] == 32


# ----------------------------------------------------------------------------- the command line

@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    return prepare_small_corpus(tmp_path_factory.mktemp("prepared"))


def _pretrain_args(data, run_dir, *extra):
    return ["pretrain", "--data", str(data), "--model-config", "tiny", "--output", str(run_dir), "--batch-size", "8",
            "--lr", "1e-3", "--log-every", "1", "--precision", "fp32", "--device", "cpu", *map(str, extra)]


def test_cli_pretrain_then_transformers_loads_the_model_and_plot_writes_a_png(prepared, tmp_path, capsys):
    from onebert.cli import main

    run_dir = tmp_path / "run"
    assert main(_pretrain_args(prepared, run_dir, "--max-steps", 4, "--eval-every", 2, "--save-every", 2)) == 0
    out = capsys.readouterr().out
    assert "global batch = 8 per rank x 1 ranks x 1 accumulation = 8 sequences" in out and "held-out: MLM" in out
    final = run_dir / "final"
    assert {"config.json", "model.safetensors", "vocab.txt", "tokenizer.json"} <= {p.name for p in final.iterdir()}

    import transformers

    hf = transformers.AutoModelForPreTraining.from_pretrained(final)
    ours = BertForPreTraining.from_pretrained(final).eval()
    batch = next(iter(SyntheticBatches(hf.config.vocab_size, 20, 2)))
    with torch.no_grad():
        expected = hf(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                      token_type_ids=batch["token_type_ids"])
        got = ours(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
    mask = batch["attention_mask"].bool()
    torch.testing.assert_close(got.prediction_logits[mask], expected.prediction_logits[mask], rtol=1e-4, atol=1e-4)
    transformers.AutoTokenizer.from_pretrained(final)  # the tokenizer files travel with the model

    # the saved configuration works as a --config file
    from onebert.cli import build_parser, load_option_file

    _, subparsers = build_parser()
    assert load_option_file(str(run_dir / "config.yaml"), subparsers["pretrain"])["max_steps"] == 4

    assert main(["plot", str(run_dir), "--output", str(tmp_path / "curves.png")]) == 0
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_killed_at_random_moments_several_times_then_resumed_equals_the_uninterrupted_run(prepared, tmp_path):
    """kill -9 three times, each at a random moment after the run's newest checkpoint (mid-step or
    mid-save); each resume names the checkpoint it takes, loses at most the steps since the last
    complete one, and the end result is the uninterrupted run's, bit for bit."""
    import os
    import random
    import re
    import signal
    import subprocess
    import time

    from onebert.cli import main
    from onebert.train.checkpoint import list_checkpoints

    args = ("--max-steps", 60, "--save-every", 3, "--eval-every", 1000)
    assert main(_pretrain_args(prepared, tmp_path / "straight", *args)) == 0

    # unbuffered: the line naming the resumed checkpoint must reach the pipe before the kill
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.getcwd(), "PYTHONUNBUFFERED": "1"}
    killed = tmp_path / "killed"
    rng = random.Random()
    seed = rng.randrange(1 << 30)
    rng.seed(seed)
    complete_before_kill = 0
    for kill in range(3):
        resume = ("--resume",) if kill else ()
        process = subprocess.Popen([sys.executable, "-m", "onebert", *_pretrain_args(prepared, killed, *args, *resume)],
                                   env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        target = complete_before_kill + 3  # let the run save one more checkpoint, then kill it a moment later
        wait_for_checkpoint(process, killed, target)
        time.sleep(rng.uniform(0, 0.15))
        process.send_signal(signal.SIGKILL)
        out, _ = process.communicate()
        assert process.returncode == -signal.SIGKILL and not (killed / "final").exists(), f"seed {seed}"
        if kill:  # the resumed process said which checkpoint it continued from: the newest complete one
            resumed = re.search(r"step-(\d{8}) \(step (\d+)\)", out)
            assert resumed and int(resumed.group(2)) == complete_before_kill, (out[-1500:], seed)
        complete_before_kill = int(list_checkpoints(killed)[-1].name.split("-")[1])
        assert complete_before_kill >= target, f"seed {seed}"

    assert main(_pretrain_args(prepared, killed, *args, "--resume")) == 0
    assert _train_curve(killed) == _train_curve(tmp_path / "straight"), f"seed {seed}"
    expected, got = _final_state(tmp_path / "straight"), _final_state(killed)
    assert all(torch.equal(got[name], expected[name]) for name in expected), f"seed {seed}"


def _error_of(capsys, argv):
    from onebert.cli import main

    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err
    return err


def test_cli_bad_inputs_are_one_line_errors_and_write_nothing(prepared, tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert "no such data directory" in _error_of(capsys, _pretrain_args(tmp_path / "nowhere", run_dir, "--max-steps", 1))

    other_vocab = tmp_path / "other_vocab.json"
    other_vocab.write_text(json.dumps({"vocab_size": 30522, "hidden_size": 32, "num_hidden_layers": 1,
                                       "num_attention_heads": 2, "intermediate_size": 64}))
    argv = _pretrain_args(prepared, run_dir, "--max-steps", 1)
    argv[argv.index("tiny")] = str(other_vocab)
    err = _error_of(capsys, argv)
    vocab = json.loads((prepared / "metadata.json").read_text())["tokenizer"]["vocab_size"]
    assert f"vocab_size is 30522 but {prepared} was built with a vocabulary of {vocab} tokens" in err

    short = tmp_path / "short_positions.json"
    short.write_text(json.dumps({"vocab_size": vocab, "hidden_size": 32, "num_hidden_layers": 1,
                                 "num_attention_heads": 2, "intermediate_size": 64, "max_position_embeddings": 32}))
    argv = _pretrain_args(prepared, run_dir, "--max-steps", 1)
    argv[argv.index("tiny")] = str(short)
    assert "max_position_embeddings 32" in _error_of(capsys, argv)
    assert not run_dir.exists()


def test_cli_resume_from_a_corrupt_checkpoint_is_an_error_and_overwrites_nothing(prepared, tmp_path, capsys):
    from onebert.cli import main

    run_dir = tmp_path / "run"
    assert main(_pretrain_args(prepared, run_dir, "--max-steps", 2, "--save-every", 1, "--keep-last", 5)) == 0
    capsys.readouterr()
    newest = run_dir / "checkpoints" / "step-00000002"
    state = newest / "state.pt"
    state.write_bytes(state.read_bytes()[:-100])
    before = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    err = _error_of(capsys, _pretrain_args(prepared, run_dir, "--max-steps", 4, "--resume", str(newest)))
    assert "step-00000002" in err and "truncated" in err
    assert {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()} == before

    # auto-resume skips the damaged one, says so, and continues from step 1
    assert main(_pretrain_args(prepared, run_dir, "--max-steps", 3, "--resume", "auto")) == 0
    out = capsys.readouterr().out
    assert "skipping checkpoint" in out and "step-00000002" in out and "step-00000001 (step 1)" in out


def test_prefetched_batches_save_the_position_of_the_last_batch_consumed():
    import time

    from onebert.train.prefetch import PrefetchedBatches

    source = SyntheticBatches(99, 16, 2)
    prefetched = PrefetchedBatches(source, depth=4)
    stream = iter(prefetched)
    got = [next(stream) for _ in range(3)]
    time.sleep(0.2)  # let the thread run ahead
    assert source.position > 3 and prefetched.state_dict() == {"position": 3}
    resumed = PrefetchedBatches(SyntheticBatches(99, 16, 2), depth=4)
    resumed.load_state_dict(prefetched.state_dict())
    assert torch.equal(next(iter(resumed))["input_ids"], source.batch(3)["input_ids"])
    assert all(torch.equal(g["labels"], source.batch(i)["labels"]) for i, g in enumerate(got))

    failing = iter(PrefetchedBatches(SyntheticBatches(99, 16, 2, crash_at_batch=1)))
    next(failing)
    with pytest.raises(RuntimeError, match="simulated crash"):  # errors reach the training thread
        next(failing)
