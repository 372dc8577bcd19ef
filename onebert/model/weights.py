"""HuggingFace-layout checkpoints: config.json + model.safetensors (or pytorch_model.bin).

Loading is an identity mapping of transformers' names plus a short, explicit list of exceptions
(`_normalise_key`). Anything that is neither matched nor on that list is an error, so a head can
never silently stay random: head weights that the checkpoint lacks are initialised and listed in
`model.load_report`, and checkpoint weights that the model has no place for are listed there too
only when they belong to another head.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import re
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Protocol

import torch

from onebert.model.config import CONFIG_NAME, BertConfig
from onebert.errors import OneBertError
from onebert.io_utils import atomic_write_with

log = logging.getLogger(__name__)

SAFETENSORS_NAME = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
PYTORCH_NAME = "pytorch_model.bin"

# Parameters a model may have that a checkpoint may legitimately lack: task heads and the pooler
# (checkpoints of token-classification / QA / masked-LM models are saved without one).
_HEAD_PREFIXES = ("cls.", "classifier.", "qa_outputs.", "bert.pooler.")
# Tied to the word embeddings (transformers' save_pretrained leaves them out as well).
_TIED_KEYS = ("cls.predictions.decoder.weight", "cls.predictions.decoder.bias")


@dataclass
class LoadReport:
    """What `from_pretrained` did beyond copying matching tensors, for the user to read."""

    initialised: list[str] = field(default_factory=list)  # in the model, not in the checkpoint
    unused: list[str] = field(default_factory=list)  # in the checkpoint, for a head this model lacks
    reinitialised: list[str] = field(default_factory=list)  # shape differed, re-initialised on request

    def summary(self) -> str:
        parts = []
        if self.initialised:
            parts.append(f"newly initialised (train them before use): {_compact(self.initialised)}")
        if self.reinitialised:
            parts.append(f"re-initialised because their shape differed: {_compact(self.reinitialised)}")
        if self.unused:
            parts.append(f"not used by this model: {_compact(self.unused)}")
        return "; ".join(parts)


class PretrainedModel(Protocol):
    """What loading and saving need of a model: described here rather than imported from
    `onebert.model.bert`, so the dependency runs one way (bert imports weights, never back)."""

    config: BertConfig

    def state_dict(self) -> dict[str, torch.Tensor]: ...

    def load_state_dict(self, state_dict: dict[str, torch.Tensor], strict: bool = True) -> Any: ...

    def tie_weights(self) -> None: ...


def _compact(keys: list[str]) -> str:
    return ", ".join(keys[:8]) + (f" and {len(keys) - 8} more" if len(keys) > 8 else "")


def read_state_dict(directory: Path) -> tuple[dict[str, torch.Tensor], Path]:
    """Tensors of a checkpoint directory. Never unpickles arbitrary objects (weights_only)."""
    safetensors_file = directory / SAFETENSORS_NAME
    index_file = directory / SAFETENSORS_INDEX
    pytorch_file = directory / PYTORCH_NAME
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        if safetensors_file.is_file():
            return load_file(str(safetensors_file)), safetensors_file
        if index_file.is_file():
            state: dict[str, torch.Tensor] = {}
            for shard in _shard_names(index_file):
                state.update(load_file(str(directory / shard)))
            return state, index_file
        if pytorch_file.is_file():
            state = torch.load(pytorch_file, map_location="cpu", weights_only=True)
            if not isinstance(state, dict):
                raise OneBertError(f"{pytorch_file}: expected a state dict, found {type(state).__name__}")
            bad = next((k for k, v in state.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)), None)
            if bad is not None:
                raise OneBertError(f"{pytorch_file}: expected a dict of named tensors, found {repr(bad)[:60]}: "
                                   f"{type(state[bad]).__name__}")
            return state, pytorch_file
    except pickle.UnpicklingError as exc:
        raise OneBertError(f"{pytorch_file}: cannot read weights (refused to unpickle anything but tensors: "
                           f"{unpickling_refusal_reason(exc)})") from None
    except (SafetensorError, OSError, RuntimeError, KeyError, ValueError, EOFError, RecursionError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        bad = next(f for f in (safetensors_file, index_file, pytorch_file) if f.is_file())
        raise OneBertError(f"{bad}: cannot read weights ({first})") from None
    raise OneBertError(f"{directory}: no weights found (expected {SAFETENSORS_NAME} or {PYTORCH_NAME})")


_ANSI = re.compile(r"\x1b\[[0-9;]*m")
# torch's advice around the reason: to load the file anyway. onebert never does (that would run the
# file's code), so none of it reaches the user.
_ADVICE = ("weights_only", "weights only load failed", "re-running", "trusted source", "trust the source",
           "documentation of torch.load", "please file an issue", "alternatively", "add_safe_globals",
           "safe_globals", "allowlist")
_NO_REASON = "the file holds objects other than tensors and plain values"


def unpickling_refusal_reason(exc: BaseException) -> str:
    """Why torch.load(weights_only=True) refused a file, in a few words: never empty, and never torch's
    suggestion to load it with weights_only=False (or to allow-list the offending global)."""
    text = _ANSI.sub("", str(exc))
    candidates = []
    for line in text.splitlines():
        line = line.strip().lstrip("(0123456789) \t")
        if "WeightsUnpickler error:" in line:
            line = line.split("WeightsUnpickler error:", 1)[1].strip()
        # "Unsupported global: GLOBAL x was not an allowed global by default. Please use ..." keeps its first sentence.
        line = line.split(". Please", 1)[0].strip().rstrip(".")
        if line and not any(word in line.lower() for word in _ADVICE):
            candidates.append(line)
    reason = candidates[0] if candidates else _NO_REASON
    return reason[:200]


def _shard_names(index_file: Path) -> list[str]:
    """The shard files an index names, each a plain relative path inside the model directory.

    Checked by name, not by resolving symlinks: the HuggingFace cache stores shards as links into
    ../../blobs, which are fine, while a name with `..` or an absolute path could read any file.
    """
    index = json.loads(index_file.read_text(encoding="utf-8"))
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise OneBertError(f"{index_file}: expected {{\"weight_map\": {{tensor name: shard file}}}}")
    shards = sorted(set(weight_map.values()))
    for shard in shards:
        parts = PurePosixPath(shard).parts
        if not parts or PurePosixPath(shard).is_absolute() or ".." in parts or "\\" in shard or "\0" in shard:
            raise OneBertError(f"{index_file}: shard {shard[:100]!r} lies outside the model directory")
    return shards


def _normalise_key(key: str) -> str | None:
    """Map a checkpoint key onto transformers' current names; None for keys to drop."""
    if key.endswith("position_ids") or key.endswith("token_type_ids"):
        return None  # buffers that old checkpoints stored
    key = key.replace("LayerNorm.gamma", "LayerNorm.weight").replace("LayerNorm.beta", "LayerNorm.bias")
    return key


