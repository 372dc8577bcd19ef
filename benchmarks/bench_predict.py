"""Whole `onebert predict` commands vs OpenVINO running the model's ONNX export, on a file of sentences.

    python -m benchmarks.bench_predict --model /tmp/ft/sst2/best --texts /tmp/ft/data/sst2-20k.txt \
        --threads 2 --repeats 3 --variant default= --variant fp32="--precision fp32" \
        --variant int8="--precision int8" [--json results.json] [--openvino-process]

What a user waits for, not a kernel: each onebert variant is one `python -m onebert predict --model M
--input TEXTS --output FILE FLAGS...` subprocess, timed by wall clock from start to exit (interpreter
start, imports, model loading, reading, tokenisation, inference, writing the JSON lines); beside it
the report shows predict's own clock (its stderr summary: reading to the written file), so the rest is
start-up and model loading. predict's default batch is 64: a variant with --batch-size 32 uses the
OpenVINO script's batches. The OpenVINO contender is what a user would script in Python around the ONNX export
(`onebert.infer.export.export_onnx`): the same onebert Tokenizer (truncation to the model's
max_seq_length), sentences sorted by length, batches of 32 padded to their longest, softmax, the
same JSON lines written to a file; its clock covers tokenisation to the written file. Compiling the
model (`core.compile_model` on the .onnx) is timed apart and reported beside it (`compile_s`); with
--openvino-process the same script also runs as its own subprocess, timed start to exit like
onebert predict, so process start and imports are paid on both sides. OpenVINO runs twice: its CPU
default inference precision (bf16 on processors with avx512_bf16/AMX, which the header prints) and
f32. Ratios are speeds relative to OpenVINO default (above 1: faster than OpenVINO).

Fairness: every contender gets the same threads (OMP_NUM_THREADS, MKL_NUM_THREADS, RAYON_NUM_THREADS
for the tokenizer in the environment; OpenVINO's INFERENCE_NUM_THREADS; onebert's --threads when the
CLI has one), the same environment (LD_PRELOAD inherited: --allocator auto preloads tcmalloc for
the whole benchmark, as the `onebert` console command does for itself; TBB_ENABLE_SANITIZERS=1 so that
OpenVINO survives it, see `thread_env`) and the same input file.
Contenders take turns round-robin, the first of each round rotating, so a change in machine load
falls on all of them. A variant whose flags the CLI refuses is reported as failed with the CLI's
error line, and not run again. Each output is checked against OpenVINO f32's labels (agreement).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parents[1]
OV_BATCH_SIZE = 32
OV_PRECISIONS = {"openvino default": None, "openvino f32": "f32"}
BASELINE = "openvino default"


@dataclass
class Contender:
    """One thing to time: `run(repeat)` returns a result dict with at least seconds (or error)."""

    name: str
    kind: str  # "onebert", "openvino" or "openvino-process"
    run: Callable[[int], dict[str, Any]]
    flags: str = ""
    results: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None


# ---------------------------------------------------------------------- options and environment


def parse_variant(text: str) -> tuple[str, list[str]]:
    """NAME=FLAGS (FLAGS split as a shell would; empty for the CLI's defaults)."""
    name, sep, flags = text.partition("=")
    if not sep or not name.strip():
        raise argparse.ArgumentTypeError(f"--variant wants NAME=FLAGS (e.g. fp32='--precision fp32'), got {text!r}")
    return name.strip(), shlex.split(flags)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, required=True, help="fine-tuned classification model (or run) directory")
    parser.add_argument("--texts", type=Path, required=True, help="one sentence per line")
    parser.add_argument("--variant", type=parse_variant, action="append", default=None, metavar="NAME=FLAGS",
                        help="an onebert predict flag set (repeatable; default: default=)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--repeats", type=int, default=3, help="rounds; every contender runs once per round")
    parser.add_argument("--allocator", choices=("auto", "tcmalloc", "system", "inherit"), default="auto",
                        help="auto: tcmalloc when installed (as the onebert command runs); "
                             "inherit: LD_PRELOAD as given")
    parser.add_argument("--openvino-process", action="store_true",
                        help="also time the OpenVINO script as its own process, start to exit")
    parser.add_argument("--no-openvino", action="store_true", help="onebert variants only (no ratios)")
    parser.add_argument("--json", type=Path, default=None, help="also write header and results here")
    parser.add_argument("--keep", type=Path, default=None, help="keep the ONNX file and the outputs in this directory")
    parser.add_argument("--ov-worker", nargs=3, metavar=("ONNX", "PRECISION", "OUTPUT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.threads < 1 or args.repeats < 1:
        parser.error("--threads and --repeats must be positive")
    args.variant = args.variant or [("default", [])]
    names = [name for name, _ in args.variant]
    if len(set(names)) != len(names) or set(names) & set(OV_PRECISIONS):
        parser.error(f"--variant names must be distinct and not {', '.join(OV_PRECISIONS)}")
    return args


def thread_env(threads: int, base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment every contender runs in: thread counts fixed, this checkout's onebert first.

    TBB_ENABLE_SANITIZERS=1: with tcmalloc (or jemalloc, mimalloc) in LD_PRELOAD, OpenVINO's
    `compile_model` aborts with "double free or corruption" (measured here: openvino 2026.4, gperftools
    2.10), because oneTBB dlopens libtbbbind with RTLD_DEEPBIND and hwloc then frees with glibc what
    the preloaded malloc allocated (uxlfoundation/oneTBB#1645, openvinotoolkit/openvino#29025); the
    variable makes oneTBB load it without RTLD_DEEPBIND. torch does not use TBB, so onebert is unaffected.
    """
    env = dict(os.environ if base is None else base)
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "RAYON_NUM_THREADS"):
        env[name] = str(threads)
    env.setdefault("TBB_ENABLE_SANITIZERS", "1")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    return env


def machine_header(args: argparse.Namespace, texts: list[str]) -> dict[str, Any]:
    from benchmarks.measure import allocator, cpu_model

    versions = {}
    for module in ("torch", "openvino", "onnxruntime", "tokenizers"):
        try:
            versions[module] = __import__(module).__version__
        except ImportError:
            versions[module] = None
    return {"cpu": cpu_model(), "logical_cpus": os.cpu_count(), "python": platform.python_version(), **versions,
            "threads": args.threads, "allocator": allocator(), "LD_PRELOAD": os.environ.get("LD_PRELOAD", ""),
            "tcmalloc": "tcmalloc" in os.environ.get("LD_PRELOAD", ""),
            "TBB_ENABLE_SANITIZERS": os.environ.get("TBB_ENABLE_SANITIZERS"), "model": str(args.model),
            "texts": str(args.texts), "sentences": len(texts), "repeats": args.repeats,
            "load_average_before": os.getloadavg()[0]}


# ---------------------------------------------------------------------- the OpenVINO script


def read_lines(path: Path) -> list[str]:
    """Every line is one input, as `onebert predict` reads a text file (line N answers line N)."""
    from onebert.tasks.base import text_lines

    return text_lines(path)


def model_settings(model_dir: Path) -> tuple[int, list[str]]:
    """max_seq_length and the label names (in id order), from the fine-tuned model's config.json."""
    config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    max_length = int((config.get("onebert") or {}).get("max_seq_length", 128))
    id2label = config.get("id2label") or {}
    return max_length, [id2label[str(i)] for i in range(len(id2label))]


def compile_openvino(onnx_path: Path, precision: str | None, threads: int):
    import openvino as ov

    config: dict[str, Any] = {"INFERENCE_NUM_THREADS": threads}
    if precision:
        config["INFERENCE_PRECISION_HINT"] = precision
    return ov.Core().compile_model(str(onnx_path), "CPU", config)


def openvino_predict(compiled, tokenizer, texts: list[str], max_length: int, labels: list[str],
                     batch_size: int = OV_BATCH_SIZE) -> list[dict[str, Any]]:
    """What a user scripts: tokenise, sort by length, pad each batch to its longest, infer, softmax."""
    import numpy as np

    encoded = tokenizer(texts, max_length=max_length, padding=False, return_tensors=None)
    ids, types = encoded["input_ids"], encoded["token_type_ids"]
    order = sorted(range(len(texts)), key=lambda i: -len(ids[i]))
    request = compiled.create_infer_request()
    logits_out = compiled.outputs[0]
    probabilities = np.zeros((len(texts), len(labels)), dtype=np.float32)
    for start in range(0, len(order), batch_size):
        rows = order[start:start + batch_size]
        width = len(ids[rows[0]])
        batch = {name: np.zeros((len(rows), width), dtype=np.int64)
                 for name in ("input_ids", "attention_mask", "token_type_ids")}
        for j, i in enumerate(rows):
            n = len(ids[i])
            batch["input_ids"][j, :n] = ids[i]
            batch["token_type_ids"][j, :n] = types[i]
            batch["attention_mask"][j, :n] = 1
        logits = np.asarray(request.infer(batch)[logits_out], dtype=np.float32)
        exp = np.exp(logits - logits.max(axis=1, keepdims=True))
        probabilities[rows] = exp / exp.sum(axis=1, keepdims=True)
    best = probabilities.argmax(axis=1)
    return [{"label": labels[k], "score": float(p[k]), "scores": dict(zip(labels, map(float, p)))}
            for k, p in zip(best, probabilities)]


def write_json_lines(path: Path, records: list[dict[str, Any]]) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")


def ov_worker(args: argparse.Namespace) -> int:
    """--openvino-process: the OpenVINO script as a process of its own (imports and compile included)."""
    from onebert.tokenizer import Tokenizer

    onnx_path, precision, output = args.ov_worker
    model_dir = resolve_model(args.model)
    max_length, labels = model_settings(model_dir)
    compiled = compile_openvino(Path(onnx_path), None if precision == "default" else precision, args.threads)
    records = openvino_predict(compiled, Tokenizer.from_pretrained(model_dir), read_lines(args.texts),
                               max_length, labels)
    write_json_lines(Path(output), records)
    return 0


def resolve_model(path: Path) -> Path:
    from onebert.infer.predictor import resolve_model_dir

    return resolve_model_dir(path)


# ---------------------------------------------------------------------- contenders


def cli_has_threads(env: dict[str, str]) -> bool:
    """Whether this checkout's `onebert predict` takes --threads (then it gets the same count)."""
    help_text = subprocess.run([sys.executable, "-m", "onebert", "predict", "--help"], env=env,
                               capture_output=True, text=True).stdout
    return "--threads" in help_text


def last_error_line(stderr: str) -> str:
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    errors = [line for line in lines if "error" in line.lower()]
    return (errors or lines or ["(no output)"])[-1]


def onebert_contender(name: str, flags: list[str], args, env, work: Path, threads_flag: bool) -> Contender:
    if threads_flag and "--threads" not in flags:
        flags = [*flags, "--threads", str(args.threads)]

    def run(repeat: int) -> dict[str, Any]:
        output = work / f"{name}.jsonl"
        output.unlink(missing_ok=True)
        command = [sys.executable, "-m", "onebert", "predict", "--model", str(args.model), "--input",
                   str(args.texts), "--output", str(output), *flags]
        start = time.perf_counter()
        done = subprocess.run(command, env=env, capture_output=True, text=True)
        seconds = time.perf_counter() - start
        if done.returncode != 0:
            return {"error": f"exit {done.returncode}: {last_error_line(done.stderr)}"}
        # predict's own clock (reading to written file; no start-up, imports or model loading)
        inside = re.search(r"predictions in ([0-9.]+)s", done.stderr)
        return {"seconds": seconds, "output": output, "inside_s": float(inside.group(1)) if inside else None}

    return Contender(name, "onebert", run, flags=shlex.join(flags))


def openvino_contenders(args, env, work: Path, onnx_path: Path) -> list[Contender]:
    from onebert.tokenizer import Tokenizer

    model_dir = resolve_model(args.model)
    max_length, labels = model_settings(model_dir)
    tokenizer = Tokenizer.from_pretrained(model_dir)
    texts = read_lines(args.texts)
    contenders = []
    for name, precision in OV_PRECISIONS.items():
        def run(repeat: int, name=name, precision=precision) -> dict[str, Any]:
            output = work / f"{name.replace(' ', '_')}.jsonl"
            start = time.perf_counter()
            compiled = compile_openvino(onnx_path, precision, args.threads)
            compile_s = time.perf_counter() - start
            start = time.perf_counter()
            write_json_lines(output, openvino_predict(compiled, tokenizer, texts, max_length, labels))
            seconds = time.perf_counter() - start
            hint = compiled.get_property("INFERENCE_PRECISION_HINT")
            hint = hint.to_string() if hasattr(hint, "to_string") else str(hint)
            return {"seconds": seconds, "compile_s": compile_s, "precision": hint, "output": output}

        hint = f"INFERENCE_PRECISION_HINT={precision or '(default)'}"
        contenders.append(Contender(name, "openvino", run, flags=hint))
        if args.openvino_process:
            contenders.append(ov_process_contender(f"{name} (process)", precision, args, env, work, onnx_path))
    return contenders


def ov_process_contender(name: str, precision: str | None, args, env, work: Path, onnx_path: Path) -> Contender:
    def run(repeat: int) -> dict[str, Any]:
        output = work / f"{name.replace(' ', '_').replace('(', '').replace(')', '')}.jsonl"
        command = [sys.executable, "-m", "benchmarks.bench_predict", "--model", str(args.model), "--texts",
                   str(args.texts), "--threads", str(args.threads), "--allocator", "inherit",
                   "--ov-worker", str(onnx_path), precision or "default", str(output)]
        start = time.perf_counter()
        done = subprocess.run(command, env=env, capture_output=True, text=True)
        seconds = time.perf_counter() - start
        if done.returncode != 0:
            return {"error": f"exit {done.returncode}: {last_error_line(done.stderr)}"}
        return {"seconds": seconds, "output": output}

    return Contender(name, "openvino-process", run, flags="start to exit")


# ---------------------------------------------------------------------- running and reporting


def round_robin(contenders: list[Contender], repeats: int) -> None:
    """Every round runs each contender once, the first one rotating; a failed contender is not run again."""
    for repeat in range(repeats):
        shift = repeat % len(contenders)
        for contender in contenders[shift:] + contenders[:shift]:
            if contender.error is not None:
                continue
            result = contender.run(repeat)
            if "error" in result:
                contender.error = result["error"]
                print(f"  round {repeat + 1}: {contender.name}: FAILED {contender.error}", flush=True)
                continue
            contender.results.append(result)
            print(f"  round {repeat + 1}: {contender.name}: {result['seconds']:.2f}s", flush=True)


def output_labels(path: Path) -> list[str]:
    return [json.loads(line)["label"] for line in path.read_text(encoding="utf-8").splitlines()]


def summarise(contenders: list[Contender], sentences: int) -> list[dict[str, Any]]:
    """Median seconds, sentences/s, speed relative to OpenVINO default, label agreement with OpenVINO f32."""
    by_name = {c.name: c for c in contenders}
    reference = by_name.get("openvino f32")
    ref_labels = output_labels(reference.results[-1]["output"]) if reference and reference.results else None
    base = by_name.get(BASELINE)
    base_median = statistics.median(r["seconds"] for r in base.results) if base and base.results else None
    rows = []
    for c in contenders:
        row: dict[str, Any] = {"name": c.name, "kind": c.kind, "flags": c.flags, "error": c.error,
                               "seconds": [r["seconds"] for r in c.results]}
        if c.results:
            median = statistics.median(row["seconds"])
            row.update(median_s=median, sentences_per_s=sentences / median,
                       speed_vs_openvino_default=base_median / median if base_median else None)
            if c.results[0].get("inside_s") is not None:
                row["inside_s"] = statistics.median(r["inside_s"] for r in c.results)
            if "compile_s" in c.results[0]:
                row.update(compile_s=statistics.median(r["compile_s"] for r in c.results),
                           precision=c.results[0]["precision"])
            if ref_labels is not None:
                labels = output_labels(c.results[-1]["output"])
                same = sum(a == b for a, b in zip(labels, ref_labels))
                row["agreement_with_openvino_f32"] = same / len(ref_labels) if len(labels) == len(ref_labels) else None
        rows.append(row)
    return rows


def print_report(header: dict[str, Any], rows: list[dict[str, Any]]) -> None:
    print(f"\n{header['sentences']:,} sentences from {header['texts']}; model {header['model']}")
    print(f"cpu {header['cpu']} ({header['logical_cpus']} logical); threads {header['threads']}; "
          f"allocator {header['allocator']}; torch {header['torch']}, openvino {header['openvino']}, "
          f"onnxruntime {header['onnxruntime']}, tokenizers {header['tokenizers']}; python {header['python']}; "
          f"onnx export {header.get('export_s', float('nan')):.1f}s; "
          f"load average before {header['load_average_before']:.2f}")
    print(f"{'contender':<28} {'median s':>9} {'sentences/s':>12} {'vs ov default':>13} {'agree f32':>9}  "
          f"{'runs s':<22} flags")
    for row in rows:
        if row["error"] and not row["seconds"]:
            print(f"{row['name']:<28} {'FAILED':>9}  {row['error']}  [{row['flags']}]")
            continue
        ratio = row.get("speed_vs_openvino_default")
        agree = row.get("agreement_with_openvino_f32")
        runs = " ".join(f"{s:.2f}" for s in row["seconds"])
        extra = f"  (compile {row['compile_s']:.2f}s, {row['precision']})" if "compile_s" in row else ""
        extra += f"  (predict's own clock {row['inside_s']:.2f}s)" if "inside_s" in row else ""
        print(f"{row['name']:<28} {row['median_s']:>9.2f} {row['sentences_per_s']:>12.1f} "
              f"{(f'{ratio:.2f}x' if ratio else '-'):>13} {(f'{agree:.2%}' if agree is not None else '-'):>9}  "
              f"{runs:<22} {row['flags']}{extra}")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.ov_worker:
        return ov_worker(args)
    from benchmarks.measure import reexec_with_allocator

    reexec_with_allocator(args.allocator, "benchmarks.bench_predict", argv)
    env = thread_env(args.threads)
    os.environ.update({k: env[k] for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "RAYON_NUM_THREADS",
                                           "TBB_ENABLE_SANITIZERS")})
    import torch

    from onebert.infer import export

    torch.set_num_threads(args.threads)
    texts = read_lines(args.texts)
    header = machine_header(args, texts)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.keep or tmp)
        work.mkdir(parents=True, exist_ok=True)
        threads_flag = cli_has_threads(env)
        header["onebert_threads_flag"] = threads_flag
        contenders = [onebert_contender(name, flags, args, env, work, threads_flag) for name, flags in args.variant]
        if not args.no_openvino:
            start = time.perf_counter()
            onnx_path = export.export_onnx(export.load_model(resolve_model(args.model)), work / "model.onnx")
            header["export_s"] = time.perf_counter() - start
            contenders += openvino_contenders(args, env, work, onnx_path)
        print(f"{len(contenders)} contenders x {args.repeats} rounds on {len(texts):,} sentences", flush=True)
        round_robin(contenders, args.repeats)
        rows = summarise(contenders, len(texts))
    print_report(header, rows)
    if args.json:
        args.json.write_text(json.dumps({"header": header, "results": rows}, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
