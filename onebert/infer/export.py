"""Export a model directory to ONNX, TorchScript or a clean HuggingFace-layout directory, and check it.

Every export takes (input_ids, attention_mask, token_type_ids), int64 [batch, sequence], and returns
the outputs of the checkpoint's architecture under transformers' names (`OUTPUT_NAMES`); batch and
sequence are dynamic.

Tracing and unpadding: the model decides at run time whether a batch has padding
(`bool(attention_mask.all())`) and then gathers the real tokens with a data-dependent index. A
graph cannot hold that decision, and `torch.export` (the new ONNX exporter's front end) refuses to
guard on it. So the model is traced with `SpeedConfig(unpadding=False)` on an example batch that has
padding: the traced graph is the padded path with an attention mask, which is exact for every
batch, padded or not (at pad positions the hidden states are then computed rather than zeroed;
they carry no meaning either way). Both tracers used here (the TorchScript-based ONNX exporter
and `torch.jit.trace`) are deprecated in torch 2.9+ but are the ones that take the model as it is.

`compare(model, runner, name)` runs an export (`onnxruntime_runner`, `openvino_runner`,
`torchscript_runner`, `hf_runner`) on several batch/sequence shapes and compares it with PyTorch at
the real-token positions; `onebert export` does so after every export.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator

import numpy as np
import torch

from onebert.errors import OneBertError

if TYPE_CHECKING:
    from onebert.model import BertPreTrainedModel

FORMATS = ("onnx", "hf", "torchscript")
INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")
OUTPUT_NAMES: dict[str, tuple[str, ...]] = {
    "BertModel": ("last_hidden_state", "pooler_output"),
    "BertForPreTraining": ("prediction_logits", "seq_relationship_logits"),
    "BertForMaskedLM": ("logits",),
    "BertForSequenceClassification": ("logits",),
    "BertForTokenClassification": ("logits",),
    "BertForQuestionAnswering": ("start_logits", "end_logits"),
}
# Outputs with one row per sequence rather than one per token.
_PER_SEQUENCE = ("pooler_output", "seq_relationship_logits", "BertForSequenceClassification.logits")
_TASK_ARCHITECTURES = {"classification": "BertForSequenceClassification", "ner": "BertForTokenClassification",
                       "qa": "BertForQuestionAnswering"}
# Files a deployment wants beside the weights: tokenizer and sentence-transformers pooling config.
_SIDE_FILES = ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
               "modules.json", "sentence_bert_config.json", "config_sentence_transformers.json")
_SIDE_DIRS = ("1_Pooling",)
ONNX_OPSET = 17
DEFAULT_CHECK_SHAPES = ((1, 5), (3, 17), (8, 64))


def architecture_of(directory: str | os.PathLike) -> str:
    """The model class a checkpoint was saved from: config.json's `architectures`, else its onebert task."""
    from onebert.model import MODEL_CLASSES
    from onebert.model.config import BertConfig

    config = BertConfig.load(Path(directory))
    for name in config.extra.get("architectures") or []:
        if name in MODEL_CLASSES:
            return name
    task = config.onebert.get("task")
    if task in _TASK_ARCHITECTURES:
        return _TASK_ARCHITECTURES[task]
    return "BertModel"


def load_model(directory: str | os.PathLike) -> "BertPreTrainedModel":
    from onebert.model import MODEL_CLASSES

    return MODEL_CLASSES[architecture_of(directory)].from_pretrained(directory).eval()


def is_per_token(model: "BertPreTrainedModel", name: str) -> bool:
    return name not in _PER_SEQUENCE and f"{type(model).__name__}.{name}" not in _PER_SEQUENCE


def output_names(model: "BertPreTrainedModel") -> tuple[str, ...]:
    names = OUTPUT_NAMES[type(model).__name__]
    if type(model).__name__ == "BertModel" and model.pooler is None:
        names = names[:1]
    return names


class ExportWrapper(torch.nn.Module):
    """Positional inputs -> a tuple of named outputs: the calling convention graphs need."""

    def __init__(self, model: "BertPreTrainedModel") -> None:
        super().__init__()
        self.model = model
        self.names = output_names(model)

    def forward(self, input_ids, attention_mask, token_type_ids):
        output = self.model(input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)
        return tuple(output[name] for name in self.names)


def example_inputs(model: "BertPreTrainedModel") -> tuple["torch.Tensor", ...]:
    """Two rows, the second padded, so the traced graph is the masked (padded) path."""
    generator = torch.Generator().manual_seed(0)
    config = model.config
    input_ids = torch.randint(5, config.vocab_size, (2, 8), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, 5:] = 0
    input_ids[1, 5:] = config.pad_token_id
    return input_ids, attention_mask, torch.zeros_like(input_ids)


