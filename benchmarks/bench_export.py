"""Inference speed of an exported model: PyTorch (onebert) vs onnxruntime vs OpenVINO, same inputs.

    python benchmarks/bench_export.py --model DIR [--batch-sizes 1 32] [--repeats 30]

The inputs are real sentences (MRPC training pairs' first sentences from ../shared/data, or any
one-per-line --texts file), tokenised with the model's tokenizer and padded to each batch's longest,
as a server would batch them. Each runtime gets the same batches; after warm-up, every batch is
timed `repeats` times and the median per-batch latency is reported, with sentences/s from it.
All runtimes use the same number of threads (--threads, default: the cores torch sees).
OpenVINO runs twice: f32 (what the equality check uses) and its CPU default, which is bf16 on
processors with avx512_bf16/AMX.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from onebert.infer import export
from onebert.tokenizer import Tokenizer

REPO = Path(__file__).resolve().parents[1]

MRPC_TRAIN = REPO.parent / "shared" / "data" / "mrpc" / "train.tsv"


def read_texts(path: Path | None, limit: int) -> list[str]:
    if path is not None:
        return [line.rstrip("\n") for line in path.read_text(encoding="utf-8").splitlines() if line.strip()][:limit]
    rows = MRPC_TRAIN.read_text(encoding="utf-8-sig").splitlines()[1:]
    return [row.split("\t")[3] for row in rows[:limit]]


def batches(tokenizer: Tokenizer, texts: list[str], batch_size: int, count: int) -> list[dict[str, np.ndarray]]:
    out = []
    for i in range(count):
        chunk = texts[i * batch_size:(i + 1) * batch_size]
        encoded = tokenizer(chunk, max_length=128, return_offsets_mapping=False, return_word_ids=False)
        out.append({k: v.numpy() for k, v in encoded.items()})
    return out


def time_interleaved(runtimes: dict, inputs: list[dict[str, np.ndarray]], repeats: int,
                     warmup: int = 3) -> dict[str, list[float]]:
    """Per-batch latencies; runtimes take turns batch by batch, so a change in machine load
    (the machine is shared) falls on all of them alike rather than on whichever ran last."""
    for run in runtimes.values():
        for _ in range(warmup):
            run(inputs[0])
    times: dict[str, list[float]] = {name: [] for name in runtimes}
    for _ in range(repeats):
        for batch in inputs:
            for name, run in runtimes.items():
                start = time.perf_counter()
                run(batch)
                times[name].append(time.perf_counter() - start)
    return times


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--texts", type=Path, default=None, help="one text per line (default: MRPC train)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--batches", type=int, default=4, help="distinct batches per batch size")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    model = export.load_model(args.model)
    tokenizer = Tokenizer.from_pretrained(args.model)
    texts = read_texts(args.texts, max(args.batch_sizes) * args.batches)
    names = export.output_names(model)

    def torch_run(batch):
        with torch.inference_mode():
            out = model(**{k: torch.from_numpy(v) for k, v in batch.items()})
        return {n: out[n] for n in names}

    runtimes = {"pytorch (onebert)": torch_run}
    with tempfile.TemporaryDirectory() as tmp:
        onnx_path = export.export_onnx(model, Path(tmp) / "model.onnx")
        try:
            runtimes["onnxruntime"] = export.onnxruntime_runner(onnx_path, threads=args.threads)
        except ImportError:
            print("onnxruntime not installed: skipped")
        try:
            os.environ.setdefault("OV_CPU_THREADS_NUM", str(args.threads))
            runtimes["openvino f32"] = export.openvino_runner(onnx_path, "f32")
            runtimes["openvino default (bf16 where supported)"] = export.openvino_runner(onnx_path, None)
        except ImportError:
            print("openvino not installed: skipped")

        results = []
        print(f"model {args.model}: {type(model).__name__}, {model.num_parameters() / 1e6:.1f}M parameters; "
              f"{args.threads} threads; {platform.machine()}; load average before: {os.getloadavg()[0]:.1f}")
        print(f"{'batch':>5} {'mean len':>8}  {'runtime':<42} {'median ms':>10} {'sentences/s':>12} {'vs pytorch':>10}")
        for batch_size in args.batch_sizes:
            inputs = batches(tokenizer, texts, batch_size, args.batches)
            mean_len = float(np.mean([b["attention_mask"].sum(1).mean() for b in inputs]))
            base = None
            times = time_interleaved(runtimes, inputs, args.repeats)
            for name in runtimes:
                median = statistics.median(times[name])
                base = base or median
                results.append({"batch_size": batch_size, "mean_tokens": mean_len, "runtime": name,
                                "median_ms": median * 1e3, "sentences_per_s": batch_size / median,
                                "speedup_vs_pytorch": base / median})
                print(f"{batch_size:>5} {mean_len:>8.1f}  {name:<42} {median * 1e3:>10.2f} "
                      f"{batch_size / median:>12.1f} {base / median:>9.2f}x")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
