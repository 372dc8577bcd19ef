"""The BERT encoder (Devlin et al., 2018) and its task heads, with transformers' parameter names.

Read top to bottom: embeddings, self-attention, feed-forward, layer, encoder, pooler, then the
model and one class per head. Parameter names copy `transformers.models.bert` exactly, so a
state dict moves between the two as an identity mapping (see `onebert.model.weights`).

Architecture only. The speed tricks are small helpers in `onebert.model.ops`, picked once from a
frozen `SpeedConfig` when the model is built (`BertModel(config, speed=...)`, or `set_speed` to
compare on one instance), all on by default and all computing the same function:
- unpadding: the real tokens are gathered into a packed [tokens, hidden] tensor once, and every
  layer, attention included, runs on that (`ops.unpadding_for`, `ops.ATTENTION_KERNELS`);
- the masked-LM decoder runs only at the labelled positions, and the last layer's attention
  output and feed-forward only at the positions a head reads: the labelled ones and [CLS] for
  pretraining, [CLS] for sequence classification (`last_layer_subset`);
- Q, K and V come from one GEMM; dropout masks and the tied word-lookup gradient are cheaper
  on CPU (`ops.BertDropout`, `ops.word_embedding_lookup`).
Under torch.compile the host-side steps (reading the mask, indexing the labelled positions) run
eagerly and the packed sizes are marked dynamic, so the graph is not retraced for every batch.
"""

from __future__ import annotations

import dataclasses
import inspect
from dataclasses import dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from onebert.model.config import IGNORE_INDEX, BertConfig, SpeedConfig
from onebert.model.ops import (ATTENTION_KERNELS, BertDropout, Encoded, PaddingInfo, allow_sparse_gradient,
                               eager_attention, nonzero_index, pad, unpad, unpadding_for, word_embedding_lookup)
from onebert.model.weights import load_pretrained
from onebert.model.weights import save_pretrained as save_weights


@dataclass
class ModelOutput:
    """What every model returns; fields that do not apply to a head stay None."""

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    last_hidden_state: torch.Tensor | None = None
    pooler_output: torch.Tensor | None = None
    # Pretraining / masked LM.
    mlm_loss: torch.Tensor | None = None
    nsp_loss: torch.Tensor | None = None
    prediction_logits: torch.Tensor | None = None  # [B, S, V], only when no labels were given
    masked_logits: torch.Tensor | None = None  # [N, V] at the labelled positions
    masked_labels: torch.Tensor | None = None  # [N]
    seq_relationship_logits: torch.Tensor | None = None
    # Question answering.
    start_logits: torch.Tensor | None = None
    end_logits: torch.Tensor | None = None
    # output_hidden_states=True: the embeddings' output, then each layer's, each [B, S, H].
    # output_attentions=True: each layer's attention probabilities, [B, heads, S, S].
    # Values at padding positions (attention_mask 0) are not meaningful; on the unpadded path they are 0.
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None

    def __getitem__(self, key: str) -> Any:
        return getattr(self, key)

    def keys(self) -> list[str]:
        return [f.name for f in fields(self) if getattr(self, f.name) is not None]

    def to_tuple(self, order: tuple[str, ...]) -> tuple[Any, ...]:
        """The fields named in `order` that are set, in that order (transformers' return_dict=False)."""
        return tuple(getattr(self, name) for name in order if getattr(self, name) is not None)


# Keys a tokenizer returns for post-processing (token -> text / word), which are no model input.
TOKENIZER_ONLY_KEYS = ("offset_mapping", "word_ids", "sequence_ids", "special_tokens_mask",
                       "overflow_to_sample_mapping", "example_index", "length")


@dataclass
class Trace:
    """What one forward call records besides its result: the per-layer hidden states and attention
    maps that output_hidden_states / output_attentions ask for (None: not asked for)."""

    hidden_states: list[torch.Tensor] | None = None
    attentions: list[torch.Tensor] | None = None

    @classmethod
    def wanted(cls, output_hidden_states: bool | None, output_attentions: bool | None) -> "Trace | None":
        if not output_hidden_states and not output_attentions:
            return None
        return cls([] if output_hidden_states else None, [] if output_attentions else None)