def _with_model_prefix(keys: dict[str, torch.Tensor], model_keys: set[str]) -> dict[str, torch.Tensor]:
    """Add or strip the `bert.` prefix so a bare BertModel checkpoint fits a head model and back."""
    wants_prefix = any(k.startswith("bert.") for k in model_keys)
    out: dict[str, torch.Tensor] = {}
    for key, value in keys.items():
        if wants_prefix and key.split(".", 1)[0] in ("embeddings", "encoder", "pooler"):
            key = "bert." + key
        elif not wants_prefix and key.startswith("bert."):
            key = key[len("bert."):]
        out[key] = value
    return out


def load_pretrained(cls: Callable[[BertConfig], PretrainedModel], directory: str | os.PathLike,
                    config: BertConfig | None = None, ignore_mismatched_heads: bool = False,
                    **config_overrides: Any) -> PretrainedModel:
    """Build `cls(config)` from a directory's config.json (or `config`) and load its weights."""
    directory = Path(directory)
    if not directory.is_dir():
        raise OneBertError(f"{directory}: no such model directory")
    if config is None:
        if not (directory / CONFIG_NAME).is_file():
            raise OneBertError(f"{directory}: no {CONFIG_NAME} (is this a model directory?)")
        config = BertConfig.load(directory)
    if config_overrides:
        import dataclasses

        config = dataclasses.replace(config, **config_overrides)
    state, source = read_state_dict(directory)
    _check_embedding_sizes(config, state, source)
    model = cls(config)
    report = load_state_dict_checked(model, state, source, ignore_mismatched_heads)
    model.load_report = report
    if report.initialised or report.unused or report.reinitialised:
        log.warning("%s: %s", directory, report.summary())
    return model


