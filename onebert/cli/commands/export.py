"""`onebert export`: ONNX, TorchScript or a clean HuggingFace directory, checked against PyTorch after writing."""

from __future__ import annotations

import argparse

from onebert import ranges
from onebert.cli.options import model_or_run_dir

HELP = "export a model to ONNX, TorchScript or a HuggingFace-layout directory"
DESCRIPTION = (
    "Export a model directory. onnx / torchscript: inputs input_ids, attention_mask, token_type_ids "
    "(int64 [batch, sequence], both axes dynamic), outputs named as in transformers for the checkpoint's "
    "architecture. An --output ending in .onnx / .pt is the model file; any other --output is a directory "
    "that receives model.onnx / model.pt with config.json and the tokenizer files beside it. hf: a "
    "directory with config.json, model.safetensors and tokenizer files that transformers loads. After "
    "writing, the export is run on several batch/sequence shapes and compared with PyTorch.")

_SUFFIX = {"onnx": ".onnx", "torchscript": ".pt"}
# Float32 kernels differ in summation order between runtimes; anything beyond this is a bug.
CHECK_ATOL = 1e-3
# int8 moves outputs by a few percent (all-MiniLM-L6-v2: ~0.1 relative error of the hidden states); a graph
# that is wrong, not merely quantized, is off by ~1.
INT8_RELATIVE_ERROR = 0.3


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, metavar="DIR", help="model directory (config.json + weights), or a run directory (its best/, else final/)")
    parser.add_argument("--format", required=True, choices=("onnx", "hf", "torchscript"), help="what to write")
    parser.add_argument("--output", required=True, metavar="PATH",
                        help="file (.onnx / .pt) or directory: new, empty, or (onnx/torchscript) one an earlier "
                             "export wrote; never the model directory or a file that exists")
    parser.add_argument("--opset", type=ranges.integer(9, 20), default=17, help="ONNX opset version")
    parser.add_argument("--quantize", choices=("int8",), default=None,
                        help="onnx only: int8 weights with activations quantized at run time (onnxruntime's dynamic "
                             "quantization, per output channel; runs on VNNI/AMX-INT8 kernels; no calibration data). "
                             "Checked against PyTorch with int8's tolerance (relative error)")
    parser.add_argument("--no-check", action="store_true",
                        help="skip running the export and comparing its outputs with PyTorch")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from onebert.infer import export
    from onebert.model.config import BertConfig
    from onebert.errors import OneBertError
    from onebert.tokenizer import Tokenizer

    args.model = model_or_run_dir(args.model, "onebert export")
    model_dir, output = Path(args.model), Path(args.output)
    if not (model_dir / "config.json").is_file():
        raise OneBertError(f"{model_dir}: no config.json (is this a model directory?)")
    _check_output(args.format, model_dir, output)

    if args.quantize and args.format != "onnx":
        raise OneBertError(f"--quantize {args.quantize} applies to --format onnx only")
    model = export.load_model(model_dir)
    names = export.output_names(model)
    if args.format == "hf":
        export.export_hf(model_dir, output)
        target, runner = output, (lambda: export.hf_runner(output, names))
    else:
        suffix = _SUFFIX[args.format]
        if output.suffix == suffix:
            target = output
        else:
            target = output / f"model{suffix}"
            output.mkdir(parents=True, exist_ok=True)
            BertConfig.load(model_dir).save(output)
            Tokenizer.from_pretrained(model_dir).save_pretrained(output)
            export._copy_side_files(model_dir, output, skip_tokenizer=True)
        if args.format == "onnx":
            export.export_onnx(model, target, opset=args.opset)
            if args.quantize:
                export.quantize_int8(target)
            runner = lambda: export.onnxruntime_runner(target)  # noqa: E731
        else:
            export.export_torchscript(model, target)
            runner = lambda: export.torchscript_runner(target, names)  # noqa: E731
    size = sum(f.stat().st_size for f in ([target] if target.is_file() else target.rglob("*")) if f.is_file())
    print(f"wrote {target} ({export.architecture_of(model_dir)}, outputs {', '.join(names)}, {size / 1e6:.1f} MB)")
    if args.no_check:
        return 0
    try:
        run_export = runner()
    except ImportError as exc:
        print(f"not checked: {exc.name} is not installed (pip install {exc.name})")
        return 0
    runtime = {"onnx": "onnxruntime", "torchscript": "torch.jit", "hf": "reloaded directory"}[args.format]
    result = export.compare(model, run_export, runtime)
    print(result.summary())
    if args.quantize:
        worst = max(result.relative_error.values())
        print(f"int8: largest relative error of an output {worst:.3f} (int8 is not exact; at most "
              f"{INT8_RELATIVE_ERROR} passes)")
        if worst > INT8_RELATIVE_ERROR:
            print("check FAILED: the int8 model is too far from PyTorch's; use the fp32 export")
            return 1
        return 0
    if not result.passed(CHECK_ATOL):
        print(f"check FAILED: outputs differ from PyTorch by more than {CHECK_ATOL}")
        return 1
    return 0


def _is_export_dir(directory) -> bool:
    """A directory an earlier onnx/torchscript export wrote and nothing else: a re-export may replace it."""
    from onebert.infer import export
    from onebert.io_utils import holds_only

    models = [name for name in ("model.onnx", "model.pt") if (directory / name).is_file()]
    return bool(models) and holds_only(directory, {*models, "config.json", *export._SIDE_FILES, *export._SIDE_DIRS})


def _check_output(fmt: str, model_dir, output) -> None:
    """Before any work: an export never writes over the model, a file that exists, or a foreign directory."""
    from onebert.errors import OneBertError
    from onebert.io_utils import check_output_dir, check_output_file, is_within

    suffix = _SUFFIX.get(fmt)
    if is_within(output, model_dir) and not (suffix is not None and output.suffix == suffix):
        raise OneBertError(f"{output}: --output would write into the model directory {model_dir} (an input of this command); "
                           "choose another --output")
    if suffix is not None and output.suffix == suffix:
        check_output_file(output, inputs=[model_dir], suffix=suffix, kind=f"{fmt} model")
    else:
        check_output_dir(output, inputs=[model_dir], made_by_onebert=_is_export_dir if suffix else None,
                         kind=f"{fmt} export")