def activation(name: str):
    if name == "gelu":
        return F.gelu  # the exact erf form, as BERT's TensorFlow code and transformers' "gelu"
    if name in ("gelu_new", "gelu_pytorch_tanh"):
        return lambda x: F.gelu(x, approximate="tanh")
    if name == "relu":
        return F.relu
    return F.silu


# ----------------------------------------------------------------------------- encoder


class BertEmbeddings(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size, padding_idx=config.pad_token_id)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = BertDropout(config.hidden_dropout_prob)
        self.sparse_word_gradient = False

    def use_speed(self, speed: SpeedConfig) -> None:
        # BertPreTrainedModel.set_speed turns this off for models without a tied decoder.
        self.sparse_word_gradient = speed.sparse_word_gradient
        if speed.sparse_word_gradient:
            allow_sparse_gradient(self.word_embeddings.weight)

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor,
                position_ids: torch.Tensor) -> torch.Tensor:
        words = word_embedding_lookup(input_ids, self.word_embeddings, self.sparse_word_gradient)
        embeddings = words + self.token_type_embeddings(token_type_ids) + self.position_embeddings(position_ids)
        return self.dropout(self.LayerNorm(embeddings))


class BertSelfAttention(nn.Module):
    """The Q, K, V projections; the attention itself is the kernel `SpeedConfig.attention` picks."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.query = nn.Linear(config.hidden_size, config.hidden_size)
        self.key = nn.Linear(config.hidden_size, config.hidden_size)
        self.value = nn.Linear(config.hidden_size, config.hidden_size)
        self.dropout = BertDropout(config.attention_probs_dropout_prob)
        self.attend = ATTENTION_KERNELS[SpeedConfig().attention]

    def use_speed(self, speed: SpeedConfig) -> None:
        self.attend = ATTENTION_KERNELS[speed.attention]

    def forward(self, hidden: torch.Tensor, padding: PaddingInfo | None,
                attention_mask: torch.Tensor | None, trace: Trace | None = None) -> torch.Tensor:
        # One GEMM for Q, K and V: the three weights are concatenated on the fly, which costs a
        # copy of 3*H*H values and saves two passes over the activations.
        weight = torch.cat([self.query.weight, self.key.weight, self.value.weight])
        bias = torch.cat([self.query.bias, self.key.bias, self.value.bias])
        qkv = F.linear(hidden, weight, bias)
        dropout = self.dropout if self.training and self.dropout.p > 0.0 else None
        if trace is not None and trace.attentions is not None:
            # The fused kernels never form the [B, heads, S, S] map: this call computes it in the open.
            context, probs = eager_attention(qkv, padding, attention_mask, self.num_heads, dropout)
            trace.attentions.append(probs)
            return context
        return self.attend(qkv, padding, attention_mask, self.num_heads, dropout)


class BertSelfOutput(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = BertDropout(config.hidden_dropout_prob)

    def forward(self, hidden: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dropout(self.dense(hidden)) + residual)  # post-LayerNorm, as in BERT


class BertAttention(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.self = BertSelfAttention(config)
        self.output = BertSelfOutput(config)

    def forward(self, hidden, padding, attention_mask, rows=None, trace=None):
        context = self.self(hidden, padding, attention_mask, trace)
        if rows is not None:  # only these tokens' outputs are read: the rest of the layer skips the others
            context, hidden = context.index_select(0, rows), hidden.index_select(0, rows)
        return self.output(context, hidden)


class BertIntermediate(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.intermediate_size)
        self.act = activation(config.hidden_act)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.act(self.dense(hidden))


class BertOutput(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.dense = nn.Linear(config.intermediate_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = BertDropout(config.hidden_dropout_prob)

    def forward(self, hidden: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dropout(self.dense(hidden)) + residual)


class BertLayer(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.attention = BertAttention(config)
        self.intermediate = BertIntermediate(config)
        self.output = BertOutput(config)

    def forward(self, hidden, padding, attention_mask, rows=None, trace=None):
        attended = self.attention(hidden, padding, attention_mask, rows, trace)
        return self.output(self.intermediate(attended), attended)


class BertEncoder(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.layer = nn.ModuleList(BertLayer(config) for _ in range(config.num_hidden_layers))

    def forward(self, hidden, padding, attention_mask, last_layer_rows=None, trace: Trace | None = None):
        """`last_layer_rows`: packed tokens whose output the caller reads; the last layer's attention
        output and feed-forward run on those only (MosaicML's subset trick: the MLM loss reads ~15%).
        `trace`: where to record each layer's input (and the attention maps), in the layout given."""
        last = len(self.layer) - 1
        for i, layer in enumerate(self.layer):
            if trace is not None and trace.hidden_states is not None:
                trace.hidden_states.append(hidden)
            hidden = layer(hidden, padding, attention_mask, last_layer_rows if i == last else None, trace)
        if trace is not None and trace.hidden_states is not None:
            trace.hidden_states.append(hidden)
        return hidden


class BertPooler(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(self, first_token: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.dense(first_token))


# ----------------------------------------------------------------------------- base class


class BertPreTrainedModel(nn.Module):
    """Weight initialisation and HuggingFace-layout loading/saving shared by every model class."""

    config: BertConfig
    speed: SpeedConfig

    def init_weights(self) -> None:
        self.apply(self._init_module)
        self.tie_weights()

    def _init_module(self, module: nn.Module) -> None:
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=std)
            if module.padding_idx is not None:
                with torch.no_grad():
                    module.weight[module.padding_idx].zero_()
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        elif isinstance(module, BertLMPredictionHead):
            nn.init.zeros_(module.bias)

    def tie_weights(self) -> None:
        """Heads with a decoder share it with the word embeddings; nothing to do elsewhere."""

    def use_speed(self, speed: SpeedConfig) -> None:
        self.speed = speed  # the heads read last_layer_subset, BertModel unpadding

    def set_speed(self, speed: SpeedConfig) -> "BertPreTrainedModel":
        """Pick the implementations `speed` names in every module that has a choice; returns self.

        Every choice computes the same function, so a built (or trained) model may be switched:
        to compare speeds on one instance, or to trace the padded layout for export.
        """
        if not isinstance(self, _MaskedLMMixin):
            # A sparse lookup gradient is only ever summed into a tied decoder's dense one.
            speed = dataclasses.replace(speed, sparse_word_gradient=False)
        for module in self.modules():
            use_speed = getattr(module, "use_speed", None)
            if use_speed is not None:
                use_speed(speed)
        return self

    def post_init(self, speed: SpeedConfig) -> None:
        """The end of every model's __init__, once all its modules exist (transformers' name)."""
        self.init_weights()
        self.set_speed(speed)

    # The ModelOutput fields that return_dict=False returns, in transformers' tuple order.
    tuple_order: tuple[str, ...] = ("loss", "logits", "hidden_states", "attentions")

    def _refuse_unexpected(self, unexpected: dict[str, Any]) -> None:
        """A clear TypeError for a keyword forward() does not take, naming the ones it does."""
        if not unexpected:
            return
        name = next(iter(unexpected))
        accepted = [n for n, p in inspect.signature(self.forward).parameters.items() if p.kind is not p.VAR_KEYWORD]
        hint = (" (a tokenizer output for mapping tokens back to text, not a model input: leave the tokenizer's "
                "return_offsets_mapping / return_word_ids off, or remove it from the inputs)"
                if name in TOKENIZER_ONLY_KEYS else "")
        raise TypeError(f"{type(self).__name__}.forward() got an unexpected keyword argument '{name}'{hint}; "
                        f"it accepts {', '.join(accepted)}")

    def _returned(self, output: ModelOutput, encoded: Encoded, return_dict: bool | None):
        """Attach what the trace recorded; the ModelOutput, or (return_dict=False) transformers' tuple."""
        output.hidden_states, output.attentions = encoded.hidden_states, encoded.attentions
        return output if return_dict is None or return_dict else output.to_tuple(self.tuple_order)

    def num_parameters(self, exclude_embeddings: bool = False) -> int:
        params = {id(p): p for p in self.parameters()}  # tied weights count once
        total = sum(p.numel() for p in params.values())
        if exclude_embeddings:
            encoder = self if isinstance(self, BertModel) else self.bert
            total -= sum(p.numel() for p in encoder.embeddings.parameters())
        return total

    @classmethod
    def from_pretrained(cls, directory, config: BertConfig | None = None, *,
                        ignore_mismatched_heads: bool = False, speed: SpeedConfig | None = None,
                        **config_overrides: Any):
        """Load a HuggingFace-layout directory (config.json + model.safetensors or pytorch_model.bin).

        Head weights missing from the checkpoint are initialised and listed in
        `model.load_report`; anything else missing, unexpected or mis-shaped is an error.
        """
        model = load_pretrained(cls, directory, config=config, ignore_mismatched_heads=ignore_mismatched_heads,
                                **config_overrides)
        return model.set_speed(speed) if speed is not None else model

    def save_pretrained(self, directory) -> None:
        save_weights(self, directory)


# ----------------------------------------------------------------------------- BertModel


class BertModel(BertPreTrainedModel):
    """The bare encoder: embeddings, N post-LayerNorm Transformer layers, and the [CLS] pooler."""

    tuple_order = ("last_hidden_state", "pooler_output", "hidden_states", "attentions")

    def __init__(self, config: BertConfig, add_pooling_layer: bool = True, speed: SpeedConfig = SpeedConfig()):
        super().__init__()
        self.config = config
        self.embeddings = BertEmbeddings(config)
        self.encoder = BertEncoder(config)
        self.pooler = BertPooler(config) if add_pooling_layer else None
        self.speed = speed
        if type(self) is BertModel:  # inside a head model, the head's post_init does this
            self.post_init(speed)

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
               token_type_ids: torch.Tensor | None = None, keep: torch.Tensor | None = None,
               trace: Trace | None = None) -> Encoded:
        """Run the encoder; with unpadding on, the result is packed (real tokens only).

        keep: optional [B, S] bool, the positions whose final hidden state the caller reads (masked
        tokens for the MLM loss, say); the [CLS] positions are always kept. The last layer's
        token-wise part then runs on those tokens only. Ignored on the padded layout, and when
        `trace` asks for hidden states (they hold every position).
        trace: record per-layer hidden states / attention maps into Encoded.hidden_states / .attentions.
        """
        if trace is not None and trace.hidden_states is not None:
            keep = None
        encoded = self._encode(input_ids, attention_mask, token_type_ids, keep, trace)
        if trace is not None:
            layout = (lambda h: pad(h, encoded.padding)) if encoded.padding is not None else (lambda h: h)
            if trace.hidden_states is not None:
                encoded.hidden_states = tuple(layout(h) for h in trace.hidden_states)
            if trace.attentions is not None:
                encoded.attentions = tuple(trace.attentions)
        return encoded

    def _encode(self, input_ids, attention_mask, token_type_ids, keep, trace) -> Encoded:
        batch, seq = input_ids.shape
        if seq > self.config.max_position_embeddings:
            raise ValueError(f"sequence length {seq} exceeds max_position_embeddings "
                             f"{self.config.max_position_embeddings}")
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        position_ids = torch.arange(seq, device=input_ids.device).expand(batch, seq)
        padding = unpadding_for(attention_mask, batch, seq, input_ids.device) if self.speed.unpadding else None
        if padding is None:
            return self._encode_padded(input_ids, attention_mask, token_type_ids, position_ids, trace)
        return self._encode_packed(input_ids, token_type_ids, position_ids, padding, keep, trace)

    def _encode_padded(self, input_ids, attention_mask, token_type_ids, position_ids, trace) -> Encoded:
        sdpa_mask = None
        if attention_mask is not None and not bool(attention_mask.all()):
            sdpa_mask = attention_mask.bool()[:, None, None, :]
        hidden = self.embeddings(input_ids, token_type_ids, position_ids)
        hidden = self.encoder(hidden, None, sdpa_mask, trace=trace)
        return Encoded(hidden, None, hidden[:, 0])

    def _encode_packed(self, input_ids, token_type_ids, position_ids, padding: PaddingInfo, keep, trace) -> Encoded:
        hidden = self.embeddings(unpad(input_ids, padding), unpad(token_type_ids, padding),
                                 unpad(position_ids, padding))
        starts = padding.starts
        rows = None
        if keep is not None:
            keep = keep.bool().clone()
            keep[:, 0] = True
            rows = nonzero_index(unpad(keep, padding))
            starts = torch.searchsorted(rows, starts)  # where each [CLS] lands among the kept rows
        hidden = self.encoder(hidden, padding, padding.attention_mask, rows, trace)
        return Encoded(hidden, padding, hidden.index_select(0, starts), rows)

    def pool(self, encoded: Encoded) -> torch.Tensor | None:
        return self.pooler(encoded.first_token) if self.pooler is not None else None

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, *, output_attentions=None,
                output_hidden_states=None, return_dict=None, **unexpected):
        """As transformers' BertModel: a ModelOutput (or, return_dict=False, a tuple); unknown keywords
        are a TypeError naming them. Every head's forward takes the same three keywords."""
        self._refuse_unexpected(unexpected)
        encoded = self.encode(input_ids, attention_mask, token_type_ids,
                              trace=Trace.wanted(output_hidden_states, output_attentions))
        output = ModelOutput(last_hidden_state=encoded.padded(), pooler_output=self.pool(encoded))
        return self._returned(output, encoded, return_dict)


