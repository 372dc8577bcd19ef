"""The speed tricks the BERT layers call: small named helpers, each switchable by `SpeedConfig`.

Unpadding (MosaicML's bert_padding, in torch). Everything in a BERT layer except attention works
token by token, so on a batch with padding the dense layers, GELU and LayerNorms run on a packed
[total_tokens, hidden] tensor and skip the pad positions entirely. Attention mixes tokens of one
sequence only, so it too can run on the packed tensor, one sequence at a time (`packed_attention`):
no pad positions, no mask, and no gather/scatter back to [batch, seq] in every layer. `pad` and
`unpad` move between the two layouts where a caller needs [batch, seq] (the padded-attention
kernel, and outputs such as last_hidden_state).

Attention kernels (`ATTENTION_KERNELS`): `BertSelfAttention` picks one at construction, keyed by
`SpeedConfig.attention`, as transformers picks `BERT_SELF_ATTENTION_CLASSES[config._attn_implementation]`.
They are functions rather than attention classes because the classes would differ only in these
few lines, and the Q/K/V Linear layers (whose names every checkpoint uses) stay in one place.
Each kernel takes either layout, because a batch whose [CLS] is not at position 0 (left padding)
stays padded whatever the settings (`unpadding_for`). What the device and torch.compile need is
decided at run time, in one place each: `auto_attention` (packed on CPU, SDPA elsewhere) and
`packed_or_sdpa_attention` (a compiled graph traces SDPA).

Also here: the fast dropout (`BertDropout`), the sparse word-lookup gradient
(`word_embedding_lookup`), and the encoder output in either layout (`Encoded`).
"""

from __future__ import annotations

import functools
import math
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import torch
import torch.nn.functional as F
from torch import nn

if TYPE_CHECKING:
    from onebert.model.config import SpeedConfig


# ----------------------------------------------------------------------------- compile boundaries


def eager_when_compiled(fn: Callable) -> Callable:
    """`torch.compiler.disable` without its import-time cost: a graph break under torch.compile, a plain call otherwise.

    torch.compiler.disable imports torch._dynamo when it decorates (1-1.5 s, on every onebert command
    that loads a model, although only `--compile` traces anything). torch.compile imports torch._dynamo
    before it traces, so while it is not imported nothing can be tracing this call: call `fn` as it is.
    Once it is, the call goes through dynamo's disabled wrapper, made once.
    """
    disabled: list[Callable] = []

    @functools.wraps(fn)
    def call(*args, **kwargs):
        dynamo = sys.modules.get("torch._dynamo")
        if dynamo is None:
            return fn(*args, **kwargs)
        if not disabled:
            disabled.append(dynamo.disable(fn))
        return disabled[0](*args, **kwargs)

    return call


# ----------------------------------------------------------------------------- unpadding


@dataclass
class PaddingInfo:
    """Where the real tokens of a padded [batch, seq] batch live in its packed layout."""

    indices: torch.Tensor  # [total_tokens] flat positions of real tokens in batch * seq
    batch_size: int
    seq_len: int
    attention_mask: torch.Tensor | None  # [batch, 1, 1, seq] bool, True = attend (SDPA); None: no padding
    lengths: list[int]  # real tokens per row, on the host: the packed layout's segment sizes
    starts: torch.Tensor  # [batch] where each row begins in the packed layout (its [CLS])

    @property
    def total_tokens(self) -> int:
        return self.indices.numel()


@eager_when_compiled
def padding_info(attention_mask: torch.Tensor, device: torch.device | str | None = None) -> PaddingInfo:
    """Index of the real tokens, and their count per row.

    The mask goes to the host once: that copy is the one host-device sync of an unpadded forward
    (the packed layout's size depends on it), and both the index and the lengths come from it.
    Pass a mask that is already on the host, with the model's `device`, to skip even that.
    Under torch.compile this runs eagerly (a graph break) and marks the packed size dynamic, so a
    compiled encoder is traced once for all batches rather than once per token count.
    """
    device = attention_mask.device if device is None else device
    batch_size, seq_len = attention_mask.shape
    host_mask = attention_mask.detach().to("cpu", torch.bool)
    row_lengths = host_mask.sum(dim=1)
    lengths = row_lengths.tolist()
    indices = nonzero_index(host_mask.reshape(-1)).to(device)
    starts = (torch.cumsum(row_lengths, 0) - row_lengths).to(device)
    sdpa_mask = None if min(lengths) == seq_len else host_mask.to(device)[:, None, None, :]
    return PaddingInfo(indices, batch_size, seq_len, sdpa_mask, lengths, starts)


