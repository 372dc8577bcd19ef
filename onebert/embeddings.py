"""Sentence embeddings from any BERT checkpoint: mean, [CLS] or pooler pooling, optionally L2-normalised.

`embed(model_dir, texts)` is the one-call form; `Embedder` keeps the model and tokenizer loaded for
repeated calls (the server uses it). Texts are sorted by length inside each chunk so that a batch
holds texts of similar length and pads little; results come back in input order.

A text longer than the maximum length is cut to it (the encoder cannot see more), and the cut is
counted: `EmbeddingResult.truncated` lists the input indices, and `embed` logs a warning. The
maximum length is `max_length` when given (at most the config's `max_position_embeddings` and the
tokenizer's `model_max_length`), else the smaller of those two and, for a sentence-transformers
checkpoint, its `max_seq_length` (sentence_bert_config.json), so that such a checkpoint embeds
exactly as sentence-transformers does.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np

from onebert.errors import OneBertError

if TYPE_CHECKING:
    import torch

    from onebert.model import BertModel, BertPreTrainedModel
    from onebert.tokenizer import Tokenizer

log = logging.getLogger(__name__)

POOLING_MODES = ("mean", "cls", "pooler")
# Texts tokenised and sorted together: large enough that batches are length-homogeneous,
# small enough that a file of millions of lines never sits in memory as token ids.
_CHUNK_BATCHES = 64


@dataclass
class EmbeddingSettings:
    """How a checkpoint wants to be pooled; read from its sentence-transformers files when present."""

    pooling: str = "mean"
    normalize: bool = False
    max_length: int | None = None  # None: the model's and tokenizer's limit


@dataclass
class EmbeddingResult:
    embeddings: np.ndarray  # [N, hidden] float32, in input order
    truncated: list[int] = field(default_factory=list)  # indices of texts cut to max_length
    max_length: int = 0


def checkpoint_settings(directory: str | os.PathLike) -> EmbeddingSettings:
    """The pooling, normalisation and length a sentence-transformers checkpoint declares.

    modules.json lists the pipeline (Transformer -> Pooling -> Normalize); 1_Pooling/config.json
    says which pooling; sentence_bert_config.json gives max_seq_length. A plain BERT directory
    has none of these and gets mean pooling without normalisation.
    """
    directory = Path(directory)
    settings = EmbeddingSettings()
    modules = _read_json(directory / "modules.json")
    if not isinstance(modules, list):
        return settings
    for module in modules:
        kind = str(module.get("type", "")) if isinstance(module, dict) else ""
        if kind.endswith(".Normalize"):
            settings.normalize = True
        elif kind.endswith(".Pooling"):
            pooling = _read_json(directory / str(module.get("path", "")) / "config.json") or {}
            if pooling.get("pooling_mode_cls_token"):
                settings.pooling = "cls"
            elif pooling.get("pooling_mode_mean_tokens", True):
                settings.pooling = "mean"
            else:
                modes = [k for k, v in pooling.items() if k.startswith("pooling_mode") and v]
                raise OneBertError(f"{directory / str(module.get('path', ''))}/config.json: pooling "
                                   f"{', '.join(modes)} is not supported (use mean or cls)")
    sbert = _read_json(directory / "sentence_bert_config.json") or {}
    if isinstance(sbert.get("max_seq_length"), int):
        settings.max_length = sbert["max_seq_length"]
    return settings


def _read_json(path: Path):
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise OneBertError(f"{path}: not valid JSON ({exc})") from None


def resolve_device(device: str | None) -> str:
    import torch

    if device in (None, "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


class Embedder:
    """A loaded encoder + tokenizer that turns texts into fixed-size vectors."""

    def __init__(self, model_or_dir: str | os.PathLike | "BertPreTrainedModel", *, pooling: str = "mean",
                 normalize: bool = False, tokenizer: "Tokenizer | None" = None, max_length: int | None = None,
                 device: str | None = "auto") -> None:
        import torch

        from onebert.model import BertModel, BertPreTrainedModel
        from onebert.tokenizer import Tokenizer

        if pooling not in POOLING_MODES:
            raise OneBertError(f"pooling must be one of {', '.join(POOLING_MODES)}, got {pooling!r}")
        directory = None
        if isinstance(model_or_dir, BertPreTrainedModel):
            model = model_or_dir if isinstance(model_or_dir, BertModel) else model_or_dir.bert
        else:
            directory = Path(model_or_dir)
            # A task checkpoint loads as its encoder: head weights are reported as unused, not lost.
            model = BertModel.from_pretrained(directory)
        if tokenizer is None:
            if directory is None:
                raise OneBertError("embed: pass tokenizer= when giving a model object instead of a directory")
            tokenizer = Tokenizer.from_pretrained(directory)
        if pooling == "pooler" and model.pooler is None:
            raise OneBertError(f"{directory or 'model'}: has no pooler layer; use pooling 'mean' or 'cls'")
        tokenizer.check_fits(model.config, where=str(directory or "model"))
        self.device = torch.device(resolve_device(device))
        self.model: BertModel = model.to(self.device).eval()
        self.tokenizer = tokenizer
        self.pooling = pooling
        self.normalize = normalize
        # What the model can read at all; a sentence-transformers checkpoint's max_seq_length is its
        # default (what it was trained and is used with), which an explicit max_length may exceed.
        limit = min(model.config.max_position_embeddings, tokenizer.model_max_length)
        if max_length is not None:
            if not 2 <= max_length <= limit:
                raise OneBertError(f"max_length must be in 2..{limit} (the model's position embeddings and "
                                   f"tokenizer allow {limit}), got {max_length}")
            self.max_length = max_length
        else:
            declared = checkpoint_settings(directory).max_length if directory is not None else None
            self.max_length = min(limit, declared) if declared else limit
        self.dimension = model.config.hidden_size

    @classmethod
    def from_checkpoint(cls, directory: str | os.PathLike, *, pooling: str | None = None,
                        normalize: bool | None = None, **kwargs) -> "Embedder":
        """Pooling and normalisation default to what the checkpoint declares (see checkpoint_settings)."""
        declared = checkpoint_settings(directory)
        return cls(directory, pooling=pooling or declared.pooling,
                   normalize=declared.normalize if normalize is None else normalize, **kwargs)

    def encode(self, texts: Sequence[str], batch_size: int = 64, progress: bool = False, *,
               pooling: str | None = None, normalize: bool | None = None) -> EmbeddingResult:
        """pooling / normalize override the embedder's settings for this call only."""
        if batch_size < 1:
            raise OneBertError(f"batch_size must be positive, got {batch_size}")
        pooling = self.pooling if pooling is None else pooling
        normalize = self.normalize if normalize is None else normalize
        if pooling not in POOLING_MODES:
            raise OneBertError(f"pooling must be one of {', '.join(POOLING_MODES)}, got {pooling!r}")
        if pooling == "pooler" and self.model.pooler is None:
            raise OneBertError("this model has no pooler layer; use pooling 'mean' or 'cls'")
        from onebert.text_input import describe_surrogate, lone_surrogate

        texts = list(texts)
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise OneBertError(f"text {i} is {type(text).__name__}, expected a string")
            surrogate = lone_surrogate(text)
            if surrogate is not None:  # the tokenizer would name it within its chunk, not in `texts`
                raise OneBertError(f"text {i}: {describe_surrogate(text, surrogate)}")
        out = np.zeros((len(texts), self.dimension), dtype=np.float32)
        truncated: list[int] = []
        bar = None
        if progress:
            from tqdm import tqdm

            # disable=None: a bar only when stderr is a terminal (not into a pipe or a log file)
            bar = tqdm(total=len(texts), unit="text", desc="embed", dynamic_ncols=True, disable=None)
        chunk = batch_size * _CHUNK_BATCHES
        for start in range(0, len(texts), chunk):
            ids = self._token_ids(texts[start:start + chunk], start, truncated)
            order = sorted(range(len(ids)), key=lambda i: len(ids[i]), reverse=True)
            for b in range(0, len(order), batch_size):
                rows = order[b:b + batch_size]
                out[[start + r for r in rows]] = self._embed_batch([ids[r] for r in rows], pooling, normalize)
                if bar is not None:
                    bar.update(len(rows))
        if bar is not None:
            bar.close()
        return EmbeddingResult(out, truncated, self.max_length)

    def _token_ids(self, texts: list[str], offset: int, truncated: list[int]) -> list[list[int]]:
        """[CLS] text [SEP] ids, cut to max_length with the [SEP] kept (as truncation does), cuts recorded."""
        encoded = self.tokenizer(texts, truncation=False, padding=False, return_tensors=None,
                                 return_offsets_mapping=False, return_word_ids=False)["input_ids"]
        for i, ids in enumerate(encoded):
            if len(ids) > self.max_length:
                truncated.append(offset + i)
                encoded[i] = ids[:self.max_length - 1] + ids[-1:]
        return encoded

    def _embed_batch(self, batch: list[list[int]], pooling: str, normalize: bool) -> np.ndarray:
        import torch

        length = max(len(ids) for ids in batch)
        pad = self.tokenizer.pad_token_id
        input_ids = torch.tensor([ids + [pad] * (length - len(ids)) for ids in batch], device=self.device)
        mask = torch.tensor([[1] * len(ids) + [0] * (length - len(ids)) for ids in batch], device=self.device)
        with torch.inference_mode():
            output = self.model(input_ids, attention_mask=mask)
            vectors = pool(output.last_hidden_state, mask, pooling, output.pooler_output)
            if normalize:
                vectors = torch.nn.functional.normalize(vectors, p=2, dim=1)
        return vectors.float().cpu().numpy()


