"""Unpadding: run the token-wise layers on real tokens only (MosaicML's bert_padding, in torch).

Everything in a BERT layer except attention works token by token, so on a batch with padding
the dense layers, GELU and LayerNorms can run on a packed [total_tokens, hidden] tensor and skip
the pad positions entirely. Attention needs the [batch, seq] layout back for
`scaled_dot_product_attention`; `pad` and `unpad` move between the two with one gather/scatter.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class PaddingInfo:
    """Where the real tokens of a padded [batch, seq] batch live in its packed layout."""

    indices: torch.Tensor  # [total_tokens] flat positions of real tokens in batch * seq
    batch_size: int
    seq_len: int
    attention_mask: torch.Tensor  # [batch, 1, 1, seq] bool, True = attend (for SDPA)

    @property
    def total_tokens(self) -> int:
        return self.indices.numel()


def padding_info(attention_mask: torch.Tensor) -> PaddingInfo:
    """Index of the real tokens. This is the one host-device sync of an unpadded forward (nonzero)."""
    batch_size, seq_len = attention_mask.shape
    flat = attention_mask.reshape(-1).bool()
    indices = torch.nonzero(flat, as_tuple=False).flatten()
    return PaddingInfo(indices, batch_size, seq_len, attention_mask.bool()[:, None, None, :])


def unpad(hidden: torch.Tensor, info: PaddingInfo) -> torch.Tensor:
    """[batch, seq, ...] -> [total_tokens, ...]."""
    return hidden.reshape(info.batch_size * info.seq_len, *hidden.shape[2:]).index_select(0, info.indices)


def pad(packed: torch.Tensor, info: PaddingInfo) -> torch.Tensor:
    """[total_tokens, ...] -> [batch, seq, ...] with zeros at the pad positions."""
    out = packed.new_zeros(info.batch_size * info.seq_len, *packed.shape[1:])
    out = out.index_copy(0, info.indices, packed)
    return out.reshape(info.batch_size, info.seq_len, *packed.shape[1:])
