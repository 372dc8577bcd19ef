"""onebert against transformers, same machine, same process, same inputs: the speed table.

    python -m benchmarks.bench_speed                                  # every case (slow on 2 cores)
    python -m benchmarks.bench_speed --configs mini --seqs 128 --dtypes fp32 --repeats 3   # quick look

For each case (workload x config x sequence length x dtype) both models get the same weights,
the same optimizer settings and the same batches, built from real length distributions
(`benchmarks.lengths`). After warm-up the two sides are timed alternately, the order flipping
every repeat, with a GEMM-peak measurement at the start of each repeat; the table reports medians
over repeats and the median of the per-repeat ratios, so load from other processes on a shared
machine hits both sides alike. Peak memory is measured per side in a fresh process
(`benchmarks.measure`). Results go to benchmarks/results/<time>.json and a markdown table.

Workloads (default padding in brackets, as the reference pipeline for that data pads):
  pretrain-bert    BertForPreTraining step (forward + backward + AdamW) on the lengths BERT's own
                   instance creation makes: mostly full, little padding [max_length]
  pretrain-lines   the same step on WikiText paragraphs, one per example, as run_mlm.py
                   --line_by_line feeds them: realistic padding [longest]
  classify-sst2    BertForSequenceClassification forward under inference_mode, SST-2 sentences [longest]
  classify-lines   the same on WikiText paragraphs [longest]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
DEFAULT_DATA = REPO.parent / "shared" / "data"

# workload: (task, length distribution, default padding). The padding is what the reference
# pipeline for that data does: BERT's instance files (create_pretraining_data.py, NVIDIA's HDF5)
# store every instance padded to max_seq_length; transformers' run_mlm.py --line_by_line and
# DataCollatorWithPadding pad each batch to its longest sequence.
WORKLOADS = {
    "pretrain-bert": ("pretrain", "bert", "max_length"),
    "pretrain-lines": ("pretrain", "lines", "longest"),
    "classify-sst2": ("classify", "sst2", "longest"),
    "classify-lines": ("classify", "lines", "longest"),
}
DTYPES = ("fp32", "bf16")
SIDES = ("onebert", "transformers")
# Tokens per training batch (batch size x sequence length) per model size: enough for efficient
# GEMMs, small enough that a base-size step stays within seconds on a 2-core machine. At least 4
# sequences, so that padding to the longest in a batch still means something; inference (forward
# only, a third of the work) gets 4 times the budget.
DEFAULT_TOKENS = {"tiny": 4096, "mini": 4096, "small": 2048, "medium": 2048, "base": 1024, "large": 512}


@dataclass
class Case:
    workload: str
    config: str
    seq: int
    dtype: str
    batch_size: int
    padding: str
    compile: str
    batches: int = 3
    accumulation: int = 1
    seed: int = 0

    @property
    def task(self) -> str:
        return WORKLOADS[self.workload][0]

    @property
    def distribution(self) -> str:
        return WORKLOADS[self.workload][1]

    @property
    def name(self) -> str:
        return f"{self.workload} {self.config} seq{self.seq} {self.dtype}"


@dataclass
class CaseResult:
    case: Case
    mean_length: float
    mean_width: float
    useful_flops_per_batch: float
    reference_flops_per_batch: float = float("nan")
    time_s: dict[str, list[float]] = field(default_factory=lambda: {s: [] for s in SIDES})
    seq_per_s: dict[str, list[float]] = field(default_factory=lambda: {s: [] for s in SIDES})
    mfu: dict[str, list[float]] = field(default_factory=lambda: {s: [] for s in SIDES})
    cpu_s: dict[str, list[float]] = field(default_factory=lambda: {s: [] for s in SIDES})
    ratio: list[float] = field(default_factory=list)
    gemm_peak_flops: list[float] = field(default_factory=list)
    memory: dict[str, dict] = field(default_factory=dict)

    def median(self, values: list[float]) -> float:
        return statistics.median(values) if values else float("nan")

    def summary(self) -> dict:
        return {
            "onebert_seq_per_s": self.median(self.seq_per_s["onebert"]),
            "transformers_seq_per_s": self.median(self.seq_per_s["transformers"]),
            "ratio": self.median(self.ratio),
            "onebert_mfu": self.median(self.mfu["onebert"]),
            "transformers_mfu": self.median(self.mfu["transformers"]),
            "gemm_peak_gflops": self.median(self.gemm_peak_flops) / 1e9,
            # transformers' executed FLOPs / the useful ones: the speed-up skipping work alone gives,
            # i.e. onebert's ratio if both ran their GEMMs equally well
            "work_ratio": self.reference_flops_per_batch / self.useful_flops_per_batch,
        }


# ----------------------------------------------------------------------------- models


def _torch_dtype(name: str):
    import torch

    return {"fp32": torch.float32, "bf16": torch.bfloat16}[name]


def autocast(case: Case, device: str):
    import torch

    if case.dtype == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.split(":")[0], dtype=_torch_dtype(case.dtype))


def hf_config(config):
    import transformers

    fields = {k: v for k, v in config.to_dict().items() if k not in ("id2label", "label2id", "onebert")}
    return transformers.BertConfig(**fields, attn_implementation="sdpa")


def build_model(side: str, case: Case, device: str, weights_from=None):
    """One side's model for the case; transformers' copies `weights_from` (onebert's) when given."""
    import torch
    import transformers

    from onebert.model import BertForPreTraining, BertForSequenceClassification
    from onebert.model.config import BertConfig

    config = BertConfig.from_preset(case.config)
    torch.manual_seed(case.seed)
    if side == "onebert":
        model = (BertForPreTraining if case.task == "pretrain" else BertForSequenceClassification)(config)
    else:
        cls = transformers.BertForPreTraining if case.task == "pretrain" else transformers.BertForSequenceClassification
        model = cls(hf_config(config))
        if weights_from is not None:
            missing, unexpected = model.load_state_dict(weights_from.state_dict(), strict=False)
            left = [k for k in missing if "position_ids" not in k and k != "cls.predictions.decoder.bias"]
            if left or unexpected:
                raise RuntimeError(f"weights did not carry over to transformers: missing {left}, "
                                   f"unexpected {unexpected}")
    model.to(device)
    model.train(case.task == "pretrain")  # pretraining with dropout on both sides, as a real run
    return model


def make_optimizer(model, device: str):
    """The same AdamW on both sides: BERT's settings, fused kernel where torch has one, else foreach."""
    import torch

    try:
        return torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.01,
                                 fused=True)
    except (RuntimeError, TypeError):
        return torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.01,
                                 foreach=True)


