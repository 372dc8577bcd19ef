"""What a model is and how it runs: `BertConfig` (its shape, with HuggingFace's field names so
config.json files travel both ways) and `SpeedConfig` (which of the equivalent implementations run).

No torch here: the command line reads presets and configs without paying for it.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from onebert.errors import OneBertError, show_value

CONFIG_NAME = "config.json"

# The label value every loss skips (torch's cross_entropy default, and transformers'): masked-LM
# positions that are not predicted, NER word continuations, special tokens. Defined once, here,
# where the data pipeline, the tasks and the model all import it without loading torch.
IGNORE_INDEX = -100

# Fields transformers writes into a BERT config.json that do not change the BERT encoder we build.
# They are accepted (and kept for the round trip when they carry information, see `extra`),
# so that real checkpoints load; anything else is a typo and is refused.
_KNOWN_FOREIGN_FIELDS = {
    "architectures", "model_type", "transformers_version", "_name_or_path", "torch_dtype", "dtype",
    "gradient_checkpointing", "use_cache", "position_embedding_type", "classifier_dropout",
    "id2label", "label2id", "problem_type", "finetuning_task", "output_past", "return_dict",
    "output_hidden_states", "output_attentions", "is_decoder", "add_cross_attention",
    "tie_word_embeddings", "bos_token_id", "eos_token_id", "sep_token_id", "cls_token_id",
    "directionality", "pooler_fc_size", "pooler_num_attention_heads", "pooler_num_fc_layers",
    "pooler_size_per_head", "pooler_type", "chunk_size_feed_forward", "layer_norm_epsilon",
    "num_labels", "tokenizer_class", "prefix", "task_specific_params", "embedding_size",
    "onebert",
}

_ACTIVATIONS = ("gelu", "gelu_new", "gelu_pytorch_tanh", "relu", "silu", "swish")
_PROBLEM_TYPES = ("regression", "single_label_classification", "multi_label_classification")

# Upper bounds far above any published BERT (largest vocabularies ~250k, hidden 1024-4096), so that a
# corrupt or hostile config.json is refused before a model of that shape is allocated: a hidden_size
# of 10**9 would otherwise ask torch for terabytes.
_MAX_SIZES = {
    "vocab_size": 1 << 22, "hidden_size": 1 << 16, "num_hidden_layers": 1024, "num_attention_heads": 1 << 16,
    "intermediate_size": 1 << 18, "max_position_embeddings": 1 << 20, "type_vocab_size": 1 << 16,
    "num_labels": 1 << 20,
}
# The fields can each be in range and still multiply into an absurd model; 2**35 parameters
# (137 GB in fp32) is several times the largest BERT-style encoder published.
MAX_PARAMETERS = 1 << 35


@dataclass
class BertConfig:
    """The encoder's hyperparameters (defaults are bert-base-uncased's)."""

    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    initializer_range: float = 0.02
    layer_norm_eps: float = 1e-12
    pad_token_id: int = 0
    # Task heads. `num_labels` sizes the classifier; id2label names the classes in the order of the
    # logits. problem_type follows transformers: single_label_classification, regression, ...
    num_labels: int = 2
    id2label: dict[int, str] | None = None
    problem_type: str | None = None
    classifier_dropout: float | None = None
    # onebert's own metadata (task name, QA null threshold, ...), saved under the "onebert" key.
    onebert: dict[str, Any] = field(default_factory=dict)
    # Foreign fields we do not interpret, kept so a config written back equals the one read.
    extra: dict[str, Any] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self, source: str = "config") -> None:
        """Refuse shapes no model can have, naming the field: a bad config must not become a bad model."""
        for name, largest in _MAX_SIZES.items():
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise OneBertError(f"{source}: field '{name}' must be a positive integer, got {show_value(value)}")
            if value > largest:
                raise OneBertError(f"{source}: field '{name}' is {show_value(value)}, more than the {largest} "
                                   "onebert accepts (a corrupt config.json?)")
        parameters = self.estimated_parameters()
        if parameters > MAX_PARAMETERS:
            raise OneBertError(f"{source}: these sizes give about {parameters:.3g} parameters, more than the "
                               f"{MAX_PARAMETERS:.3g} onebert accepts (a corrupt config.json?)")
        if self.hidden_size % self.num_attention_heads:
            raise OneBertError(
                f"{source}: hidden_size {self.hidden_size} is not divisible by "
                f"num_attention_heads {self.num_attention_heads}")
        for name in ("hidden_dropout_prob", "attention_probs_dropout_prob"):
            value = getattr(self, name)
            if not _is_number(value) or not 0.0 <= value < 1.0:
                raise OneBertError(f"{source}: field '{name}' must be in [0, 1), got {show_value(value)}")
        if not _is_number(self.layer_norm_eps) or not 0 < self.layer_norm_eps < 1:
            raise OneBertError(f"{source}: field 'layer_norm_eps' must be in (0, 1), got {show_value(self.layer_norm_eps)}")
        if not _is_number(self.initializer_range) or not 0 < self.initializer_range < math.inf:
            raise OneBertError(f"{source}: field 'initializer_range' must be a positive finite number, "
                               f"got {show_value(self.initializer_range)}")
        if self.classifier_dropout is not None and (not _is_number(self.classifier_dropout)
                                                    or not 0.0 <= self.classifier_dropout < 1.0):
            raise OneBertError(f"{source}: field 'classifier_dropout' must be null or in [0, 1), "
                               f"got {show_value(self.classifier_dropout)}")
        if self.hidden_act not in _ACTIVATIONS:
            raise OneBertError(f"{source}: field 'hidden_act' must be one of {', '.join(_ACTIVATIONS)}, "
                               f"got {show_value(self.hidden_act)}")
        if self.problem_type is not None and self.problem_type not in _PROBLEM_TYPES:
            raise OneBertError(f"{source}: field 'problem_type' must be null or one of {', '.join(_PROBLEM_TYPES)}, "
                               f"got {show_value(self.problem_type)}")
        if not isinstance(self.pad_token_id, int) or isinstance(self.pad_token_id, bool) \
                or not 0 <= self.pad_token_id < self.vocab_size:
            raise OneBertError(f"{source}: field 'pad_token_id' must be an id below vocab_size, "
                               f"got {show_value(self.pad_token_id)}")
        if not isinstance(self.onebert, dict):
            raise OneBertError(f"{source}: field 'onebert' must be an object, got {show_value(self.onebert)}")
        if self.id2label is not None:
            self.id2label = _label_names(self.id2label, source) or None  # {} names nothing: num_labels stays
            if self.id2label is not None:
                self.num_labels = len(self.id2label)

    def estimated_parameters(self) -> int:
        """About the parameter count of a model of this shape (weights only; integer arithmetic, nothing allocated)."""
        h = self.hidden_size
        embeddings = (self.vocab_size + self.max_position_embeddings + self.type_vocab_size) * h
        layer = 4 * h * h + 2 * h * self.intermediate_size
        heads = 2 * h * h + self.vocab_size + h * self.num_labels  # pooler, MLM transform and bias, classifier
        return embeddings + self.num_hidden_layers * layer + heads

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def is_regression(self) -> bool:
        """A sequence-classification head that regresses (MSE on one output) instead of classifying.

        transformers' rule: problem_type "regression", or one output and no problem_type. One
        property, so every reader of the config (the head's loss, the task registry) agrees.
        """
        return self.problem_type == "regression" or (self.num_labels == 1 and self.problem_type is None)

    @property
    def label2id(self) -> dict[str, int]:
        return {name: i for i, name in (self.id2label or {}).items()}

    # ---------------------------------------------------------------- presets

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> "BertConfig":
        if name not in PRESETS:
            raise OneBertError(f"unknown model preset '{name}': choose one of {', '.join(PRESETS)} "
                               "or give a config.json")
        return dataclasses.replace(PRESETS[name], **overrides)

    # ---------------------------------------------------------------- json

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = dict(self.extra)
        for f in dataclasses.fields(self):
            if f.name in ("extra",):
                continue
            value = getattr(self, f.name)
            if f.name in ("id2label", "problem_type", "classifier_dropout") and value is None:
                continue
            if f.name == "onebert" and not value:
                continue
            out[f.name] = value
        if self.id2label is not None:
            out["id2label"] = {str(k): v for k, v in self.id2label.items()}
            out["label2id"] = self.label2id
        out["model_type"] = "bert"
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config") -> "BertConfig":
        if not isinstance(data, dict):
            raise OneBertError(f"{source}: expected a JSON object, got {type(data).__name__}")
        own = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        kwargs: dict[str, Any] = {}
        extra: dict[str, Any] = {}
        for key, value in data.items():
            if key in own:
                kwargs[key] = value
            elif key in _KNOWN_FOREIGN_FIELDS:
                if key not in ("label2id",):
                    extra[key] = value
            else:
                close = _closest(key, own)
                hint = f" (did you mean '{close}'?)" if close else ""
                raise OneBertError(f"{source}: unknown field {show_value(key)}{hint}")
        if "model_type" in data and data["model_type"] != "bert":
            raise OneBertError(f"{source}: model_type is {show_value(data['model_type'])}, onebert reads BERT configs only")
        if data.get("position_embedding_type", "absolute") != "absolute":
            raise OneBertError(f"{source}: position_embedding_type {show_value(data['position_embedding_type'])} "
                               "is not supported (only 'absolute', as in BERT)")
        for key in ("model_type",):
            extra.pop(key, None)
        if kwargs.get("id2label") is not None:
            names = _label_names(kwargs["id2label"], source)
            if names and "num_labels" in kwargs and kwargs["num_labels"] != len(names):
                raise OneBertError(f"{source}: num_labels is {show_value(kwargs['num_labels'])} but id2label names "
                                   f"{len(names)} labels")
            if names:
                kwargs["num_labels"] = len(names)
        try:
            config = cls(**kwargs, extra=extra)
        except OneBertError as exc:  # __post_init__ validated without knowing the file: name it
            raise OneBertError(f"{source}: {str(exc).removeprefix('config: ')}") from None
        except TypeError as exc:  # pragma: no cover - guarded by the field check above
            raise OneBertError(f"{source}: {exc}") from None
        return config

    def save(self, directory: str | os.PathLike) -> Path:
        from onebert.io_utils import atomic_write_text

        path = Path(directory) / CONFIG_NAME
        atomic_write_text(path, json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "BertConfig":
        """Read a config.json (or the config.json inside a directory)."""
        path = Path(path)
        if path.is_dir():
            path = path / CONFIG_NAME
        if not path.is_file():
            raise OneBertError(f"{path}: no such config file (a model directory needs a config.json)")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except UnicodeDecodeError:
            raise OneBertError(f"{path}: not a UTF-8 text file") from None
        except json.JSONDecodeError as exc:
            raise OneBertError(f"{path}: line {exc.lineno}: invalid JSON: {exc.msg}") from None
        except (ValueError, RecursionError) as exc:  # an integer of > 4300 digits; nesting too deep
            raise OneBertError(f"{path}: invalid JSON: {str(exc).split(';')[0]}") from None
        return cls.from_dict(data, source=str(path))


@dataclass(frozen=True)
class SpeedConfig:
    """Which implementation of each speed trick runs. Every choice computes the same function (to
    float rounding; tests/test_speed_paths.py proves it), so this is not saved with a model: it is
    chosen at construction, `BertModel(config, speed=SpeedConfig(...))`, or for a comparison on one
    instance, `model.set_speed(...)`. The defaults are the fastest measured on CPU.
    """

    # Token-wise layers run on a packed [real tokens, hidden] tensor instead of [batch, seq, hidden].
    unpadding: bool = True
    # With unpadding: attention per sequence on the packed tokens (True), or pad -> SDPA -> unpad in
    # every layer (False). None packs on CPU, where it measured faster, and pads on GPUs, where SDPA's
    # fused masked kernels avoid one small kernel launch per sequence.
    packed_attention: bool | None = None
    # Heads that read few positions (MLM with labels, [CLS] classification) run the last layer's
    # attention output and feed-forward on those positions only.
    last_layer_subset: bool = True
    # Masked-LM models: the word lookup's gradient is sparse and added into the tied decoder's.
    sparse_word_gradient: bool = True
    # Dropout masks from 16 random bits per element on CPU instead of torch's bernoulli_.
    fast_dropout: bool = True

    @property
    def attention(self) -> str:
        """The key of `onebert.model.ops.ATTENTION_KERNELS` that these settings pick."""
        if not self.unpadding or self.packed_attention is False:
            return "sdpa"
        return "packed" if self.packed_attention else "auto"


def resolve_config(name_or_path: str | os.PathLike, **overrides: Any) -> BertConfig:
    """A preset name (tiny..large), a config.json, or a model directory."""
    text = str(name_or_path)
    if text in PRESETS:
        return BertConfig.from_preset(text, **overrides)
    path = Path(text)
    if path.exists():
        config = BertConfig.load(path)
        return dataclasses.replace(config, **overrides) if overrides else config
    raise OneBertError(f"model config '{text}': neither a preset ({', '.join(PRESETS)}) nor an existing file")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _label_names(id2label: Any, source: str) -> dict[int, str]:
    """id2label with int keys 0..N-1 (JSON stores them as strings) and string names."""
    if not isinstance(id2label, dict):
        raise OneBertError(f"{source}: field 'id2label' must be an object of index: name, got {id2label!r}")
    names: dict[int, str] = {}
    for key, name in id2label.items():
        if isinstance(key, bool) or not isinstance(key, (int, str)) or not re.fullmatch(r"[0-9]{1,9}", str(key)) \
                or not isinstance(name, (str, int, float)) or isinstance(name, bool):
            raise OneBertError(f"{source}: field 'id2label' must map indices 0..N-1 to names, "
                               f"got {show_value(key)}: {show_value(name)}")
        names[int(key)] = str(name)
    if sorted(names) != list(range(len(names))):
        raise OneBertError(f"{source}: field 'id2label' must map 0..N-1 to names, got keys {sorted(names)[:10]}")
    return names


def _closest(word: str, candidates: set[str]) -> str | None:
    import difflib

    match = difflib.get_close_matches(word, sorted(candidates), n=1, cutoff=0.75)
    return match[0] if match else None


def _preset(layers: int, hidden: int) -> BertConfig:
    # The BERT miniatures (Turc et al., 2019) keep heads = hidden / 64 and the FFN at 4x hidden.
    return BertConfig(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=max(1, hidden // 64),
                      intermediate_size=4 * hidden)


PRESETS: dict[str, BertConfig] = {
    "tiny": _preset(2, 128),
    "mini": _preset(4, 256),
    "small": _preset(4, 512),
    "medium": _preset(8, 512),
    "base": _preset(12, 768),
    "large": _preset(24, 1024),
}
