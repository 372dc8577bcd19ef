"""Where a training step's time goes: torch.profiler over pretraining steps, grouped by kind of work.

    python -m benchmarks.profile_step [--preset base] [--batch 32] [--seq 128] [--precision bf16] [--steps 2]

A BertForPreTraining of the preset (30,522-token vocabulary) trains on one pretraining batch
(benchmarks.bench_default_precision.pretraining_batch: lengths over [seq/2, seq], 15% masked) with
AdamW; after two untimed steps, `--steps` steps run under torch.profiler (CPU activities). Each
operator's self CPU time is put in a group (matrix products, the casts autocast makes, LayerNorm,
GELU, softmax, dropout, the optimizer, embedding lookups, the rest) and the table gives each group's
share of the profiled time: what issue 14 asks to attack first is the largest non-matmul group.
"""

from __future__ import annotations

import argparse
import collections
import json
import time
from pathlib import Path

import torch

GROUPS = (
    ("matrix products", ("aten::mm", "aten::addmm", "aten::bmm", "aten::matmul", "aten::linear", "aten::baddbmm",
                         "mkldnn", "aten::_scaled_dot_product")),
    ("casts (autocast, .to)", ("aten::_to_copy", "aten::to", "aten::copy_", "aten::_autocast", "aten::clone")),
    ("LayerNorm", ("layer_norm",)),
    ("GELU", ("gelu",)),
    ("softmax", ("softmax",)),
    ("dropout", ("dropout", "bernoulli", "aten::rand", "aten::randint", "random_")),
    ("optimizer (AdamW)", ("_foreach", "adam", "aten::lerp", "aten::addcdiv", "aten::addcmul", "aten::sqrt")),
    ("embedding lookups", ("embedding", "index_select", "aten::index_add", "aten::index")),
    ("elementwise (add, mul, ...)", ("aten::add", "aten::mul", "aten::div", "aten::sub", "aten::where", "aten::fill",
                                     "aten::zero", "aten::masked", "aten::tanh", "aten::sum", "aten::cat")),
)


def group_of(name: str) -> str:
    lowered = name.lower()
    for group, keys in GROUPS:
        if any(key.lower() in lowered for key in keys):
            return group
    return "other"


def main(argv: list[str] | None = None) -> int:
    from torch.profiler import ProfilerActivity, profile

    from benchmarks.bench_default_precision import pretraining_batch
    from onebert import runtime
    from onebert.autotune import cpu_model
    from onebert.model import BertForPreTraining
    from onebert.model.config import BertConfig
    from onebert.train.distributed import DistContext
    from onebert.train.optim import build_optimizer
    from onebert.train.pretraining import PretrainingTask
    from onebert.train.step import step_totals

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="base")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--precision", default="bf16", choices=("fp32", "bf16"))
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--top", type=int, default=12, help="also list this many operators by self time")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)

    config = BertConfig.from_preset(args.preset, vocab_size=30522)
    torch.manual_seed(0)
    model = BertForPreTraining(config).train()
    optimizer = build_optimizer(model, 1e-4, 0.01, (0.9, 0.999), 1e-6)
    task = PretrainingTask(config, None, args.batch)
    batch = pretraining_batch(config, args.batch, args.seq)
    cpu = torch.device("cpu")
    _, _, totals = step_totals(task, [batch], DistContext(), cpu)

    def step() -> None:
        with runtime.autocast(cpu, args.precision):
            loss, _ = task.loss(model, batch, totals)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step(), step()
    start = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(args.steps):
            step()
    wall = (time.perf_counter() - start) / args.steps
    events = prof.key_averages()
    by_group: dict[str, float] = collections.defaultdict(float)
    for event in events:
        by_group[group_of(event.key)] += event.self_cpu_time_total
    total = sum(by_group.values())
    print(f"CPU {cpu_model()}; {torch.get_num_threads()} threads; torch {torch.__version__}; {args.preset} "
          f"batch {args.batch} x seq {args.seq}, {args.precision}; {wall:.2f} s per profiled step "
          f"({args.batch / wall:.2f} seq/s, profiler overhead included)")
    print(f"{'group':<30} {'share':>6}")
    rows = sorted(by_group.items(), key=lambda item: -item[1])
    for group, micros in rows:
        print(f"{group:<30} {100 * micros / total:5.1f}%")
    print(f"\ntop {args.top} operators by self CPU time:")
    for event in sorted(events, key=lambda e: -e.self_cpu_time_total)[:args.top]:
        print(f"  {event.key:<45} {100 * event.self_cpu_time_total / total:5.1f}%  calls {event.count}")
    if args.json:
        args.json.write_text(json.dumps({"cpu": cpu_model(), "preset": args.preset, "precision": args.precision,
                                         "seconds_per_step": wall, "shares": {g: m / total for g, m in rows}},
                                        indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
