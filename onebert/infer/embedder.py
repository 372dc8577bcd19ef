"""Sentence embeddings from any BERT checkpoint: mean, [CLS] or pooler pooling, optionally L2-normalised.

    embedder = onebert.Embedder("all-MiniLM-L6-v2/")      # pooling and Normalize read from the checkpoint
    embedder.encode("hello world")                         # [384] float32, as sentence-transformers
    embedder.encode(["a", "b"], normalize_embeddings=True) # [2, 384]

`embed(model_dir, texts)` is the one-call form; `Embedder` keeps the model and tokenizer loaded for
repeated calls (the server uses it). Both follow the checkpoint's pooling and Normalize module unless
told otherwise. The batches are `onebert.infer.predictor.forward`'s (the one inference loop: texts
sorted by length inside each chunk so that a batch pads little, results back in input order, the
same device, precision and autocast handling as predict).

A text longer than the maximum length is cut to it (the encoder cannot see more), and the cut is
counted: `EmbeddingResult.truncated` lists the input indices, and `encode` / `embed` log a warning. The
maximum length is `max_length` when given (at most the config's `max_position_embeddings` and the
tokenizer's `model_max_length`), else the smaller of those two and, for a sentence-transformers
checkpoint, its `max_seq_length` (sentence_bert_config.json), so that such a checkpoint embeds
exactly as sentence-transformers does.
"""

from __future__ import annotations

import functools
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

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

    def log_truncation(self) -> None:
        """Cutting a text loses what the encoder did not see: say how many, never silently."""
        if self.truncated:
            log.warning("%d of %d texts were longer than %d tokens and were cut to that length (first: text %d)",
                        len(self.truncated), len(self.embeddings), self.max_length, self.truncated[0])


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


class Embedder:
    """A loaded encoder + tokenizer that turns texts into fixed-size vectors, used as sentence-transformers'
    `SentenceTransformer`: `Embedder(directory).encode(sentences)`.

    pooling / normalize: None follows the checkpoint (a sentence-transformers directory's modules.json,
    1_Pooling and Normalize module; else mean pooling without normalisation). device: auto, cpu, cuda,
    cuda:1, ...; precision: fp32, bf16, fp16, int8 or auto (fp32 on a CPU, so vectors equal
    sentence-transformers'), runtime: auto, torch, onnxruntime or openvino, as `onebert predict`
    (onebert.infer.engines; pooling and normalising stay float32 whichever runs the encoder); timing_batch:
    the batch auto times the runtimes at (a server passes 1: its requests' latency).
    """

    def __init__(self, model_or_dir: str | os.PathLike | "BertPreTrainedModel", *, pooling: str | None = None,
                 normalize: bool | None = None, tokenizer: "Tokenizer | None" = None, max_length: int | None = None,
                 device: str | None = "auto", precision: str = "fp32", runtime: str = "auto",
                 log: "Callable[[str], None] | None" = None, timing_batch: int = 32) -> None:
        from onebert import runtime as runtimes
        from onebert.infer import engines
        from onebert.model import BertModel, BertPreTrainedModel
        from onebert.tokenizer import Tokenizer

        directory = None
        if isinstance(model_or_dir, BertPreTrainedModel):
            model = model_or_dir if isinstance(model_or_dir, BertModel) else model_or_dir.bert
        else:
            directory = Path(model_or_dir)
            # A task checkpoint loads as its encoder: head weights are reported as unused, not lost.
            model = BertModel.from_pretrained(directory)
        declared = checkpoint_settings(directory) if directory is not None else EmbeddingSettings()
        pooling = declared.pooling if pooling is None else pooling
        _check_pooling(pooling, model, directory)
        if tokenizer is None:
            if directory is None:
                raise OneBertError("embed: pass tokenizer= when giving a model object instead of a directory")
            tokenizer = Tokenizer.from_pretrained(directory)
        tokenizer.check_fits(model.config, where=str(directory or "model"))
        self.device = runtimes.resolve_device(device)
        self.torch_model: BertModel = model.to(self.device).eval()
        self.tokenizer = tokenizer
        self.pooling = pooling
        self.normalize = declared.normalize if normalize is None else normalize
        self.max_length = _max_length(model, tokenizer, max_length, declared.max_length)
        engine = engines.select(self.torch_model, self.device, runtime=runtime, precision=precision,
                                purpose="embeddings", batch_size=timing_batch, length=min(self.max_length, 32),
                                log=log)
        self.model = engine.model  # the encoder, or its export (same calling convention, same outputs)
        self.precision, self.runtime, self.engine_reason = engine.precision, engine.runtime, engine.reason
        self.dimension = model.config.hidden_size

    @classmethod
    def from_checkpoint(cls, directory: str | os.PathLike, **kwargs) -> "Embedder":
        """The same as `Embedder(directory, ...)` (kept for older callers)."""
        return cls(directory, **kwargs)

    def get_sentence_embedding_dimension(self) -> int:
        """sentence-transformers' name for `dimension`."""
        return self.dimension

    def encode(self, sentences: str | Sequence[str], batch_size: int = 32, show_progress_bar: bool | None = None,
               convert_to_numpy: bool = True, convert_to_tensor: bool = False, normalize_embeddings: bool = False,
               *, pooling: str | None = None) -> "np.ndarray | torch.Tensor | list[torch.Tensor]":
        """Vectors as sentence-transformers' `encode` returns them.

        A string gives one 1-D vector, a list gives [N, D] (numpy float32); convert_to_tensor=True gives a
        torch tensor, convert_to_numpy=False a list of 1-D tensors (one tensor for a string). A checkpoint
        with a Normalize module is always normalised (as there); normalize_embeddings=True normalises any.
        show_progress_bar None: a bar only when stderr is a terminal. Texts cut to max_length are logged.
        """
        import torch

        single = isinstance(sentences, str)
        texts = [sentences] if single else list(sentences)
        result = self.encode_result(texts, batch_size, show_progress_bar, pooling=pooling,
                                    normalize=self.normalize or normalize_embeddings)
        result.log_truncation()
        vectors = result.embeddings
        if convert_to_tensor or not convert_to_numpy:
            tensor = torch.from_numpy(vectors)
            if single:
                return tensor[0]
            return tensor if convert_to_tensor else list(tensor)
        return vectors[0] if single else vectors

    def autocast(self):
        from onebert.infer import engines

        return engines.autocast(self.runtime, self.device, self.precision)

    def encode_result(self, texts: Sequence[str], batch_size: int = 32, progress: bool | None = False, *,
                      pooling: str | None = None, normalize: bool | None = None) -> EmbeddingResult:
        """[N, D] float32 with the truncation record (for `onebert embed` and the server).

        pooling / normalize override the embedder's settings for this call only (normalize=False turns a
        checkpoint's normalisation off). progress: as encode's show_progress_bar (None: on a terminal).
        """
        from onebert.infer.predictor import forward, progress_bar
        from onebert.tasks import Features

        if batch_size < 1:
            raise OneBertError(f"batch_size must be positive, got {batch_size}")
        pooling = self.pooling if pooling is None else pooling
        normalize = self.normalize if normalize is None else normalize
        _check_pooling(pooling, self.model, None)
        texts = _checked_texts(texts)
        out = np.zeros((len(texts), self.dimension), dtype=np.float32)
        truncated: list[int] = []
        bar = progress_bar(len(texts), "text", progress)
        chunk = batch_size * _CHUNK_BATCHES
        for start in range(0, len(texts), chunk):
            ids = self._token_ids(texts[start:start + chunk], start, truncated)
            vectors = forward(self.model, Features(columns={"input_ids": ids}), batch_size=batch_size,
                              device=self.device, autocast=self.autocast(), pad_token_id=self.tokenizer.pad_token_id,
                              bar=bar, outputs=functools.partial(pooled_outputs, pooling=pooling, normalize=normalize))
            out[start:start + len(ids)] = np.stack(vectors["embeddings"])
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