@contextlib.contextmanager
def _traceable(model: "BertPreTrainedModel") -> Iterator[None]:
    """Padded path, eval mode (a traced dropout would stay in the graph), quiet tracers."""
    import dataclasses

    previous = model.speed
    model.set_speed(dataclasses.replace(previous, unpadding=False))
    model.eval()
    try:
        with warnings.catch_warnings():
            # The tracers warn about every Python bool taken from a tensor and about their own
            # deprecation; the module docstring says why the trace is exact all the same.
            warnings.simplefilter("ignore")
            yield
    finally:
        model.set_speed(previous)


def export_onnx(model: "BertPreTrainedModel", path: str | os.PathLike, opset: int = ONNX_OPSET) -> Path:
    from onebert.io_utils import atomic_path

    path = Path(path)
    names = output_names(model)
    axes = {name: {0: "batch", 1: "sequence"} for name in INPUT_NAMES}
    axes.update({name: {0: "batch", 1: "sequence"} if is_per_token(model, name) else {0: "batch"} for name in names})
    with _traceable(model), atomic_path(path) as tmp, torch.no_grad():
        torch.onnx.export(ExportWrapper(model).eval(), example_inputs(model), str(tmp), dynamo=False,
                          input_names=list(INPUT_NAMES), output_names=list(names), dynamic_axes=axes,
                          opset_version=opset, do_constant_folding=True)
    return path


def export_torchscript(model: "BertPreTrainedModel", path: str | os.PathLike) -> Path:
    from onebert.io_utils import atomic_path

    path = Path(path)
    with _traceable(model), torch.no_grad():
        traced = torch.jit.trace(ExportWrapper(model).eval(), example_inputs(model), check_trace=False)
    with atomic_path(path) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.save(traced, str(tmp))
    return path


def export_hf(model_dir: str | os.PathLike, output: str | os.PathLike) -> Path:
    """Re-save through our loader: validated weights, float32 safetensors, tied weights left out, tokenizer files."""
    from onebert.tokenizer import Tokenizer

    model_dir, output = Path(model_dir), Path(output)
    model = load_model(model_dir)
    tokenizer = Tokenizer.from_pretrained(model_dir)
    tokenizer.check_fits(model.config, where=str(model_dir))
    model.save_pretrained(output)
    tokenizer.save_pretrained(output)
    _copy_side_files(model_dir, output, skip_tokenizer=True)
    return output


def _copy_side_files(source: Path, target: Path, skip_tokenizer: bool = False) -> None:
    for name in _SIDE_FILES:
        if skip_tokenizer and name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json",
                                       "special_tokens_map.json"):
            continue
        if (source / name).is_file():
            shutil.copyfile(source / name, target / name)
    for name in _SIDE_DIRS:
        if (source / name).is_dir():
            shutil.copytree(source / name, target / name, dirs_exist_ok=True)


# ----------------------------------------------------------------------------- checks


@dataclass
class CheckResult:
    runtime: str
    shapes: list[tuple[int, int]]
    max_abs_diff: dict[str, float]  # per output, over all shapes, real tokens only
    relative_error: dict[str, float] = field(default_factory=dict)  # per output: max over shapes of |a-b| / |b|

    def passed(self, atol: float) -> bool:
        return all(diff <= atol for diff in self.max_abs_diff.values())

    def summary(self) -> str:
        diffs = ", ".join(f"{name} {diff:.1e}" for name, diff in self.max_abs_diff.items())
        shapes = " ".join(f"{b}x{s}" for b, s in self.shapes)
        return f"{self.runtime}: max |difference| to PyTorch on shapes {shapes}: {diffs}"