@eager_when_compiled
def unpadding_for(attention_mask: torch.Tensor | None, batch: int, seq: int,
                  device: torch.device) -> PaddingInfo | None:
    """The packed layout for this batch, or None where the padded layout must stay.

    Unpadding needs position 0 real in every row (right padding, the usual case), so that the
    pooler's [CLS] is a packed token. Runs eagerly under torch.compile: it reads the mask on the host.
    """
    host_mask = (attention_mask.detach().to("cpu", torch.bool) if attention_mask is not None
                 else torch.ones(batch, seq, dtype=torch.bool))
    if not bool(host_mask[:, 0].all()):
        return None
    return padding_info(host_mask, device=device)


@eager_when_compiled
def nonzero_index(mask: torch.Tensor) -> torch.Tensor:
    """Positions where a 1-d bool mask is True; its size depends on the data, so it is marked dynamic."""
    index = torch.nonzero(mask, as_tuple=False).flatten()
    dynamo = sys.modules.get("torch._dynamo")
    if dynamo is not None:  # a compiled graph then takes any token count (see eager_when_compiled)
        dynamo.maybe_mark_dynamic(index, 0)
    return index


def unpad(hidden: torch.Tensor, info: PaddingInfo) -> torch.Tensor:
    """[batch, seq, ...] -> [total_tokens, ...]."""
    return hidden.reshape(info.batch_size * info.seq_len, *hidden.shape[2:]).index_select(0, info.indices)


def pad(packed: torch.Tensor, info: PaddingInfo) -> torch.Tensor:
    """[total_tokens, ...] -> [batch, seq, ...] with zeros at the pad positions."""
    out = packed.new_zeros(info.batch_size * info.seq_len, *packed.shape[1:])
    out = out.index_copy(0, info.indices, packed)
    return out.reshape(info.batch_size, info.seq_len, *packed.shape[1:])


@dataclass
class Encoded:
    """The encoder's output as the heads want it: packed when unpadded, so heads skip pads too."""

    hidden: torch.Tensor  # [tokens, H] when padding is not None, else [B, S, H]
    padding: PaddingInfo | None
    first_token: torch.Tensor  # [B, H], the [CLS] states
    rows: torch.Tensor | None = None  # when set, `hidden` holds only these packed tokens (`keep`)
    # With output_hidden_states / output_attentions: [B, S, H] per layer (embeddings first) and
    # [B, heads, S, S] per layer, as transformers returns them; None when not asked for.
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None

    def padded(self) -> torch.Tensor:
        if self.rows is not None:
            raise ValueError("the encoder ran its last layer on a subset of the tokens (keep=...); "
                             "there is no full [batch, seq] output to return")
        return pad(self.hidden, self.padding) if self.padding is not None else self.hidden

    def select(self, values: torch.Tensor) -> torch.Tensor:
        """Bring a per-position tensor [B, S, ...] (labels, say) into the hidden state's layout."""
        if self.padding is None:
            return values.reshape(-1, *values.shape[2:])
        packed = unpad(values, self.padding)
        return packed.index_select(0, self.rows) if self.rows is not None else packed


# ----------------------------------------------------------------------------- attention kernels