_EMBEDDING_SIZES = (("word_embeddings", "vocab_size"), ("position_embeddings", "max_position_embeddings"),
                    ("token_type_embeddings", "type_vocab_size"))


def _check_embedding_sizes(config: BertConfig, state: dict[str, torch.Tensor], source: Path) -> None:
    """Compare the config's sizes with the checkpoint's embedding tables before the model is built,
    so a config.json that disagrees with its weights is named as such (and nothing of its size is allocated)."""
    for key, value in state.items():
        for table, name in _EMBEDDING_SIZES:
            if key.endswith(f"embeddings.{table}.weight") and value.dim() == 2:
                rows, width = value.shape
                if rows != getattr(config, name) or width != config.hidden_size:
                    raise OneBertError(f"{source}: '{key}' is {rows} x {width}, but the config has {name}="
                                       f"{getattr(config, name)} and hidden_size={config.hidden_size}")


def load_state_dict_checked(model: PretrainedModel, raw_state: dict[str, torch.Tensor], source: Path | str,
                            ignore_mismatched_heads: bool = False) -> LoadReport:
    """Copy tensors into `model`, failing by name on anything outside the allowed exceptions."""
    own = model.state_dict()
    normalised: dict[str, torch.Tensor] = {}
    for key, value in raw_state.items():
        new_key = _normalise_key(key)
        if new_key is not None:
            normalised[new_key] = value
    state = _with_model_prefix(normalised, set(own))
    # An old checkpoint may store the decoder bias only under its tied name.
    if "cls.predictions.bias" not in state and "cls.predictions.decoder.bias" in state:
        state["cls.predictions.bias"] = state["cls.predictions.decoder.bias"]
    for tied in _TIED_KEYS:
        state.pop(tied, None)

    report = LoadReport()
    unexpected = [k for k in state if k not in own]
    for key in unexpected:
        if key.startswith(_HEAD_PREFIXES):
            report.unused.append(key)
        else:
            raise OneBertError(f"{source}: unexpected weight '{key}' (does config.json describe this checkpoint? "
                               f"e.g. num_hidden_layers={model.config.num_hidden_layers})")
    to_load: dict[str, torch.Tensor] = {}
    for key, target in own.items():
        if key in _TIED_KEYS:
            continue
        if key not in state:
            if key.startswith(_HEAD_PREFIXES):
                report.initialised.append(key)
                continue
            raise OneBertError(f"{source}: missing weight '{key}'")
        value = state[key]
        if tuple(value.shape) != tuple(target.shape):
            if ignore_mismatched_heads and key.startswith(_HEAD_PREFIXES):
                report.reinitialised.append(key)
                continue
            raise OneBertError(f"{source}: weight '{key}' has shape {list(value.shape)}, "
                               f"the model expects {list(target.shape)}")
        if not value.dtype.is_floating_point and target.dtype.is_floating_point:
            raise OneBertError(f"{source}: weight '{key}' has dtype {value.dtype}, expected floating point")
        to_load[key] = value.to(target.dtype)
    model.load_state_dict(to_load, strict=False)
    model.tie_weights()
    return report


def save_pretrained(model: PretrainedModel, directory: str | os.PathLike) -> None:
    """config.json + model.safetensors in transformers' layout, each written atomically.

    The tied decoder weight is left out as transformers does; transformers re-ties it on load.
    """
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config = model.config
    config.extra = {**config.extra, "architectures": [type(model).__name__]}
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items() if k not in _TIED_KEYS}
    atomic_write_with(directory / SAFETENSORS_NAME, lambda tmp: save_file(state, str(tmp), metadata={"format": "pt"}))
    config.save(directory)
