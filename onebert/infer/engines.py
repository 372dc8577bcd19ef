"""Where inference runs: PyTorch, or the model's ONNX export on onnxruntime or OpenVINO, in fp32, bf16 or int8.

`predict`, `evaluate`, `embed`, `serve` and the Python API (`Predictor`, `Embedder`, `pipeline`)
take `runtime` (auto, torch, onnxruntime, openvino) and `precision` (auto, fp32, bf16, fp16, int8).
An exported runtime is wrapped in `ExportedModel`, which the inference loop calls like the PyTorch
model (same inputs, outputs under the same attribute names), so nothing downstream knows which ran.

What each runtime computes here (`SUPPORTED`):
- torch: fp32; bf16 (autocast: matmuls in bf16, LayerNorm and softmax in fp32); fp16 on GPUs.
- onnxruntime: fp32; int8 = dynamic quantization (`onnxruntime.quantization.quantize_dynamic`):
  every weight matrix int8 per output channel, activations quantized per batch at run time, the
  products on VNNI / AMX-INT8 integer kernels. No calibration data is needed, so `--precision int8`
  works on any model as it is. Chosen by measurement over OpenVINO, which runs the same int8 graph
  3.5x slower than onnxruntime on an AVX512-VNNI CPU (BENCHMARKS.md, "int8").
- openvino: fp32 (INFERENCE_PRECISION_HINT f32) and bf16 (hint bf16; CPUs with AVX512-BF16 or AMX).

`auto` is decided by measurement (`onebert.autotune.fastest`): the candidates the machine has are
timed on the real model with a batch of the caller's shape and the fastest wins, remembered per
machine. auto precision means fp32, plus bf16 on a CPU that computes bf16 natively for the tasks
whose outputs were measured unchanged by it (`Task.auto_bf16`: classification labels and NER tags,
against fp32 on SST-2, MRPC and CoNLL in BENCHMARKS.md); regression values, QA spans and
embeddings stay fp32 under auto, because vectors are stored and compared with sentence-transformers'
to float tolerance. int8 is never chosen by auto: it changes outputs by more than rounding, so it
is asked for by name.

Exports are cached (`cache_dir()/exports/<fingerprint of weights and config>/`), written once,
atomically, and checked against PyTorch before first use, so a later run loads them in a second.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from onebert.errors import OneBertError

RUNTIMES = ("auto", "torch", "onnxruntime", "openvino")
PRECISIONS = ("auto", "fp32", "bf16", "fp16", "int8")
SUPPORTED = {"torch": ("fp32", "bf16", "fp16"), "onnxruntime": ("fp32", "int8"), "openvino": ("fp32", "bf16")}
_MODULES = {"onnxruntime": "onnxruntime", "openvino": "openvino"}
# Exported fp32 graphs sum in another order than PyTorch; more than this is a broken export, not rounding.
EXPORT_ATOL = 1e-3
# Bump when the exported graph changes for the same weights, so old cached exports are not reused.
EXPORT_VERSION = 1


@dataclass
class Engine:
    """The callable the inference loop runs, and what it is."""

    model: Any  # the PyTorch model, or an ExportedModel with the same calling convention
    runtime: str
    precision: str
    reason: str = ""  # why this one (auto: the measurement), for the commands' log line


@dataclass
class ExportedOutput:
    """The attributes the inference loop and the embedder read off a model output; absent ones are None."""

    logits: Any = None
    start_logits: Any = None
    end_logits: Any = None
    last_hidden_state: Any = None
    pooler_output: Any = None
    prediction_logits: Any = None
    seq_relationship_logits: Any = None

    def __getitem__(self, name: str) -> Any:
        return getattr(self, name)


@dataclass
class ExportedModel:
    """An exported graph behind the PyTorch model's interface: `model(input_ids, attention_mask, token_type_ids)`."""

    run: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]
    torch_model: Any  # for config, pooler and anything a caller inspects
    path: Path
    pre_hooks: list[Callable[..., object]] = field(default_factory=list)

    @property
    def config(self):
        return self.torch_model.config

    @property
    def pooler(self):
        return getattr(self.torch_model, "pooler", None)

    def eval(self) -> "ExportedModel":
        return self

    def register_forward_pre_hook(self, hook: Callable[..., object]) -> None:
        """As nn.Module's (called with (self, inputs) before every call): the server stops abandoned batches so."""
        self.pre_hooks.append(hook)

    def __call__(self, input_ids, attention_mask=None, token_type_ids=None, **_: Any) -> ExportedOutput:
        import torch

        for hook in self.pre_hooks:
            hook(self, (input_ids,))
        ids = input_ids.cpu().numpy().astype(np.int64, copy=False)
        inputs = {"input_ids": ids,
                  "attention_mask": (np.ones_like(ids) if attention_mask is None
                                     else attention_mask.cpu().numpy().astype(np.int64, copy=False)),
                  "token_type_ids": (np.zeros_like(ids) if token_type_ids is None
                                     else token_type_ids.cpu().numpy().astype(np.int64, copy=False))}
        outputs = self.run(inputs)
        known = {f.name for f in dataclasses.fields(ExportedOutput)}
        return ExportedOutput(**{name: torch.from_numpy(np.asarray(value)) for name, value in outputs.items()
                                 if name in known})