def random_batch(config, batch: int, seq: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Ids with right padding of varied lengths (row 0 always full), as a tokenizer produces them."""
    rng = np.random.default_rng(seed + 1000 * batch + seq)
    input_ids = rng.integers(5, config.vocab_size, size=(batch, seq), dtype=np.int64)
    lengths = rng.integers(max(1, seq // 3), seq + 1, size=batch)
    lengths[0] = seq
    attention_mask = (np.arange(seq)[None, :] < lengths[:, None]).astype(np.int64)
    input_ids[attention_mask == 0] = config.pad_token_id
    token_type_ids = np.zeros_like(input_ids)
    token_type_ids[:, seq // 2:] = 1
    token_type_ids *= attention_mask
    return {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids}


def torch_outputs(model: "BertPreTrainedModel", inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    with torch.inference_mode():
        output = model(**{k: torch.from_numpy(v) for k, v in inputs.items()})
    return {name: output[name].float().numpy() for name in output_names(model)}


def compare(model: "BertPreTrainedModel", run: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]],
            runtime: str, shapes=DEFAULT_CHECK_SHAPES) -> CheckResult:
    """Run `run` and PyTorch on the same random batches; differences at real tokens only."""
    diffs: dict[str, float] = {name: 0.0 for name in output_names(model)}
    relative: dict[str, float] = {name: 0.0 for name in output_names(model)}
    for batch, seq in shapes:
        inputs = random_batch(model.config, batch, seq)
        expected = torch_outputs(model, inputs)
        got = run(inputs)
        real = inputs["attention_mask"].astype(bool)
        for name, want in expected.items():
            have = np.asarray(got[name])
            if have.shape != want.shape:
                raise OneBertError(f"{runtime}: output '{name}' has shape {list(have.shape)} for inputs {batch}x{seq}, "
                                   f"PyTorch gives {list(want.shape)}")
            difference = np.abs(have.astype(np.float64) - want)
            reference = np.abs(want.astype(np.float64))
            if is_per_token(model, name):
                difference, reference = difference[real], reference[real]
            diffs[name] = max(diffs[name], float(difference.max()))
            norm = float(np.linalg.norm(reference))
            relative[name] = max(relative[name], float(np.linalg.norm(difference)) / norm if norm else 0.0)
    return CheckResult(runtime, list(shapes), diffs, relative)


def quantize_int8(path: str | os.PathLike) -> Path:
    """Replace an fp32 ONNX file by onnxruntime's dynamic int8 quantization of it (weights per output channel).

    Dynamic: activations are quantized per batch at run time, so no calibration data is needed and
    any model quantizes as it is; the products run on VNNI / AMX-INT8 integer kernels.
    """
    import logging

    from onnxruntime.quantization import QuantType, quantize_dynamic

    from onebert.io_utils import atomic_path

    path = Path(path)
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # its 'consider pre-processing' warning on every call is advice, not a problem
    try:
        with atomic_path(path) as tmp:
            quantize_dynamic(str(path), str(tmp), weight_type=QuantType.QInt8, per_channel=True)
    finally:
        root.setLevel(level)
    return path


def onnxruntime_runner(path: str | os.PathLike, threads: int | None = None):
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    # Its threads would otherwise spin between calls, taking the cores from the Python work around them
    # (batching, decoding) and from whatever runs next in the process (autotune times runtimes in turn).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]

    def run(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return dict(zip(names, session.run(names, inputs)))

    return run


def openvino_runner(path: str | os.PathLike, precision: str | None = "f32", threads: int | None = None,
                    cache: str | os.PathLike | None = None):
    """OpenVINO compiles the ONNX file for the CPU. It picks bf16 by itself on CPUs that have it;
    f32 is asked for explicitly so the comparison with PyTorch is like for like (None: its default).
    threads: its inference threads (default: all cores), so it can share a machine as torch does; cache: a
    directory where OpenVINO keeps compiled models for later processes."""
    import openvino as ov

    config: dict[str, object] = {"INFERENCE_PRECISION_HINT": precision} if precision else {}
    if threads:
        config["INFERENCE_NUM_THREADS"] = threads
    if cache is not None:
        config["CACHE_DIR"] = str(cache)  # the compiled model, reused by later processes
    compiled = ov.Core().compile_model(str(path), "CPU", config)
    request = compiled.create_infer_request()
    outputs = [(o, o.get_any_name()) for o in compiled.outputs]

    def run(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        result = request.infer(inputs)
        return {name: np.array(result[o]) for o, name in outputs}

    return run


def torchscript_runner(path: str | os.PathLike, names: tuple[str, ...]):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        module = torch.jit.load(str(path), map_location="cpu").eval()

    def run(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        with torch.inference_mode():
            out = module(*(torch.from_numpy(inputs[k]) for k in INPUT_NAMES))
        return {name: t.numpy() for name, t in zip(names, out)}

    return run


def hf_runner(model_dir: str | os.PathLike, names: tuple[str, ...]):
    """Reload through onebert's own loader: proves the directory is complete and consistent."""
    model = load_model(model_dir)

    def run(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        with torch.inference_mode():
            out = model(**{k: torch.from_numpy(v) for k, v in inputs.items()})
        return {name: out[name].numpy() for name in names}

    return run
