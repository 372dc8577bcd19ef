"""Model FLOPs of BERT work, counted over real tokens only: the numerator of MFU.

Useful work, not executed work: padding, the MLM decoder at unscored positions and the last
layer at positions no head reads do not count (the unpadded model skips them; transformers
executes them, see benchmarks/bench_speed.py's reference_flops).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from onebert.model.config import BertConfig


def training_flops(config: BertConfig, lengths: torch.Tensor | list[int], masked_tokens: int,
                   last_layer_tokens: int | None = None) -> float:
    """Model FLOPs of one forward + backward pass over real tokens only (padding excluded).

    Per token, each weight does a multiply-add forward and two backward: 6 FLOPs per weight.
    Attention adds QK^T and AV: 2 * 2 * L * H per token per layer forward (L = that sequence's
    length), times 3 with the backward. The MLM head counts at the masked positions only,
    since that is all that is useful work.

    last_layer_tokens: how many tokens' final states a head reads (masked + [CLS] for
    pretraining, [CLS] for classification). The last layer then needs K and V at every token but
    its query, attention output and feed-forward only at those; None counts the whole last layer.
    """
    lengths_t = torch.as_tensor(lengths, dtype=torch.float64)
    tokens = float(lengths_t.sum())
    h, i, n = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    per_layer_weights = 4 * h * h + 2 * h * i
    encoder = 6 * n * per_layer_weights * tokens
    attention = 3 * 4 * n * h * float((lengths_t ** 2).sum())
    if last_layer_tokens is not None and tokens > 0:
        skipped = tokens - last_layer_tokens
        encoder -= 6 * (2 * h * h + 2 * h * i) * skipped  # query, output projection, feed-forward
        attention -= 3 * 4 * h * float((lengths_t ** 2).sum()) * skipped / tokens  # their queries' rows
    mlm_head = 6 * (h * h + h * config.vocab_size) * masked_tokens
    pooler_nsp = 6 * (h * h + 2 * h) * len(lengths_t)
    return encoder + attention + mlm_head + pooler_nsp


def inference_flops(config: BertConfig, lengths: torch.Tensor | list[int], last_layer_tokens: int | None = None) -> float:
    """Forward-only FLOPs of the encoder over real tokens (a third of the training count, no MLM head)."""
    return training_flops(config, lengths, masked_tokens=0, last_layer_tokens=last_layer_tokens) / 3