def maybe_compile(model, side: str, case: Case):
    import torch

    if case.compile == "both" or case.compile == side:
        return torch.compile(model)
    return model


def make_step(side: str, case: Case, model, optimizer, device: str):
    """A closure running one step on a list of batches: forward + backward on each (gradient
    accumulation) then one optimizer step; or, for inference, a forward on each."""
    import torch

    if case.task == "pretrain":
        def train_step(batches):
            for batch in batches:
                with autocast(case, device):
                    loss = model(**batch.tensors).loss
                (loss / len(batches)).backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        return train_step

    def infer_step(batches):
        for batch in batches:
            inputs = {k: batch.tensors[k] for k in ("input_ids", "attention_mask", "token_type_ids")}
            with torch.inference_mode(), autocast(case, device):
                model(**inputs).logits

    return infer_step


def useful_flops(case: Case, batch) -> float:
    """The FLOPs the loss or the prediction needs, the numerator of MFU (same for both sides).

    Real tokens only (padding excluded); the MLM decoder at the masked positions only; and in
    the last layer, queries, output projection and feed-forward only where a head reads the
    result (masked tokens and [CLS] for pretraining, [CLS] for classification).
    """
    from onebert.model.config import BertConfig
    from onebert.model.flops import inference_flops, training_flops

    config = BertConfig.from_preset(case.config)
    lengths = batch.lengths.tolist()
    if case.task == "pretrain":
        return training_flops(config, lengths, batch.masked_tokens,
                              last_layer_tokens=batch.masked_tokens + len(lengths))
    return inference_flops(config, lengths, last_layer_tokens=len(lengths))


