"""Model inputs of any task: a `Features` table (a map-style dataset: row i is a dict of lists/ints) and
`collate`, which pads a list of rows into the tensors the model heads take, so any training loop can
batch any task; plus the logits helpers the decoders share."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

from onebert.model.config import IGNORE_INDEX  # noqa: E402  (one definition, beside the model's loss)

# Per-row targets: token-level lists are padded with IGNORE_INDEX; scalars are stacked.
_TOKEN_TARGETS = ("labels",)


@dataclass
class Features:
    """Model inputs of one task, one row per sequence (a window for QA and long NER sentences).

    `columns` holds the tensors' contents (input_ids, token_type_ids and the training targets);
    `example_index[i]` is the example row i came from. Subclasses add what decoding needs.
    """

    columns: dict[str, list[Any]] = field(default_factory=dict)
    example_index: list[int] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.columns["input_ids"])

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {name: values[i] for name, values in self.columns.items()}

    def lengths(self) -> list[int]:
        """Tokens per row: sort or bucket by these to keep padding small."""
        return [len(ids) for ids in self.columns["input_ids"]]


def collate(rows: Sequence[dict[str, Any]], pad_token_id: int = 0, pad_to_multiple_of: int | None = None) -> dict:
    """Pad rows from `Features` into LongTensors [B, S] plus attention_mask; float regression labels stay float.

    Token-level `labels` (lists) are padded with -100, scalar targets (class id, regression value,
    start/end positions) are stacked.
    """
    import torch

    length = max(len(row["input_ids"]) for row in rows)
    if pad_to_multiple_of:
        length = -(-length // pad_to_multiple_of) * pad_to_multiple_of
    batch: dict[str, torch.Tensor] = {}
    input_ids = torch.full((len(rows), length), pad_token_id, dtype=torch.long)
    token_type_ids = torch.zeros((len(rows), length), dtype=torch.long)
    attention_mask = torch.zeros((len(rows), length), dtype=torch.long)
    for i, row in enumerate(rows):
        n = len(row["input_ids"])
        input_ids[i, :n] = torch.tensor(row["input_ids"], dtype=torch.long)
        if "token_type_ids" in row:
            token_type_ids[i, :n] = torch.tensor(row["token_type_ids"], dtype=torch.long)
        attention_mask[i, :n] = 1
    batch.update(input_ids=input_ids, token_type_ids=token_type_ids, attention_mask=attention_mask)
    for name in rows[0]:
        if name in ("input_ids", "token_type_ids"):
            continue
        values = [row[name] for row in rows]
        if name in _TOKEN_TARGETS and isinstance(values[0], list):
            padded = torch.full((len(rows), length), IGNORE_INDEX, dtype=torch.long)
            for i, value in enumerate(values):
                padded[i, :len(value)] = torch.tensor(value, dtype=torch.long)
            batch[name] = padded
        elif isinstance(values[0], float):
            batch[name] = torch.tensor(values, dtype=torch.float32)
        else:
            batch[name] = torch.tensor(values, dtype=torch.long)
    return batch


def to_numpy(array: Any):
    """Logits from torch (any dtype, any device) or numpy as a float32 numpy array."""
    import numpy as np

    if hasattr(array, "detach"):
        array = array.detach().float().cpu().numpy()
    return np.asarray(array, dtype=np.float32)


def logit_rows(logits: Any, row_ndim: int) -> list:
    """Per-row float32 numpy arrays from one array [N, ...] or a list of per-batch arrays [B_i, ...]
    (batches may be padded to different lengths) or of per-row arrays. row_ndim: dimensions of one row."""
    if isinstance(logits, (list, tuple)):
        rows: list = []
        for part in logits:
            part = to_numpy(part)
            if part.ndim == row_ndim:
                rows.append(part)
            elif part.ndim == row_ndim + 1:
                rows.extend(part)
            else:
                raise ValueError(f"expected arrays of {row_ndim} or {row_ndim + 1} dimensions, got {part.shape}")
        return rows
    array = to_numpy(logits)
    if array.ndim != row_ndim + 1:
        raise ValueError(f"expected an array with {row_ndim + 1} dimensions, got shape {array.shape}")
    return list(array)