# ----------------------------------------------------------------------------- heads


class BertPredictionHeadTransform(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.act = activation(config.hidden_act)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.act(self.dense(hidden)))


class BertLMPredictionHead(nn.Module):
    """transform -> decoder tied to the word embeddings, with a bias of its own."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.transform = BertPredictionHeadTransform(config)
        self.decoder = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.bias = nn.Parameter(torch.zeros(config.vocab_size))

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return F.linear(self.transform(hidden), self.decoder.weight, self.bias)


class BertOnlyMLMHead(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.predictions = BertLMPredictionHead(config)


class BertPreTrainingHeads(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.predictions = BertLMPredictionHead(config)
        self.seq_relationship = nn.Linear(config.hidden_size, 2)


def _mean_or_normalised(loss_sum: torch.Tensor, count: torch.Tensor | int,
                        normalizer: float | torch.Tensor | None) -> torch.Tensor:
    """Sum / normalizer when the caller knows the whole (accumulated, global) batch's count.

    Averaging per micro-batch weights each micro-batch equally whatever its number of masked
    tokens, so accumulation would not equal one large batch; a global normaliser fixes that.
    """
    if normalizer is not None:
        return loss_sum / normalizer
    return loss_sum / (count if isinstance(count, int) else count.clamp(min=1))


class _MaskedLMMixin:
    """The masked-LM part shared by BertForPreTraining and BertForMaskedLM."""

    def tie_weights(self) -> None:
        self.cls.predictions.decoder.weight = self.bert.embeddings.word_embeddings.weight

    def _encode_for_masked_lm(self, input_ids, attention_mask, token_type_ids, labels, trace) -> Encoded:
        # With labels only the labelled positions (and [CLS]) need the last layer's output.
        keep = labels != IGNORE_INDEX if labels is not None and self.speed.last_layer_subset else None
        return self.bert.encode(input_ids, attention_mask, token_type_ids, keep=keep, trace=trace)

    def _masked_lm(self, encoded: Encoded, labels: torch.Tensor | None, normalizer, output: ModelOutput):
        head = self.cls.predictions
        if labels is None:
            output.prediction_logits = head(encoded.padded())
            return None
        flat_labels = encoded.select(labels)
        selected = nonzero_index(flat_labels != IGNORE_INDEX)
        masked_labels = flat_labels.index_select(0, selected)
        # The 30k-way decoder only where a prediction is scored: ~15% of tokens, ~6x less work.
        logits = head(encoded.hidden.reshape(-1, encoded.hidden.shape[-1]).index_select(0, selected))
        output.masked_logits, output.masked_labels = logits, masked_labels
        loss_sum = F.cross_entropy(logits.float(), masked_labels, reduction="sum")
        output.mlm_loss = _mean_or_normalised(loss_sum, masked_labels.numel(), normalizer)
        return output.mlm_loss


class BertForPreTraining(_MaskedLMMixin, BertPreTrainedModel):
    """Masked LM + next-sentence prediction; loss = MLM cross-entropy + NSP cross-entropy.

    With labels the decoder runs at the labelled positions only (masked_logits), so prediction_logits,
    and with it the tuple's second item, is there only without labels.
    """

    tuple_order = ("loss", "prediction_logits", "seq_relationship_logits", "hidden_states", "attentions")

    def __init__(self, config: BertConfig, speed: SpeedConfig = SpeedConfig()):
        super().__init__()
        self.config = config
        self.bert = BertModel(config, add_pooling_layer=True)
        self.cls = BertPreTrainingHeads(config)
        self.post_init(speed)

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, labels=None,
                next_sentence_label=None, mlm_normalizer=None, nsp_normalizer=None, *, output_attentions=None,
                output_hidden_states=None, return_dict=None, **unexpected):
        self._refuse_unexpected(unexpected)
        encoded = self._encode_for_masked_lm(input_ids, attention_mask, token_type_ids, labels,
                                             Trace.wanted(output_hidden_states, output_attentions))
        pooled = self.bert.pool(encoded)
        output = ModelOutput(pooler_output=pooled, seq_relationship_logits=self.cls.seq_relationship(pooled))
        mlm_loss = self._masked_lm(encoded, labels, mlm_normalizer, output)
        if next_sentence_label is not None:
            nsp_sum = F.cross_entropy(output.seq_relationship_logits.float(), next_sentence_label.view(-1),
                                      reduction="sum")
            output.nsp_loss = _mean_or_normalised(nsp_sum, next_sentence_label.numel(), nsp_normalizer)
        if mlm_loss is not None and output.nsp_loss is not None:
            output.loss = mlm_loss + output.nsp_loss
        return self._returned(output, encoded, return_dict)


class BertForMaskedLM(_MaskedLMMixin, BertPreTrainedModel):
    def __init__(self, config: BertConfig, speed: SpeedConfig = SpeedConfig()):
        super().__init__()
        self.config = config
        self.bert = BertModel(config, add_pooling_layer=False)
        self.cls = BertOnlyMLMHead(config)
        self.post_init(speed)

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, labels=None,
                mlm_normalizer=None, *, output_attentions=None, output_hidden_states=None,
                return_dict=None, **unexpected):
        """logits [B, S, V] without labels; with labels masked_logits at the labelled positions only."""
        self._refuse_unexpected(unexpected)
        encoded = self._encode_for_masked_lm(input_ids, attention_mask, token_type_ids, labels,
                                             Trace.wanted(output_hidden_states, output_attentions))
        output = ModelOutput()
        output.loss = self._masked_lm(encoded, labels, mlm_normalizer, output)
        if output.prediction_logits is not None:
            output.logits = output.prediction_logits
        return self._returned(output, encoded, return_dict)


def _classifier_dropout(config: BertConfig) -> float:
    return config.classifier_dropout if config.classifier_dropout is not None else config.hidden_dropout_prob


class BertForSequenceClassification(BertPreTrainedModel):
    """[CLS] pooled output -> dropout -> linear; cross-entropy, or MSE for regression (num_labels=1)."""

    def __init__(self, config: BertConfig, speed: SpeedConfig = SpeedConfig()):
        super().__init__()
        self.config = config
        self.num_labels = config.num_labels
        self.bert = BertModel(config, add_pooling_layer=True)
        self.dropout = BertDropout(_classifier_dropout(config))
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init(speed)

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, labels=None, *, output_attentions=None,
                output_hidden_states=None, return_dict=None, **unexpected):
        self._refuse_unexpected(unexpected)
        # Only [CLS] is read after the last layer (encode always keeps it).
        keep = torch.zeros_like(input_ids, dtype=torch.bool) if self.speed.last_layer_subset else None
        encoded = self.bert.encode(input_ids, attention_mask, token_type_ids, keep=keep,
                                   trace=Trace.wanted(output_hidden_states, output_attentions))
        pooled = self.bert.pool(encoded)
        logits = self.classifier(self.dropout(pooled))
        loss = None
        if labels is not None:
            if self.config.is_regression:
                loss = F.mse_loss(logits.float().view(-1), labels.float().view(-1))
            elif self.config.problem_type == "multi_label_classification":
                loss = F.binary_cross_entropy_with_logits(logits.float(), labels.float())
            else:
                loss = F.cross_entropy(logits.float(), labels.view(-1))
        return self._returned(ModelOutput(loss=loss, logits=logits, pooler_output=pooled), encoded, return_dict)


class BertForTokenClassification(BertPreTrainedModel):
    def __init__(self, config: BertConfig, speed: SpeedConfig = SpeedConfig()):
        super().__init__()
        self.config = config
        self.num_labels = config.num_labels
        self.bert = BertModel(config, add_pooling_layer=False)
        self.dropout = BertDropout(_classifier_dropout(config))
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init(speed)

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, labels=None, *, output_attentions=None,
                output_hidden_states=None, return_dict=None, **unexpected):
        self._refuse_unexpected(unexpected)
        encoded = self.bert.encode(input_ids, attention_mask, token_type_ids,
                                   trace=Trace.wanted(output_hidden_states, output_attentions))
        flat_logits = self.classifier(self.dropout(encoded.hidden))
        loss = None
        if labels is not None:
            loss = F.cross_entropy(flat_logits.float().reshape(-1, self.num_labels), encoded.select(labels).view(-1),
                                   ignore_index=IGNORE_INDEX)
        logits = pad(flat_logits, encoded.padding) if encoded.padding is not None else flat_logits
        return self._returned(ModelOutput(loss=loss, logits=logits), encoded, return_dict)


class BertForQuestionAnswering(BertPreTrainedModel):
    """Start/end logits over the tokens. Pad positions get -inf-like logits so they never win or enter the loss."""

    tuple_order = ("loss", "start_logits", "end_logits", "hidden_states", "attentions")

    def __init__(self, config: BertConfig, speed: SpeedConfig = SpeedConfig()):
        super().__init__()
        if config.num_labels != 2 or config.id2label:
            # transformers sizes qa_outputs by num_labels; a span head has exactly two (start, end).
            config = dataclasses.replace(config, num_labels=2, id2label=None)
        self.config = config
        self.bert = BertModel(config, add_pooling_layer=False)
        self.qa_outputs = nn.Linear(config.hidden_size, 2)
        self.post_init(speed)

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, start_positions=None,
                end_positions=None, *, output_attentions=None, output_hidden_states=None,
                return_dict=None, **unexpected):
        self._refuse_unexpected(unexpected)
        encoded = self.bert.encode(input_ids, attention_mask, token_type_ids,
                                   trace=Trace.wanted(output_hidden_states, output_attentions))
        logits = self.qa_outputs(encoded.hidden)
        if encoded.padding is not None:
            logits = pad(logits, encoded.padding)
        if attention_mask is not None:
            logits = logits.masked_fill(~attention_mask.bool()[..., None], torch.finfo(logits.dtype).min)
        start_logits, end_logits = logits.float().unbind(dim=-1)
        loss = None
        if start_positions is not None and end_positions is not None:
            # As transformers: positions outside the sequence are clamped and ignored.
            seq = start_logits.shape[1]
            start = start_positions.view(-1).clamp(0, seq)
            end = end_positions.view(-1).clamp(0, seq)
            loss = (F.cross_entropy(start_logits, start, ignore_index=seq)
                    + F.cross_entropy(end_logits, end, ignore_index=seq)) / 2
        output = ModelOutput(loss=loss, start_logits=start_logits, end_logits=end_logits)
        return self._returned(output, encoded, return_dict)


MODEL_CLASSES: dict[str, type[BertPreTrainedModel]] = {
    cls.__name__: cls for cls in (BertModel, BertForPreTraining, BertForMaskedLM, BertForSequenceClassification,
                                  BertForTokenClassification, BertForQuestionAnswering)
}


__all__ = [name for name in MODEL_CLASSES] + ["BertPreTrainedModel", "ModelOutput", "MODEL_CLASSES"]