def pool(hidden: "torch.Tensor", mask: "torch.Tensor", pooling: str,
         pooler_output: "torch.Tensor | None" = None) -> "torch.Tensor":
    """[B, S, H] token states -> [B, H]. Mean over real tokens only, as sentence-transformers does."""
    if pooling == "cls":
        return hidden[:, 0]
    if pooling == "pooler":
        if pooler_output is None:
            raise OneBertError("pooling 'pooler' needs a model with a pooler layer")
        return pooler_output
    weights = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)


def embed(model_or_dir: str | os.PathLike | "BertPreTrainedModel", texts: Sequence[str], pooling: str = "mean",
          normalize: bool = False, batch_size: int = 64, tokenizer: "Tokenizer | None" = None,
          max_length: int | None = None, device: str | None = "auto", progress: bool = False) -> np.ndarray:
    """Embeddings [len(texts), hidden] as float32, in input order; texts cut to the model's length are logged."""
    embedder = Embedder(model_or_dir, pooling=pooling, normalize=normalize, tokenizer=tokenizer,
                        max_length=max_length, device=device)
    result = embedder.encode(texts, batch_size=batch_size, progress=progress)
    if result.truncated:
        log.warning("%d of %d texts were longer than %d tokens and were cut to that length (first: text %d)",
                    len(result.truncated), len(texts), result.max_length, result.truncated[0])
    return result.embeddings