def tcmalloc_preloaded() -> bool:
    """Whether tcmalloc replaced malloc in this process (LD_PRELOAD; the `onebert` command preloads it)."""
    try:
        return "tcmalloc" in Path("/proc/self/maps").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return "tcmalloc" in os.environ.get("LD_PRELOAD", "")


def openvino_beside_tcmalloc() -> None:
    """OpenVINO's CPU plugin aborts ('double free or corruption') or hangs while compiling beside a preloaded
    tcmalloc: oneTBB loads its tbbbind library with RTLD_DEEPBIND, which bypasses the preloaded allocator
    (uxlfoundation/oneTBB#1645, openvinotoolkit/openvino#29025). TBB_ENABLE_SANITIZERS=1 makes it load
    tbbbind without that flag; it is read when the plugin compiles its first model, so setting it here,
    before any compile_model, is enough (tests/test_engines.py runs OpenVINO under tcmalloc)."""
    if tcmalloc_preloaded():
        os.environ.setdefault("TBB_ENABLE_SANITIZERS", "1")


def available(runtime: str) -> bool:
    """Whether the runtime's library is installed here (torch always is). Found, not imported: importing both
    costs a fraction of a second on every command, and only the one chosen is needed."""
    import importlib.util

    return runtime == "torch" or importlib.util.find_spec(_MODULES[runtime]) is not None


def check_names(runtime: str, precision: str) -> None:
    if runtime not in RUNTIMES:
        raise OneBertError(f"--runtime: unknown runtime '{runtime}' (choose one of {', '.join(RUNTIMES)})")
    if precision not in PRECISIONS:
        raise OneBertError(f"--precision: unknown precision '{precision}' (choose one of {', '.join(PRECISIONS)})")


def candidates(runtime: str, precision: str, device, purpose: str) -> list[tuple[str, str]]:
    """The (runtime, precision) pairs `auto` chooses among, the reference (torch, fp32 or the GPU's) first.

    purpose: "predictions" (labels, tags, spans: auto may pick bf16), "values" (regression) or "embeddings"
    (auto keeps fp32 for both: the numbers themselves are the output).
    """
    from onebert import runtime as runtimes

    if runtime == "auto" and os.environ.get("ONEBERT_RUNTIME"):
        runtime = os.environ["ONEBERT_RUNTIME"].strip().lower()  # a machine's (or a test suite's) standing choice
    check_names(runtime, precision)
    if device.type != "cpu":
        if runtime not in ("auto", "torch"):
            raise OneBertError(f"--runtime {runtime} runs on the CPU; on {device.type} use --runtime torch (or auto)")
        if precision == "int8":
            raise OneBertError(f"--precision int8 runs on the CPU (onnxruntime); on {device.type} use bf16 or fp16")
        return [("torch", runtimes.resolve_precision(precision, device, "inference"))]
    if precision == "fp16":
        raise OneBertError("--precision fp16 needs a CUDA or XPU device; on the CPU use bf16, int8 or fp32")
    native_bf16 = runtimes.cpu_has_native_bf16()
    if precision == "bf16" and runtime == "openvino" and not native_bf16:
        raise OneBertError("--runtime openvino --precision bf16 needs a CPU with AVX512-BF16 or AMX; "
                           "this one has neither (use fp32, or --runtime torch for emulated bf16)")
    if precision == "auto":
        precisions = ["fp32"] + (["bf16"] if native_bf16 and purpose == "predictions" else [])
    else:
        precisions = [precision]
    names = ["torch", "onnxruntime", "openvino"] if runtime == "auto" else [runtime]
    pairs = [(r, p) for p in precisions for r in names if p in SUPPORTED[r] and (runtime != "auto" or available(r))]
    if runtime != "auto" and not available(runtime):
        raise OneBertError(f"--runtime {runtime}: {_MODULES[runtime]} is not installed "
                           f"(pip install 'onebert[{'export' if runtime == 'onnxruntime' else 'openvino'}]')")
    if not pairs:
        offered = [r for r in SUPPORTED if precision in SUPPORTED[r]]
        hint = (f"use --runtime {' or '.join(offered)}" if runtime != "auto"
                else f"install {' or '.join(_MODULES.get(r, r) for r in offered)}")
        raise OneBertError(f"--precision {precision} is not computed by --runtime {runtime} here; {hint}")
    return pairs