def _check_pooling(pooling: str, model, directory: Path | None) -> None:
    if pooling not in POOLING_MODES:
        raise OneBertError(f"pooling must be one of {', '.join(POOLING_MODES)}, got {pooling!r}")
    if pooling == "pooler" and model.pooler is None:
        raise OneBertError(f"{directory or 'this model'}: has no pooler layer; use pooling 'mean' or 'cls'")


def _max_length(model, tokenizer, asked: int | None, declared: int | None) -> int:
    """What the model can read at all caps everything; a sentence-transformers checkpoint's max_seq_length
    is its default (what it was trained and is used with), which an explicit max_length may exceed."""
    limit = min(model.config.max_position_embeddings, tokenizer.model_max_length)
    if asked is None:
        return min(limit, declared) if declared else limit
    if not 2 <= asked <= limit:
        raise OneBertError(f"max_length must be in 2..{limit} (the model's position embeddings and "
                           f"tokenizer allow {limit}), got {asked}")
    return asked


def _checked_texts(texts: Sequence[str]) -> list[str]:
    from onebert.text_input import describe_surrogate, lone_surrogate

    texts = list(texts)
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise OneBertError(f"text {i} is {type(text).__name__}, expected a string")
        surrogate = lone_surrogate(text)
        if surrogate is not None:  # the tokenizer would name it within its chunk, not in `texts`
            raise OneBertError(f"text {i}: {describe_surrogate(text, surrogate)}")
    return texts


def pooled_outputs(out, batch: dict, pooling: str, normalize: bool) -> dict[str, tuple["torch.Tensor", bool]]:
    """forward's extractor for sentence vectors: one pooled (optionally L2-normalised) vector per row."""
    import torch

    pooler = out.pooler_output.float() if out.pooler_output is not None else None
    vectors = pool(out.last_hidden_state.float(), batch["attention_mask"], pooling, pooler)
    if normalize:
        vectors = torch.nn.functional.normalize(vectors, p=2, dim=1)
    return {"embeddings": (vectors, False)}


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


def embed(model_or_dir: str | os.PathLike | "BertPreTrainedModel", texts: Sequence[str], pooling: str | None = None,
          normalize: bool | None = None, batch_size: int = 32, tokenizer: "Tokenizer | None" = None,
          max_length: int | None = None, device: str | None = "auto", progress: bool | None = False,
          precision: str = "fp32") -> np.ndarray:
    """Embeddings [len(texts), hidden] as float32, in input order, in one call.

    pooling / normalize None follow the checkpoint as `onebert embed` does (all-MiniLM-L6-v2: mean
    pooling and its Normalize module, so unit vectors); texts cut to the model's length are logged.
    """
    embedder = Embedder(model_or_dir, pooling=pooling, normalize=normalize, tokenizer=tokenizer,
                        max_length=max_length, device=device, precision=precision)
    result = embedder.encode_result(texts, batch_size=batch_size, progress=progress)
    result.log_truncation()
    return result.embeddings


__all__ = ["Embedder", "EmbeddingResult", "EmbeddingSettings", "checkpoint_settings", "embed", "pool", "POOLING_MODES"]
