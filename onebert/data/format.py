"""The on-disk format of a prepared pretraining data directory, shared by its writer and its reader.

The writer is `onebert.data.prepare` (`onebert prepare`), the reader `onebert.data.shards`; both
import the names and helpers here, and neither imports the other for them.

Layout::

    DATA_DIR/metadata.json               format, version, tokenizer fingerprint, settings, counts, shard list
    DATA_DIR/tokenizer/                  the tokenizer the ids come from (save_pretrained layout)
    DATA_DIR/shards/train-00000.tokens.npy     uint16 (int32 for vocabularies > 65535), all instances
    DATA_DIR/shards/train-00000.offsets.npy    int64 [n+1]: instance i is tokens[offsets[i]:offsets[i+1]]
    DATA_DIR/shards/train-00000.a_lengths.npy  uint16 [n]: tokens in segment A
    DATA_DIR/shards/train-00000.labels.npy     uint8 [n]: 0 IsNext, 1 NotNext
    DATA_DIR/shards/validation-00000.*.npy     the held-out documents' instances, same layout
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

FORMAT_NAME = "onebert-pretraining-data"
FORMAT_VERSION = 1
METADATA_FILE = "metadata.json"
TOKENIZER_DIR = "tokenizer"
SHARD_DIR = "shards"
SHARD_FIELDS = ("tokens", "offsets", "a_lengths", "labels")


def tokenizer_fingerprint(tokenizer) -> str:
    """SHA-256 of the vocabulary in id order: equal exactly when token ids mean the same tokens."""
    tokens = tokenizer.convert_ids_to_tokens(range(tokenizer.vocab_size))
    return hashlib.sha256("\n".join(tokens).encode("utf-8")).hexdigest()


def shard_file(directory: Path, name: str, field: str) -> Path:
    return directory / SHARD_DIR / f"{name}.{field}.npy"


def write_shard(directory: Path, name: str, arrays: dict[str, np.ndarray]) -> str:
    """Write one shard's arrays (each file atomically) and return a SHA-256 of their contents."""
    from onebert.io_utils import atomic_path

    digest = hashlib.sha256()
    for field in SHARD_FIELDS:
        array = np.ascontiguousarray(arrays[field])
        digest.update(field.encode())
        digest.update(str(array.dtype).encode())
        digest.update(array.tobytes())
        with atomic_path(shard_file(directory, name, field)) as tmp:
            with open(tmp, "wb") as handle:
                np.save(handle, array, allow_pickle=False)
    return digest.hexdigest()


__all__ = ["FORMAT_NAME", "FORMAT_VERSION", "METADATA_FILE", "SHARD_DIR", "SHARD_FIELDS", "TOKENIZER_DIR",
           "shard_file", "tokenizer_fingerprint", "write_shard"]