# ----------------------------------------------------------------------------- exports


def fingerprint(model) -> str:
    """A digest of everything an export depends on: class, config, every weight, exporter version."""
    import torch

    digest = hashlib.blake2b(digest_size=16)
    digest.update(json.dumps({"class": type(model).__name__, "config": model.config.to_dict(),
                              "version": EXPORT_VERSION, "torch": torch.__version__.split("+")[0]},
                             sort_keys=True, default=str).encode())
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes()
                      if tensor.dtype != torch.bool else tensor.numpy().tobytes())
    return digest.hexdigest()


def onnx_export(model, log: Callable[[str], None] | None = None) -> Path:
    """The model's fp32 ONNX graph, from the cache or exported (and checked against PyTorch) now."""
    from onebert.autotune import cache_dir
    from onebert.infer import export

    path = cache_dir() / "exports" / fingerprint(model) / "model.onnx"
    if path.is_file():
        return path
    if log:
        log(f"exporting {type(model).__name__} to ONNX once for this machine ({path.parent})")
    model.cpu()
    openvino_beside_tcmalloc()
    tmp = path.with_name("unchecked.onnx")
    export.export_onnx(model, tmp)
    result = export.compare(model, export.onnxruntime_runner(tmp) if available("onnxruntime")
                            else export.openvino_runner(tmp, "f32"), "export check")
    if not result.passed(EXPORT_ATOL):
        tmp.unlink(missing_ok=True)
        raise OneBertError(f"the ONNX export of this model differs from PyTorch ({result.summary()}); "
                           "use --runtime torch, and please report this")
    os.replace(tmp, path)
    return path


def int8_export(model, log: Callable[[str], None] | None = None) -> Path:
    """onnxruntime's dynamic int8 quantization of the fp32 export (export.quantize_int8), cached beside it."""
    import shutil

    from onebert.infer import export

    source = onnx_export(model, log)
    path = source.with_name("model-int8.onnx")
    if path.is_file():
        return path
    if log:
        log("quantizing the ONNX export to int8 (dynamic, per channel) once for this machine")
    tmp = source.with_name("unquantized.onnx")
    shutil.copyfile(source, tmp)
    export.quantize_int8(tmp)
    os.replace(tmp, path)
    return path


def exported(model, runtime: str, precision: str, threads: int, log: Callable[[str], None] | None = None
             ) -> ExportedModel:
    from onebert.infer import export

    path = int8_export(model, log) if precision == "int8" else onnx_export(model, log)
    if runtime == "onnxruntime":
        run = export.onnxruntime_runner(path, threads=threads)
    else:
        from onebert.autotune import cache_dir

        openvino_beside_tcmalloc()
        # CACHE_DIR: OpenVINO keeps the compiled model there and a later run loads it instead of compiling.
        run = export.openvino_runner(path, {"fp32": "f32", "bf16": "bf16"}[precision], threads=threads,
                                     cache=cache_dir() / "openvino")
    return ExportedModel(run=run, torch_model=model, path=path)


# ----------------------------------------------------------------------------- choosing


