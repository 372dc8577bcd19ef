"""`onebert info DIR`: what a model directory holds, without reading a line of code."""

from __future__ import annotations

import argparse
import json

from onebert.cli.options import model_or_run_dir

HELP = "print a model directory's config, parameter count, task and files"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", metavar="DIR", help="a model directory (config.json + weights), or a run directory (its best/, else final/)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    parser.add_argument("--peak", action="store_true",
                        help="also measure this machine's matmul peak, the MFU denominator of training on the auto "
                             "device, in fp32 and in the precision training picks there (1-3 s more)")


def _peaks() -> dict:
    """The matmul peak per precision training would use here, with its per-size figures (GFLOP/s)."""
    import torch

    from onebert import runtime

    device = runtime.resolve_device("auto")
    peaks = {"device": device.type, "threads": torch.get_num_threads() if device.type == "cpu" else None}
    for precision in dict.fromkeys(("fp32", runtime.resolve_precision("auto", device))):
        peak = runtime.measure_peak(device, precision)
        peaks[precision] = {"gflops": round(peak.flops / 1e9, 1),
                            "per_size": {size: round(flops / 1e9, 1) for size, flops in peak.per_size.items()}}
    return peaks


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from onebert.model.config import BertConfig
    from onebert.errors import OneBertError
    from onebert.model.weights import read_state_dict

    args.model = model_or_run_dir(args.model, "onebert info")
    directory = Path(args.model)
    config = BertConfig.load(directory)
    state, source = read_state_dict(directory)
    shapes = {k: list(v.shape) for k, v in state.items()}
    tied = "cls.predictions.decoder.weight"
    parameters = sum(v.numel() for k, v in state.items() if k != tied and not k.endswith("position_ids"))
    heads = sorted({k.split(".")[0] for k in state if not k.startswith(("bert.", "embeddings.", "encoder.", "pooler."))})
    if not shapes:
        raise OneBertError(f"{source}: holds no tensors")
    info = {
        "directory": str(directory),
        "architecture": (config.extra.get("architectures") or ["unknown"])[0],
        "task": config.onebert.get("task"),
        "labels": list(config.id2label.values()) if config.id2label else None,
        "parameters": parameters,
        "layers": config.num_hidden_layers, "hidden_size": config.hidden_size,
        "heads": config.num_attention_heads, "intermediate_size": config.intermediate_size,
        "vocab_size": config.vocab_size, "max_position_embeddings": config.max_position_embeddings,
        "weights_file": source.name, "weight_dtypes": sorted({str(v.dtype).replace("torch.", "") for k, v in state.items()
                                 if not k.endswith("position_ids")}),
        "head_modules": heads,
        "files": sorted(p.name for p in directory.iterdir() if p.is_file()),
    }
    info["measured_choices"] = _choices(config)
    if args.peak:
        info["peak_gflops"] = _peaks()
    if args.json:
        print(json.dumps(info))
        return 0
    width = max(len(k) for k in info)
    for key, value in info.items():
        if isinstance(value, int) and key == "parameters":
            value = f"{value:,} ({value / 1e6:.1f}M)"
        elif isinstance(value, list):
            value = ("; ".join if key == "measured_choices" else ", ".join)(map(str, value))
        elif key == "peak_gflops":
            value = _describe_peaks(value)
        print(f"{key:<{width}}  {value}")
    return 0


def _choices(config) -> list[str]:
    """What `--precision auto` / `--runtime auto` chose for models of this shape on this machine (onebert/autotune.py)."""
    from onebert.autotune import measured_choices

    shape = {"hidden": config.hidden_size, "layers": config.num_hidden_layers,
             "hidden_size": config.hidden_size, "num_hidden_layers": config.num_hidden_layers}
    found = []
    for key, entry in measured_choices():
        dims = {k: key.get(k) for k in shape if k in key}
        if not dims or any(value != shape[k] for k, value in dims.items()):
            continue
        shape_text = f"batch {key['batch']} x {key['length']}" if "batch" in key else "first batch"
        found.append(f"{key.get('purpose')} ({key.get('class')}, {shape_text}, {key.get('threads')} threads): "
                     f"{entry.get('name')}, measured {entry.get('measured', '?')}")
    return found or ["none yet (the first run with --precision/--runtime auto measures and remembers)"]


def _describe_peaks(peaks: dict) -> str:
    """'fp32 95.0, bf16 214.1 GFLOP/s on cpu, 1 thread(s) (best of sizes fp32 1024: 95.0, 2048: 91.2 | bf16 ...)'."""
    precisions = [p for p in peaks if p not in ("device", "threads")]
    where = peaks["device"] + (f", {peaks['threads']} thread(s)" if peaks["threads"] else "")
    sizes = " | ".join(f"{p} " + ", ".join(f"{n}: {g}" for n, g in peaks[p]["per_size"].items()) for p in precisions)
    return (", ".join(f"{p} {peaks[p]['gflops']}" for p in precisions)
            + f" GFLOP/s on {where} (best of sizes {sizes})")