def reference_flops(case: Case, batch) -> float:
    """The FLOPs transformers executes on the batch: every padded position through every layer,
    and the MLM decoder at every position (it scores all of them, then the loss ignores most)."""
    from onebert.model.config import BertConfig
    from onebert.model.flops import inference_flops, training_flops

    config = BertConfig.from_preset(case.config)
    padded = [batch.width] * len(batch.lengths)
    if case.task == "pretrain":
        return training_flops(config, padded, batch.width * len(padded))
    return inference_flops(config, padded)


def build_batches(case: Case, data_dir: Path, device: str):
    from onebert.model.config import BertConfig

    from benchmarks.lengths import make_batches

    vocab = BertConfig.from_preset(case.config).vocab_size
    batches = make_batches(case.distribution, case.seq, case.batch_size, case.batches * case.accumulation, vocab,
                           case.task, case.padding, data_dir, case.seed)
    return [b.to(device) for b in batches]


# ----------------------------------------------------------------------------- timing


def run_case(case: Case, args) -> CaseResult:
    import torch

    from benchmarks.measure import gemm_peak_flops, synchronize

    device = args.device
    batches = build_batches(case, args.data, device)
    ours = build_model("onebert", case, device)
    theirs = build_model("transformers", case, device, weights_from=ours)
    steps = {}
    for side, model in (("onebert", ours), ("transformers", theirs)):
        optimizer = make_optimizer(model, device) if case.task == "pretrain" else None
        steps[side] = make_step(side, case, maybe_compile(model, side, case), optimizer, device)
    flops = [useful_flops(case, b) for b in batches]
    result = CaseResult(case, mean_length=float(sum(b.lengths.mean() for b in batches) / len(batches)),
                        mean_width=float(sum(b.width for b in batches) / len(batches)),
                        useful_flops_per_batch=sum(flops) / len(flops),
                        reference_flops_per_batch=sum(reference_flops(case, b) for b in batches) / len(batches))
    per_step = case.accumulation
    groups = [batches[i * per_step:(i + 1) * per_step] for i in range(len(batches) // per_step)]
    for side in SIDES:
        for i in range(args.warmup):
            steps[side](groups[i % len(groups)])
    synchronize(device)
    for repeat in range(args.repeats):
        peak = gemm_peak_flops(_torch_dtype(case.dtype), device)
        result.gemm_peak_flops.append(peak)
        elapsed = {side: 0.0 for side in SIDES}
        cpu = {side: 0.0 for side in SIDES}
        indices = [(repeat * args.steps + k) % len(groups) for k in range(args.steps)]
        for k, index in enumerate(indices):
            # Step by step, the order flipping each time: a burst of load from another process
            # lands on both sides rather than on one side's whole repeat.
            for side in SIDES if (repeat + k) % 2 == 0 else SIDES[::-1]:
                synchronize(device)
                start, start_cpu = time.perf_counter(), time.process_time()
                steps[side](groups[index])
                synchronize(device)
                elapsed[side] += time.perf_counter() - start
                cpu[side] += time.process_time() - start_cpu
        step_flops = sum(flops[i * per_step + j] for i in indices for j in range(per_step))
        for side in SIDES:
            result.time_s[side].append(elapsed[side] / args.steps)
            result.cpu_s[side].append(cpu[side] / args.steps)
            result.seq_per_s[side].append(args.steps * per_step * case.batch_size / elapsed[side])
            result.mfu[side].append(step_flops / elapsed[side] / peak)
        result.ratio.append(result.seq_per_s["onebert"][-1] / result.seq_per_s["transformers"][-1])
        print(f"  repeat {repeat + 1}/{args.repeats}: onebert {result.seq_per_s['onebert'][-1]:.2f} seq/s, "
              f"transformers {result.seq_per_s['transformers'][-1]:.2f} seq/s, ratio {result.ratio[-1]:.2f}, "
              f"GEMM peak {peak / 1e9:.0f} GFLOP/s", flush=True)
    del ours, theirs, steps
    torch.set_grad_enabled(True)
    return result


# ----------------------------------------------------------------------------- memory


def probe_memory(case: Case, side: str, device: str, data_dir: Path, steps: int = 3) -> dict:
    """Runs in a fresh process: build one side, then the peak over its first steps."""
    import torch
    import transformers  # noqa: F401  (imported on both sides so library memory is equal)

    from benchmarks.measure import peak_rss_mib, reset_peak_rss, rss_mib, synchronize

    batches = build_batches(case, data_dir, device)
    model = build_model(side, case, device)
    optimizer = make_optimizer(model, device) if case.task == "pretrain" else None
    step = make_step(side, case, maybe_compile(model, side, case), optimizer, device)
    per_step = case.accumulation
    groups = [batches[i * per_step:(i + 1) * per_step] for i in range(len(batches) // per_step)]
    if case.compile in ("both", side):
        step(groups[0])  # compilation's own memory is not the step's
    synchronize(device)
    out: dict = {"method": "cuda max_memory_allocated" if device.startswith("cuda") else "VmHWM after clear_refs"}
    # The reset comes after building the model and before the first step, so the optimizer's
    # state and every activation count while the model's construction does not.
    if device.startswith("cuda"):
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    else:
        base = rss_mib()
        if not reset_peak_rss():
            out["method"] = "ru_maxrss (lifetime peak: could not reset the high-water mark)"
    for i in range(steps):
        step(groups[i % len(groups)])
    synchronize(device)
    if device.startswith("cuda"):
        peak = torch.cuda.max_memory_allocated()
        out.update(before_step_mib=base / 2**20, peak_mib=peak / 2**20, step_mib=(peak - base) / 2**20)
    else:
        peak = peak_rss_mib()
        out.update(before_step_mib=base, peak_mib=peak, step_mib=peak - base)
    return out


def measure_memory(case: Case, args) -> dict[str, dict]:
    results = {}
    for side in SIDES:
        command = [sys.executable, "-m", "benchmarks.bench_speed", "--probe-memory", side,
                   "--probe-case", json.dumps(asdict(case)), "--device", args.device, "--data", str(args.data)]
        done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, env=os.environ.copy())
        if done.returncode != 0:
            results[side] = {"error": done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "failed"}
            continue
        results[side] = json.loads(done.stdout.strip().splitlines()[-1])
    return results


# ----------------------------------------------------------------------------- output


def markdown_table(results: list[CaseResult]) -> str:
    head = ("| workload | config | seq | dtype | seqs/step | padding | mean len / padded width | onebert seq/s | "
            "transformers seq/s | speed-up | work ratio | MFU onebert | MFU transformers | GEMM peak GFLOP/s | "
            "peak RSS onebert / transformers MiB (step part) |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in results:
        s = r.summary()
        mem = r.memory
        if mem and all("peak_mib" in mem.get(side, {}) for side in SIDES):
            memory = (f"{mem['onebert']['peak_mib']:.0f} / {mem['transformers']['peak_mib']:.0f} "
                      f"({mem['onebert']['step_mib']:.0f} / {mem['transformers']['step_mib']:.0f})")
        else:
            memory = "not measured" if not mem else "error"
        c = r.case
        per_step = f"{c.batch_size}" if c.accumulation == 1 else f"{c.batch_size}x{c.accumulation}"
        lines.append(
            f"| {c.workload} | {c.config} | {c.seq} | {c.dtype} | {per_step} | {c.padding} | {r.mean_length:.0f} / "
            f"{r.mean_width:.0f} | {s['onebert_seq_per_s']:.2f} | {s['transformers_seq_per_s']:.2f} | "
            f"{s['ratio']:.2f}x | {s['work_ratio']:.2f}x | {100 * s['onebert_mfu']:.0f}% | {100 * s['transformers_mfu']:.0f}% | "
            f"{s['gemm_peak_gflops']:.0f} | {memory} |")
    return "\n".join(lines)


def git_commit() -> str | None:
    done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
    return done.stdout.strip() or None


# ----------------------------------------------------------------------------- command line


def _csv(kind):
    return lambda text: [kind(x) for x in text.split(",") if x]


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--workloads", type=_csv(str),
                        default=["pretrain-lines", "pretrain-bert", "classify-sst2", "classify-lines"],
                        help=f"comma list of {', '.join(WORKLOADS)}")
    parser.add_argument("--configs", type=_csv(str), default=["mini", "base"], help="model presets")
    parser.add_argument("--seqs", type=_csv(int), default=[128, 512], help="maximum sequence lengths")
    parser.add_argument("--dtypes", type=_csv(str), default=["fp32", "bf16"],
                        help="fp32, or bf16 (torch.autocast on both sides)")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="sequences per batch (default: a token budget per config, see DEFAULT_TOKENS)")
    parser.add_argument("--padding", choices=("longest", "max_length"), default=None,
                        help="pad each batch to its longest sequence or to the sequence length (default: "
                             "per workload, as its reference pipeline does; see WORKLOADS)")
    parser.add_argument("--accumulation", type=int, default=1,
                        help="pretraining: micro-batches (forward + backward each) per optimizer step")
    parser.add_argument("--steps", type=int, default=2, help="timed steps per side per repeat")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per side first")
    parser.add_argument("--batches", type=int, default=3, help="distinct batches, cycled")
    parser.add_argument("--compile", choices=("none", "onebert", "both"), default="none",
                        help="torch.compile the onebert model, or both models")
    parser.add_argument("--no-memory", action="store_true", help="skip the per-side peak memory processes")
    parser.add_argument("--allocator", choices=("auto", "tcmalloc", "system"), default="auto",
                        help="auto: tcmalloc when installed (as the onebert command runs); one process, "
                             "so both sides always share the allocator")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="the shared data folder")
    parser.add_argument("--output", type=Path, default=None, help="JSON result file (default benchmarks/results/)")
    parser.add_argument("--probe-memory", choices=SIDES, help=argparse.SUPPRESS)
    parser.add_argument("--probe-case", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def plan(args) -> list[Case]:
    cases = []
    for workload in args.workloads:
        if workload not in WORKLOADS:
            raise SystemExit(f"--workloads: unknown workload {workload!r}; choose from {', '.join(WORKLOADS)}")
        for config in args.configs:
            for seq in args.seqs:
                if WORKLOADS[workload][1] == "sst2" and seq > 128 and args.padding != "max_length":
                    # SST-2 sentences are at most ~70 tokens: padded to the longest, any longer
                    # maximum is the seq-128 case again.
                    print(f"skipping {workload} at seq {seq}: the same batches as at seq 128")
                    continue
                for dtype in args.dtypes:
                    if dtype not in DTYPES:
                        raise SystemExit(f"--dtypes: unknown dtype {dtype!r}; choose from {', '.join(DTYPES)}")
                    budget = DEFAULT_TOKENS.get(config, 1024) * (1 if WORKLOADS[workload][0] == "pretrain" else 4)
                    batch = args.batch_size or max(4, budget // seq)
                    padding = args.padding or WORKLOADS[workload][2]
                    accumulation = args.accumulation if WORKLOADS[workload][0] == "pretrain" else 1
                    cases.append(Case(workload, config, seq, dtype, batch, padding, args.compile,
                                      batches=args.batches, accumulation=accumulation))
    return cases


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.probe_memory:
        case = Case(**json.loads(args.probe_case))
        print(json.dumps(probe_memory(case, args.probe_memory, args.device, args.data)))
        return 0
    from benchmarks.measure import reexec_with_allocator

    reexec_with_allocator(args.allocator, "benchmarks.bench_speed", argv)

    from benchmarks.measure import machine_info

    cases = plan(args)
    info = machine_info(args.device)
    print(json.dumps(info, indent=1), flush=True)
    results = []
    for case in cases:
        print(f"{case.name} (batch {case.batch_size} x {case.accumulation} per step, padding {case.padding}, "
              f"compile {case.compile})", flush=True)
        result = run_case(case, args)
        if not args.no_memory:
            result.memory = measure_memory(case, args)
        results.append(result)
        print(markdown_table([result]).splitlines()[-1], flush=True)
    table = markdown_table(results)
    print("\n" + table)
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    output = args.output or RESULTS / f"speed-{stamp}.json"
    payload = {
        "command": "python -m benchmarks.bench_speed " + " ".join(argv),
        "date": stamp, "git_commit": git_commit(), "machine": info,
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()
                     if not k.startswith("probe")},
        "cases": [{**asdict(r), "summary": r.summary()} for r in results],
        "table": table,
    }
    from onebert.io_utils import atomic_write_text

    atomic_write_text(output, json.dumps(payload, indent=1))
    print(f"\nwrote {output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