def _build(pairs: list[tuple[str, str]], model, runtime: str, threads: int,
           log: Callable[[str], None] | None) -> dict[str, Engine]:
    """An engine per (runtime, precision). Under auto one that fails to build (a missing `onnx`, an exporter
    bug) is left out, and said; a runtime asked for by name fails with one line."""
    engines: dict[str, Engine] = {}
    for name, prec in pairs:
        try:
            engine_model = model if name == "torch" else exported(model, name, prec, threads, log)
        except Exception as exc:  # noqa: BLE001 - whatever stops a runtime here makes it no candidate
            reason = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            if runtime != "auto":
                if isinstance(exc, OneBertError):
                    raise
                raise OneBertError(f"--runtime {name}: cannot run this model ({reason}); use --runtime torch") from None
            if log:
                log(f"--runtime auto: leaving out {name} {prec} ({reason})")
            continue
        engines[f"{name} {prec}"] = Engine(engine_model, name, prec)
    return engines


def sample_batch(config, batch_size: int, length: int) -> dict[str, Any]:
    """A batch of the caller's shape for timing: random ids, full rows, two segments."""
    import torch

    generator = torch.Generator().manual_seed(0)
    length = max(3, min(length, config.max_position_embeddings))
    input_ids = torch.randint(5, config.vocab_size, (batch_size, length), generator=generator)
    token_type_ids = torch.zeros_like(input_ids)
    token_type_ids[:, length // 2:] = 1
    return {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids), "token_type_ids": token_type_ids}


def select(model, device, *, runtime: str = "auto", precision: str = "auto", purpose: str = "predictions",
           batch_size: int = 32, length: int = 64, log: Callable[[str], None] | None = None) -> Engine:
    """The engine to run `model` (a PyTorch model in eval mode, on `device`) with, as asked or measured fastest.

    length: a typical sequence length of the work (for the timing batch). log: where to say what
    is being exported (the commands pass stderr; the library stays quiet by default).
    """
    import torch

    from onebert import autotune

    pairs = candidates(runtime, precision, device, purpose)
    threads = torch.get_num_threads()
    names = [f"{name} {prec}" for name, prec in pairs]
    length = max(3, min(length, model.config.max_position_embeddings))
    key = {"purpose": purpose, "class": type(model).__name__, "hidden": model.config.hidden_size,
           "layers": model.config.num_hidden_layers, "intermediate": model.config.intermediate_size,
           "heads": model.config.num_attention_heads, "batch": batch_size, "length": length,
           "asked": f"{runtime} {precision}", "candidates": sorted(names)}
    earlier = autotune.remembered(key, names) if len(pairs) > 1 else None
    # Build only the engine chosen before (no exports compiled for nothing); should it fail now, measure again.
    engines = _build([pairs[names.index(earlier.name)]], model, runtime, threads, log) if earlier else {}
    if not engines:
        earlier = None
        engines = _build(pairs, model, runtime, threads, log)
    if not engines:
        raise OneBertError(f"--runtime auto: no runtime installed here could run this model at --precision {precision}; "
                           "use --runtime torch")
    if earlier is not None:
        chosen = next(iter(engines.values()))
        chosen.reason = f"auto: fastest here for batch {batch_size} x {length} tokens, {earlier.explain()}"
        return chosen
    if len(engines) == 1:
        return next(iter(engines.values()))
    batch = {k: v.to(device) for k, v in sample_batch(model.config, batch_size, length).items()}

    def timed(engine: Engine) -> Callable[[], object]:
        def call():
            with torch.inference_mode(), autocast(engine.runtime, device, engine.precision):
                return engine.model(**batch)
        return call

    choice = autotune.fastest(key, {name: timed(engine) for name, engine in engines.items()})
    chosen = engines[choice.name]
    chosen.reason = f"auto: fastest here for batch {batch_size} x {key['length']} tokens, {choice.explain()}"
    return chosen


def autocast(runtime: str, device, precision: str) -> contextlib.AbstractContextManager:
    """The context an engine's call runs in: torch's autocast for PyTorch; nothing for an export, which
    computes in the precision it was compiled for."""
    from onebert import runtime as runtimes

    return runtimes.autocast(device, precision) if runtime == "torch" else contextlib.nullcontext()


def ran_on(model) -> str:
    """'ran on openvino bf16, auto: ...': what computed a Predictor's or an Embedder's outputs, for a command's last line."""
    return f"ran on {model.runtime} {model.precision}" + (f", {model.engine_reason}" if model.engine_reason else "")


def stderr_log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


__all__ = ["Engine", "ExportedModel", "ExportedOutput", "RUNTIMES", "PRECISIONS", "SUPPORTED", "available",
           "candidates", "select", "onnx_export", "int8_export", "fingerprint", "autocast", "ran_on", "stderr_log"]
