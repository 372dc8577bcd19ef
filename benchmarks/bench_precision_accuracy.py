"""Task scores of fine-tuned models on every inference runtime and precision: what bf16 and int8 cost.

    python benchmarks/bench_precision_accuracy.py --sst2 RUN/best --mrpc RUN/best --conll RUN/best \
        [--variants torch:fp32 torch:bf16 onnxruntime:fp32 onnxruntime:int8 openvino:fp32 openvino:bf16] \
        [--json out.json]

Each model is evaluated on its whole dev/validation split from ../shared/data (SST-2 dev accuracy,
MRPC dev F1 and accuracy, CoNLL-2003 validation entity F1) through `Predictor` with the variant's
runtime and precision, exactly as `onebert evaluate --runtime R --precision P` does; the table gives
each score and its difference to torch fp32 in points, and the evaluation's wall time (model
loaded; reading, encoding, prediction and scoring timed). Variants this machine cannot run (no
native bf16, OpenVINO not installed) are reported as skipped with the reason.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
TASKS = {"sst2": (DATA / "sst2" / "dev.tsv", ("accuracy",)), "mrpc": (DATA / "mrpc" / "dev.tsv", ("f1", "accuracy")),
         "conll": (DATA / "conll2003" / "valid.txt", ("f1",))}
DEFAULT_VARIANTS = ["torch:fp32", "torch:bf16", "onnxruntime:fp32", "onnxruntime:int8", "openvino:fp32",
                    "openvino:bf16"]


def read_examples(spec, path: Path):
    from onebert.cli.commands.evaluate import read_labelled

    args = argparse.Namespace(format="auto", label_names=None, text_column=None, text_pair_column=None,
                              label_column=None)
    return read_labelled(spec, str(path), args)


def evaluate(model_dir: str, data: Path, runtime: str, precision: str, batch_size: int) -> tuple[dict, float]:
    from onebert.infer.predictor import Predictor

    predictor = Predictor.load(model_dir, runtime=runtime, precision=precision, batch_size=batch_size)
    start = time.perf_counter()
    examples = read_examples(predictor.spec, data)
    metrics, _ = predictor.evaluate(examples)
    return metrics, time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    from onebert.autotune import cpu_model
    from onebert.errors import OneBertError

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    for task in TASKS:
        parser.add_argument(f"--{task}", metavar="DIR", help=f"model fine-tuned on {task}")
    parser.add_argument("--variants", nargs="+", default=DEFAULT_VARIANTS, metavar="RUNTIME:PRECISION")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"CPU {cpu_model()}; {args.threads} threads; torch {torch.__version__}; {platform.machine()}; "
          f"LD_PRELOAD={os.environ.get('LD_PRELOAD', '')!r}")
    rows = []
    for task, (data, metrics) in TASKS.items():
        model_dir = getattr(args, task)
        if not model_dir:
            continue
        reference = None
        for variant in args.variants:
            runtime, precision = variant.split(":")
            try:
                scores, seconds = evaluate(model_dir, data, runtime, precision, args.batch_size)
            except OneBertError as exc:
                print(f"{task:<6} {variant:<18} skipped: {exc}")
                rows.append({"task": task, "variant": variant, "skipped": str(exc)})
                continue
            values = {m: float(scores[m]) * (100 if float(scores[m]) <= 1.0 else 1) for m in metrics}
            reference = reference or values
            delta = {m: values[m] - reference[m] for m in metrics}
            rows.append({"task": task, "variant": variant, "scores": values, "delta_points": delta,
                         "seconds": seconds})
            shown = "  ".join(f"{m} {values[m]:6.2f} ({delta[m]:+.2f})" for m in metrics)
            print(f"{task:<6} {variant:<18} {shown}  {seconds:6.1f} s", flush=True)
    if args.json:
        args.json.write_text(json.dumps({"cpu": cpu_model(), "threads": args.threads, "rows": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
