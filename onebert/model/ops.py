"""Unpadding: run the encoder on real tokens only (MosaicML's bert_padding, in torch).

Everything in a BERT layer except attention works token by token, so on a batch with padding
the dense layers, GELU and LayerNorms run on a packed [total_tokens, hidden] tensor and skip the
pad positions entirely. Attention mixes tokens of one sequence only, so it too can run on the
packed tensor, one sequence at a time (`packed_attention`): no pad positions, no mask, and no
gather/scatter back to [batch, seq] in every layer. `pad` and `unpad` move between the two
layouts where a caller needs [batch, seq] (the padded-attention path kept for comparison, and
outputs such as last_hidden_state).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch


@dataclass
class PaddingInfo:
    """Where the real tokens of a padded [batch, seq] batch live in its packed layout."""

    indices: torch.Tensor  # [total_tokens] flat positions of real tokens in batch * seq
    batch_size: int
    seq_len: int
    attention_mask: torch.Tensor | None  # [batch, 1, 1, seq] bool, True = attend (SDPA); None: no padding
    lengths: list[int]  # real tokens per row, on the host: the packed layout's segment sizes
    starts: torch.Tensor  # [batch] where each row begins in the packed layout (its [CLS])
    packed_attention: bool = True  # attention per sequence on packed tokens, else pad -> SDPA -> unpad

    @property
    def total_tokens(self) -> int:
        return self.indices.numel()


@torch.compiler.disable
def padding_info(attention_mask: torch.Tensor, packed_attention: bool = True,
                 device: torch.device | str | None = None) -> PaddingInfo:
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
    return PaddingInfo(indices, batch_size, seq_len, sdpa_mask, lengths, starts, packed_attention)


@torch.compiler.disable
def nonzero_index(mask: torch.Tensor) -> torch.Tensor:
    """Positions where a 1-d bool mask is True; its size depends on the data, so it is marked dynamic."""
    index = torch.nonzero(mask, as_tuple=False).flatten()
    torch._dynamo.maybe_mark_dynamic(index, 0)
    return index


def unpad(hidden: torch.Tensor, info: PaddingInfo) -> torch.Tensor:
    """[batch, seq, ...] -> [total_tokens, ...]."""
    return hidden.reshape(info.batch_size * info.seq_len, *hidden.shape[2:]).index_select(0, info.indices)


def pad(packed: torch.Tensor, info: PaddingInfo) -> torch.Tensor:
    """[total_tokens, ...] -> [batch, seq, ...] with zeros at the pad positions."""
    out = packed.new_zeros(info.batch_size * info.seq_len, *packed.shape[1:])
    out = out.index_copy(0, info.indices, packed)
    return out.reshape(info.batch_size, info.seq_len, *packed.shape[1:])


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