def packed_attention(qkv: torch.Tensor, lengths: list[int], num_heads: int,
                     dropout: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
    """Softmax attention of every sequence over its own tokens: [tokens, 3*H] -> [tokens, H].

    `qkv` holds each token's query, key and value projections side by side, sequences one after
    the other (`lengths` tokens each). Working sequence by sequence costs sum(L^2) instead of
    batch * seq^2 and needs no mask; neighbouring sequences of equal length share one batched
    product. `split`/`cat` keep the backward a single copy each way. `dropout`, when given, is
    applied to the attention probabilities (a module such as nn.Dropout(p) in training mode). Measured on CPU this beats
    padding back to [batch, seq] for SDPA in every layer, whose index_copy/index_add pair alone
    took a tenth of a base-size training step.
    """
    hidden = qkv.shape[-1] // 3
    head_dim = hidden // num_heads
    scale = head_dim ** -0.5
    runs: list[tuple[int, int]] = []  # (length, number of consecutive sequences with it)
    for length in lengths:
        if runs and runs[-1][0] == length:
            runs[-1] = (length, runs[-1][1] + 1)
        else:
            runs.append((length, 1))
    outputs = []
    for (length, count), segment in zip(runs, qkv.split([length * count for length, count in runs])):
        q, k, v = segment.view(count, length, 3, num_heads, head_dim).permute(2, 0, 3, 1, 4)  # [count, heads, L, d]
        probs = torch.matmul(q * scale, k.transpose(-1, -2)).softmax(dim=-1)
        if dropout is not None:
            probs = dropout(probs)
        outputs.append(torch.matmul(probs, v).transpose(1, 2).reshape(count * length, hidden))
    return torch.cat(outputs) if len(outputs) > 1 else outputs[0]


def sdpa_attention(qkv: torch.Tensor, padding: PaddingInfo | None, attention_mask: torch.Tensor | None,
                   num_heads: int, dropout: nn.Dropout | None) -> torch.Tensor:
    """torch's scaled_dot_product_attention on [batch, seq]; packed tokens are padded back for it."""
    if padding is not None:
        qkv = pad(qkv, padding)
    batch, seq, width = qkv.shape
    qkv = qkv.view(batch, seq, 3, num_heads, width // (3 * num_heads)).permute(2, 0, 3, 1, 4)
    context = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2], attn_mask=attention_mask,
                                             dropout_p=dropout.p if dropout is not None else 0.0)
    context = context.transpose(1, 2).reshape(batch, seq, width // 3)
    return unpad(context, padding) if padding is not None else context


def eager_attention(qkv: torch.Tensor, padding: PaddingInfo | None, attention_mask: torch.Tensor | None,
                    num_heads: int, dropout: nn.Dropout | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax attention written out, for `output_attentions`: (context, probabilities [B, heads, S, S]).

    The fused kernels (SDPA, `packed_attention`) never materialise a [B, heads, S, S] map in the
    padded layout, so a call that asks for the maps runs this one instead, in every layer, in either
    layout (packed tokens are padded for it and the context unpadded again, so the rest of the
    layer is unchanged). As transformers' eager attention: masked keys get probability 0, and the
    probabilities returned are those the values were weighted with (after dropout, in training).
    Rows of pad queries are not meaningful (on the packed layout their query is zero: uniform rows).
    """
    if padding is not None:
        qkv = pad(qkv, padding)
    batch, seq, width = qkv.shape
    q, k, v = qkv.view(batch, seq, 3, num_heads, width // (3 * num_heads)).permute(2, 0, 3, 1, 4)
    scores = torch.matmul(q, k.transpose(-1, -2)) * (q.shape[-1] ** -0.5)
    if attention_mask is not None:
        scores = scores.masked_fill(~attention_mask, torch.finfo(scores.dtype).min)
    probs = scores.softmax(dim=-1)
    if dropout is not None:
        probs = dropout(probs)
    context = torch.matmul(probs, v).transpose(1, 2).reshape(batch, seq, width // 3)
    return (unpad(context, padding) if padding is not None else context), probs


def packed_or_sdpa_attention(qkv: torch.Tensor, padding: PaddingInfo | None, attention_mask: torch.Tensor | None,
                             num_heads: int, dropout: nn.Dropout | None) -> torch.Tensor:
    """`packed_attention` on a packed batch; SDPA on a padded one, and under torch.compile, which
    traces the padded form: the per-sequence loop would tie the graph to each batch's lengths and
    recompile for every new batch."""
    if padding is None or torch.compiler.is_compiling():
        return sdpa_attention(qkv, padding, attention_mask, num_heads, dropout)
    return packed_attention(qkv, padding.lengths, num_heads, dropout)


def auto_attention(qkv: torch.Tensor, padding: PaddingInfo | None, attention_mask: torch.Tensor | None,
                   num_heads: int, dropout: nn.Dropout | None) -> torch.Tensor:
    """Packed on CPU, where it measured faster than SDPA's pad/unpad pair; SDPA on accelerators,
    whose fused masked kernels avoid one small launch per sequence."""
    kernel = packed_or_sdpa_attention if qkv.device.type == "cpu" else sdpa_attention
    return kernel(qkv, padding, attention_mask, num_heads, dropout)


AttentionKernel = Callable[[torch.Tensor, "PaddingInfo | None", "torch.Tensor | None", int, "nn.Dropout | None"],
                           torch.Tensor]
# Keyed by SpeedConfig.attention: [tokens or batch x seq, 3*H] Q|K|V -> [same, H] context.
ATTENTION_KERNELS: dict[str, AttentionKernel] = {
    "sdpa": sdpa_attention,
    "packed": packed_or_sdpa_attention,
    "auto": auto_attention,
}


# ----------------------------------------------------------------------------- dropout


class _MaskedScale(torch.autograd.Function):
    """x * keep * scale, saving only the bool mask for the backward (as native dropout does)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, keep: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.save_for_backward(keep)
        ctx.scale = scale
        # The kernel native dropout's backward uses: one fused pass, where x * keep would first
        # cast the bool mask element by element.
        return torch.ops.aten.native_dropout_backward(x, keep, scale)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (keep,) = ctx.saved_tensors
        return torch.ops.aten.native_dropout_backward(grad, keep, ctx.scale), None, None


def dropout_keep_mask(shape: torch.Size, p: float, device: torch.device) -> tuple[torch.Tensor, float]:
    """A Bernoulli keep-mask from 16 random bits per element, and the matching 1 / keep-rate.

    torch's CPU bernoulli_ spends ~6 ns per element; four 16-bit draws from one 64-bit random_
    cost a fifth of that. The drop rate is p rounded to a multiple of 1/65536 (0.1 becomes
    0.100006) and the scale uses that exact rate, so the expectation is unchanged.
    """
    count = math.prod(shape)
    bits = torch.empty((count + 3) // 4, dtype=torch.int64, device=device).random_(-2**63, None)
    dropped = round(p * 65536)
    keep = bits.view(torch.int16)[:count].view(shape) >= -32768 + dropped
    return keep, 65536 / (65536 - dropped)


def fast_dropout(x: torch.Tensor, p: float) -> torch.Tensor:
    """Training-mode dropout with `dropout_keep_mask` on CPU. CUDA and torch.compile keep
    F.dropout: their fused kernels generate the mask in place already."""
    if x.device.type == "cpu" and not torch.compiler.is_compiling():
        keep, scale = dropout_keep_mask(x.shape, p, x.device)
        return _MaskedScale.apply(x, keep, scale)
    return F.dropout(x, p, training=True)


def torch_dropout(x: torch.Tensor, p: float) -> torch.Tensor:
    return F.dropout(x, p, training=True)


class BertDropout(nn.Dropout):
    """nn.Dropout whose training-mode op is `fast_dropout` (default) or torch's (`SpeedConfig.fast_dropout`)."""

    def __init__(self, p: float = 0.5):
        super().__init__(p)
        self.drop = fast_dropout

    def use_speed(self, speed: SpeedConfig) -> None:
        self.drop = fast_dropout if speed.fast_dropout else torch_dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        return self.drop(x, self.p)


# ----------------------------------------------------------------------------- sparse word gradient


def _densify_gradient(parameter: torch.Tensor) -> None:
    if parameter.grad is not None and parameter.grad.is_sparse:
        parameter.grad = parameter.grad.to_dense()


def allow_sparse_gradient(weight: nn.Parameter) -> None:
    """Let `weight` receive a sparse gradient, densified once accumulated, so optimizers never
    see one (fused AdamW refuses them). Registers its hook once however often it is called."""
    if not getattr(weight, "_onebert_densify_hook", False):
        weight.register_post_accumulate_grad_hook(_densify_gradient)
        weight._onebert_densify_hook = True


def word_embedding_lookup(input_ids: torch.Tensor, table: nn.Embedding, sparse: bool) -> torch.Tensor:
    """The word lookup, with a sparse gradient when `sparse` (only for a table tied to a decoder).

    A dense lookup gradient is a zero-filled [vocab, hidden] matrix with a few hundred rows set,
    which autograd then adds in full to the tied decoder's dense gradient; a sparse one adds just
    those rows (5% of a bf16 base pretraining step on CPU). The summed gradient is dense whenever
    the decoder is part of the loss; `allow_sparse_gradient`'s hook densifies it otherwise.
    torch.compile cannot trace sparse gradients: compiled graphs use the dense lookup.
    """
    sparse = sparse and torch.is_grad_enabled() and not torch.compiler.is_compiling()
    return F.embedding(input_ids, table.weight, table.padding_idx, sparse=sparse)
