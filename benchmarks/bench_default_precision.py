"""Is the default precision ever the slower one? Every preset, training and inference, default vs fp32.

    python -m benchmarks.bench_default_precision [--presets tiny mini small medium base] [--batch 32] \
        [--seq 128] [--steps 5] [--json out.json]

Training: per preset a BertForPreTraining (30,522-token vocabulary) and one pretraining batch of the
given shape (lengths spread over [seq/2, seq], 15% of tokens masked, NSP labels). The default is
what `--precision auto` resolves to on this machine, decided by the trainer's own code
(`onebert.train.precision`: on a native-bf16 CPU the measured faster of fp32 and bf16, remembered
in the cache); then fp32 and the default take turns for `--steps` optimizer steps each (forward,
backward, AdamW), and the medians give sequences/s. Inference: the engine `--runtime auto
--precision auto` picks for a sequence-classification head of the preset (`onebert.infer.engines.select`,
as predict does, batch 64) against torch fp32, batches of the same shape. Each process-wide
decision is taken in a fresh cache directory (ONEBERT_CACHE_DIR of this run), so the benchmark
measures the decision too rather than reading an old one.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch


def pretraining_batch(config, batch: int, seq: int, seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    lengths = torch.randint(seq // 2, seq + 1, (batch,), generator=generator)
    lengths[0] = seq
    mask = (torch.arange(seq)[None, :] < lengths[:, None]).long()
    ids = torch.randint(1000, config.vocab_size, (batch, seq), generator=generator) * mask
    chosen = (torch.rand(batch, seq, generator=generator) < 0.15) & mask.bool()
    labels = torch.where(chosen, ids, torch.full_like(ids, -100))
    return {"input_ids": torch.where(chosen, torch.full_like(ids, 103), ids), "attention_mask": mask,
            "token_type_ids": (torch.arange(seq)[None, :] >= (lengths[:, None] // 2)).long() * mask,
            "labels": labels, "next_sentence_label": torch.randint(0, 2, (batch,), generator=generator)}


def training_rows(preset: str, batch: int, seq: int, steps: int) -> dict:
    from onebert import runtime
    from onebert.model import BertForPreTraining
    from onebert.model.config import BertConfig
    from onebert.train.distributed import DistContext
    from onebert.train.optim import build_optimizer
    from onebert.train.precision import choose_training_precision, measure
    from onebert.train.pretraining import PretrainingTask
    from onebert.train.step import step_totals

    config = BertConfig.from_preset(preset, vocab_size=30522)
    torch.manual_seed(0)
    model = BertForPreTraining(config).train()
    optimizer = build_optimizer(model, 1e-4, 0.01, (0.9, 0.999), 1e-6)
    task = PretrainingTask(config, None, batch)
    data = pretraining_batch(config, batch, seq)
    cpu = torch.device("cpu")
    default, must_measure = choose_training_precision("auto", cpu)
    if must_measure:
        default, _ = measure(task, model, data, cpu, DistContext())
    _, _, totals = step_totals(task, [data], DistContext(), cpu)

    def step(precision: str) -> float:
        start = time.perf_counter()
        with runtime.autocast(cpu, precision):
            loss, _ = task.loss(model, data, totals)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return time.perf_counter() - start

    step("fp32"), step(default)
    times: dict[str, list[float]] = {"fp32": [], "default": []}
    for _ in range(steps):
        times["fp32"].append(step("fp32"))
        times["default"].append(step(default))
    fp32, chosen = statistics.median(times["fp32"]), statistics.median(times["default"])
    return {"preset": preset, "kind": "training", "default": default, "fp32_seq_s": batch / fp32,
            "default_seq_s": batch / chosen, "ratio": fp32 / chosen}


def inference_rows(preset: str, batch: int, seq: int, steps: int) -> dict:
    from onebert.infer import engines
    from onebert.model import BertForSequenceClassification
    from onebert.model.config import BertConfig

    config = BertConfig.from_preset(preset, vocab_size=30522, num_labels=2)
    torch.manual_seed(0)
    model = BertForSequenceClassification(config).eval()
    cpu = torch.device("cpu")
    default = engines.select(model, cpu, runtime="auto", precision="auto", batch_size=batch, length=seq)
    reference = engines.Engine(model, "torch", "fp32")
    data = engines.sample_batch(config, batch, seq)

    def call(engine) -> float:
        start = time.perf_counter()
        with torch.inference_mode(), engines.autocast(engine.runtime, cpu, engine.precision):
            engine.model(**data)
        return time.perf_counter() - start

    call(reference), call(default)
    times: dict[str, list[float]] = {"fp32": [], "default": []}
    for _ in range(steps):
        times["fp32"].append(call(reference))
        times["default"].append(call(default))
    fp32, chosen = statistics.median(times["fp32"]), statistics.median(times["default"])
    return {"preset": preset, "kind": "inference", "default": f"{default.runtime} {default.precision}",
            "fp32_seq_s": batch / fp32, "default_seq_s": batch / chosen, "ratio": fp32 / chosen}


def main(argv: list[str] | None = None) -> int:
    from onebert.autotune import cpu_model

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--presets", nargs="+", default=["tiny", "mini", "small", "medium", "base"])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--inference-batch", type=int, default=64)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--inference-seq", type=int, default=64)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    os.environ["ONEBERT_CACHE_DIR"] = tempfile.mkdtemp(prefix="onebert-bench-cache-")
    print(f"CPU {cpu_model()}; {torch.get_num_threads()} threads; torch {torch.__version__}; "
          f"LD_PRELOAD={os.environ.get('LD_PRELOAD', '')!r}")
    print(f"{'preset':<7} {'kind':<10} {'default':<18} {'fp32 seq/s':>11} {'default seq/s':>14} {'ratio':>6}")
    rows = []
    for preset in args.presets:
        for row in (training_rows(preset, args.batch, args.seq, args.steps),
                    inference_rows(preset, args.inference_batch, args.inference_seq, args.steps)):
            rows.append(row)
            print(f"{row['preset']:<7} {row['kind']:<10} {row['default']:<18} {row['fp32_seq_s']:>11.1f} "
                  f"{row['default_seq_s']:>14.1f} {row['ratio']:>5.2f}x", flush=True)
    if args.json:
        args.json.write_text(json.dumps({"cpu": cpu_model(), "threads": torch.get_num_threads(), "rows": rows},
                                        indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
