"""A prepared pretraining data directory: shard files on disk, shuffled batches, exact positions.

The layout written by `onebert prepare` is described in `onebert.data.format`.

Every array is memory-mapped, so opening a data directory costs no memory in proportion to
the corpus, and a batch reads only its own instances.

Order: each epoch visits the training instances in a pseudo-random permutation of *all* of
them (a keyed Feistel network, `permuted_indices`, evaluated on demand: uniform global shuffling
in O(1) memory). Global batch g of an epoch is permutation positions [g*B*W, (g+1)*B*W) for
batch size B and W ranks; rank r takes the r-th slice of B. So ranks read disjoint data, every
rank has the same number of batches (the last incomplete global batch of an epoch is dropped;
the permutation changes every epoch so nothing is always dropped), and W ranks with batch B see
exactly the instances one rank with batch W*B sees. The position (epoch, batch) is the whole
state: resuming from it replays exactly the remaining batches.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from onebert.data.format import (FORMAT_NAME, FORMAT_VERSION, METADATA_FILE, SHARD_DIR, SHARD_FIELDS, TOKENIZER_DIR,
                                 shard_file, tokenizer_fingerprint)
from onebert.data.masking import MaskingConfig, MaskingVocab, hash_key, mask_tokens, splitmix64
from onebert.errors import OneBertError, show_value

SPLITS = ("train", "validation")
# Validation instances get ids in their own range so their masks never coincide with training masks.
VALIDATION_ID_OFFSET = 1 << 48
# Shard names come from metadata.json, which may come from anyone: a plain file name, so that
# "../..", "/abs" or "C:" can never make the reader open .npy files outside DATA_DIR/shards.
SHARD_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")


_KIND_NAMES = {dict: "an object", list: "a list", str: "a string", int: "an integer"}


def _field(meta_file: Path, parent: dict, where: str, key: str, kind: type, *, minimum: int | None = None) -> Any:
    """parent[key] checked to be of `kind` (and >= `minimum`), else a one-line error naming the file and the field."""
    shown_key = key if re.fullmatch(r"\w{1,40}", key) else show_value(key, 40)  # keys are untrusted text too
    name = f"{where}.{shown_key}" if where else shown_key
    if key not in parent:
        raise OneBertError(f"{meta_file}: field '{name}' is missing (not a complete data directory; "
                           f"run `onebert prepare` again)")
    value = parent[key]
    # bool is an int subclass, but `true` is no count
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise OneBertError(f"{meta_file}: field '{name}' must be {_KIND_NAMES[kind]}, got {show_value(value)}")
    if minimum is not None and value < minimum:
        raise OneBertError(f"{meta_file}: field '{name}' must be >= {minimum}, got {value}")
    return value


def check_metadata(meta_file: Path, metadata: dict[str, Any]) -> None:
    """Check the type of every field that reading the data directory uses, before any shard file is opened.

    metadata.json may have been edited or come from elsewhere: a missing or mistyped field is a
    one-line error naming it, never a KeyError or TypeError deep in the training loop.
    """
    splits = _field(meta_file, metadata, "", "splits", dict)
    for split in SPLITS:
        if split == "validation" and split not in splits:
            continue  # optional: a directory prepared without held-out documents
        entry = _field(meta_file, splits, "splits", split, dict)
        shards = _field(meta_file, entry, f"splits.{split}", "shards", list)
        for i, shard in enumerate(shards):
            where = f"splits.{split}.shards[{i}]"
            if not isinstance(shard, dict):
                raise OneBertError(f"{meta_file}: field '{where}' must be an object, got {show_value(shard)}")
            check_shard_name(meta_file, f"{where}.name", _field(meta_file, shard, where, "name", str))
            _field(meta_file, shard, where, "instances", int, minimum=0)
    _field(meta_file, metadata, "", "max_seq_length", int, minimum=1)
    _field(meta_file, metadata, "", "fingerprint", str)
    tokenizer = _field(meta_file, metadata, "", "tokenizer", dict)
    vocab_size = _field(meta_file, tokenizer, "tokenizer", "vocab_size", int, minimum=1)
    _field(meta_file, tokenizer, "tokenizer", "vocab_sha256", str)
    special_ids = _field(meta_file, tokenizer, "tokenizer", "special_ids", dict)
    _field(meta_file, special_ids, "tokenizer.special_ids", "pad", int, minimum=0)
    for key in special_ids:
        token_id = _field(meta_file, special_ids, "tokenizer.special_ids", key, int, minimum=0)
        if token_id >= vocab_size:
            raise OneBertError(f"{meta_file}: field 'tokenizer.special_ids' holds id {token_id}, outside the "
                               f"vocabulary (vocab_size {vocab_size})")


def check_shard_name(meta_file: Path, where: str, name: Any) -> str:
    """`name` when it is a plain shard name, else a one-line OneBertError naming metadata.json and the field."""
    if not isinstance(name, str) or not SHARD_NAME.fullmatch(name) or ".." in name:
        raise OneBertError(f"{meta_file}: {where}: {show_value(name)} is not a shard name (a plain file name in "
                           f"{SHARD_DIR}/); refusing it, as it could read files outside the data directory")
    return name




class _Shard:
    def __init__(self, directory: Path, name: str, expected: int):
        self.arrays: dict[str, np.ndarray] = {}
        for field in SHARD_FIELDS:
            file = shard_file(directory, name, field)
            if not file.is_file():
                raise OneBertError(f"{file}: shard file missing (the data directory is incomplete; "
                                   f"run `onebert prepare` again)")
            try:
                # a plain ndarray view of the map: same memory, without np.memmap's slow __getitem__
                self.arrays[field] = np.asarray(np.load(file, mmap_mode="r", allow_pickle=False))
            except (ValueError, OSError, EOFError) as exc:
                raise OneBertError(f"{file}: cannot read shard file ({exc}); run `onebert prepare` again") from None
        self.tokens = self.arrays["tokens"]
        self.offsets = self.arrays["offsets"]
        self.a_lengths = self.arrays["a_lengths"]
        self.labels = self.arrays["labels"]
        n = len(self.labels)
        if n != expected or len(self.a_lengths) != n or len(self.offsets) != n + 1 \
                or int(self.offsets[-1]) != len(self.tokens):
            raise OneBertError(f"{shard_file(directory, name, 'tokens')}: shard '{name}' does not match "
                               f"metadata.json ({n} instances, expected {expected}); run `onebert prepare` again")


class InstanceStore:
    """All instances of one split, addressed by a global index across its shards."""

    def __init__(self, directory: Path, shards: Sequence[dict[str, Any]]):
        self.shards = [_Shard(directory, entry["name"], int(entry["instances"])) for entry in shards]
        counts = [len(s.labels) for s in self.shards]
        self.starts = np.zeros(len(counts) + 1, dtype=np.int64)
        np.cumsum(counts, out=self.starts[1:])

    def __len__(self) -> int:
        return int(self.starts[-1])

    def locate(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(shard number, index inside the shard) of global instance indices."""
        indices = np.asarray(indices, dtype=np.int64)
        if indices.size and (indices.min() < 0 or indices.max() >= len(self)):
            raise IndexError(f"instance index outside 0..{len(self) - 1}")
        shard = np.searchsorted(self.starts, indices, side="right") - 1
        return shard, indices - self.starts[shard]

    def instance(self, index: int) -> tuple[np.ndarray, int, int]:
        """(tokens of [CLS] A [SEP] B [SEP], length of A, NSP label) of instance `index`."""
        shard_ids, local_ids = self.locate(np.array([index]))
        shard, local = self.shards[int(shard_ids[0])], int(local_ids[0])
        begin, end = int(shard.offsets[local]), int(shard.offsets[local + 1])
        return np.asarray(shard.tokens[begin:end]), int(shard.a_lengths[local]), int(shard.labels[local])

    def collate(self, indices: Sequence[int], pad_token_id: int) -> dict[str, np.ndarray]:
        """Padded numpy batch (to the longest instance) of the given instances, unmasked."""
        shard_ids, local_ids = self.locate(np.asarray(indices, dtype=np.int64))
        rows = []
        for s, local in zip(shard_ids.tolist(), local_ids.tolist()):
            shard = self.shards[s]
            rows.append((shard.tokens[shard.offsets[local]:shard.offsets[local + 1]], shard.a_lengths[local],
                         shard.labels[local]))
        length = max(len(tokens) for tokens, _, _ in rows)
        batch = len(rows)
        input_ids = np.full((batch, length), pad_token_id, dtype=np.int64)
        lengths = np.empty(batch, dtype=np.int64)
        a_lengths = np.empty(batch, dtype=np.int64)
        labels = np.empty(batch, dtype=np.int64)
        for row, (tokens, a_len, label) in enumerate(rows):
            input_ids[row, :len(tokens)] = tokens
            lengths[row] = len(tokens)
            a_lengths[row] = a_len
            labels[row] = label
        positions = np.arange(length)[None, :]
        attention_mask = (positions < lengths[:, None]).astype(np.int64)
        token_type_ids = ((positions >= (a_lengths + 2)[:, None]) & (attention_mask == 1)).astype(np.int64)
        return {"input_ids": input_ids, "token_type_ids": token_type_ids, "attention_mask": attention_mask,
                "next_sentence_label": labels, "instance_ids": np.asarray(indices, dtype=np.int64)}


# ----------------------------------------------------------------------------------------------
# Shuffling without materialising a permutation
# ----------------------------------------------------------------------------------------------

def permuted_indices(positions: np.ndarray, n: int, key: int, rounds: int = 4) -> np.ndarray:
    """Map positions in [0, n) to a keyed pseudo-random permutation of [0, n).

    A balanced Feistel network is a bijection on [0, 2^bits); "cycle walking" (apply it again
    while the value is >= n) restricts it to a bijection on [0, n). Costs O(len(positions)) time
    and no memory in n, so epochs over billions of instances shuffle globally.
    """
    positions = np.asarray(positions, dtype=np.int64)
    if n <= 1:
        return positions.copy()
    bits = max(2, int(n - 1).bit_length())
    bits += bits % 2
    half = np.uint64(bits // 2)
    mask = np.uint64((1 << (bits // 2)) - 1)
    round_keys = [hash_key(key, r) for r in range(rounds)]

    def feistel(x: np.ndarray) -> np.ndarray:
        left, right = x >> half, x & mask
        for rk in round_keys:
            left, right = right, left ^ (splitmix64(right ^ rk) & mask)
        return (left << half) | right

    out = np.empty(len(positions), dtype=np.uint64)
    todo = np.arange(len(positions))
    current = positions.astype(np.uint64)
    limit = np.uint64(n)
    while todo.size:
        current = feistel(current)
        done = current < limit
        out[todo[done]] = current[done]
        todo, current = todo[~done], current[~done]
    return out.astype(np.int64)


# ----------------------------------------------------------------------------------------------
# Batches
# ----------------------------------------------------------------------------------------------

def _as_torch(batch: dict[str, np.ndarray]) -> dict[str, Any]:
    import torch

    return {name: torch.from_numpy(np.ascontiguousarray(value, dtype=np.int64)) for name, value in batch.items()}


class TrainBatches:
    """Endless (or `max_epochs`) iterator over masked, shuffled training batches of one rank.

    `state_dict()` after k batches is the position of batch k; a new iterator that loads it yields
    exactly the batches the first one would have yielded next.
    """

    def __init__(self, data: "PretrainingData", batch_size: int, *, seed: int, epoch: int = 0, rank: int = 0,
                 world_size: int = 1, masking: MaskingConfig | None = None, max_epochs: int | None = None,
                 return_tensors: str | None = "pt"):
        if batch_size < 1:
            raise OneBertError(f"batch_size must be >= 1, got {batch_size}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise OneBertError(f"rank {rank} is not in 0..{world_size - 1} (world_size {world_size})")
        self.data = data
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.masking = masking or MaskingConfig()
        self.masking.validate()
        self.max_predictions = self.masking.max_predictions(data.max_seq_length)
        self.max_epochs = max_epochs
        self.return_tensors = return_tensors
        self.num_instances = len(data.train)
        self.global_batch = batch_size * world_size
        self.batches_per_epoch = self.num_instances // self.global_batch
        if self.batches_per_epoch == 0:
            raise OneBertError(f"{data.directory}: {self.num_instances} training instances are fewer than one "
                               f"global batch ({batch_size} x {world_size} ranks); use a smaller batch or more text")
        self.start_epoch = epoch
        self.epoch = epoch
        self.batch = 0

    def state_dict(self) -> dict[str, Any]:
        """The position of the next batch (plain JSON-able values, for a checkpoint)."""
        return {"epoch": self.epoch, "batch": self.batch, "seed": self.seed, "global_batch_size": self.global_batch,
                "batch_size": self.batch_size, "world_size": self.world_size, "num_instances": self.num_instances,
                "data_fingerprint": self.data.fingerprint}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a saved position. Per-rank batch size and rank count may change as long as their
        product (the global batch) does not: global batch g is the same instances with the same masks."""
        for key, mine in (("seed", self.seed), ("global_batch_size", self.global_batch),
                          ("num_instances", self.num_instances), ("data_fingerprint", self.data.fingerprint)):
            if state.get(key) != mine:
                raise OneBertError(f"cannot resume the data position: the checkpoint has {key}={state.get(key)!r}, "
                                   f"this run has {mine!r}")
        if not 0 <= int(state["batch"]) <= self.batches_per_epoch:
            raise OneBertError(f"cannot resume the data position: batch {state['batch']} is outside this epoch")
        self.epoch = int(state["epoch"])
        self.batch = int(state["batch"])

    def indices(self, epoch: int, batch: int) -> np.ndarray:
        """Instance indices of this rank's part of global batch `batch` in `epoch`."""
        first = batch * self.global_batch + self.rank * self.batch_size
        positions = np.arange(first, first + self.batch_size, dtype=np.int64)
        return permuted_indices(positions, self.num_instances, hash_key(self.seed, epoch, 0x5EED))

    def make_batch(self, epoch: int, batch: int) -> dict[str, Any]:
        indices = self.indices(epoch, batch)
        return self.data._masked_batch(self.data.train, indices, indices, seed=self.seed, epoch=epoch,
                                       masking=self.masking, max_predictions=self.max_predictions,
                                       return_tensors=self.return_tensors)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        while self.max_epochs is None or self.epoch < self.start_epoch + self.max_epochs:
            while self.batch < self.batches_per_epoch:
                batch = self.make_batch(self.epoch, self.batch)
                self.batch += 1
                yield batch
            self.epoch += 1
            self.batch = 0


# ----------------------------------------------------------------------------------------------
# The data directory
# ----------------------------------------------------------------------------------------------

@dataclass
class PretrainingData:
    """An opened data directory. Use `PretrainingData.open(dir)`."""

    directory: Path
    metadata: dict[str, Any]
    train: InstanceStore
    validation: InstanceStore | None

    @classmethod
    def open(cls, directory: str | Path) -> "PretrainingData":
        directory = Path(directory)
        if not directory.is_dir():
            raise OneBertError(f"{directory}: no such data directory (build one with `onebert prepare`)")
        meta_file = directory / METADATA_FILE
        if not meta_file.is_file():
            raise OneBertError(f"{meta_file}: missing; {directory} is not a directory written by `onebert prepare`")
        try:
            metadata = json.loads(meta_file.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as exc:
            raise OneBertError(f"{meta_file}: not valid JSON ({exc})") from None
        except RecursionError:
            raise OneBertError(f"{meta_file}: not valid JSON (nested too deeply)") from None
        except OSError as exc:
            raise OneBertError(f"{meta_file}: cannot read: {exc.strerror or exc}") from None
        found = metadata.get("format") if isinstance(metadata, dict) else None
        if found != FORMAT_NAME:
            raise OneBertError(f"{meta_file}: not onebert pretraining data (format {show_value(found)}, expected {FORMAT_NAME!r})")
        if metadata.get("format_version") != FORMAT_VERSION:
            raise OneBertError(f"{meta_file}: format version {show_value(metadata.get('format_version'))}, this onebert reads "
                               f"version {FORMAT_VERSION}; run `onebert prepare` again")
        check_metadata(meta_file, metadata)
        splits = metadata["splits"]
        train = InstanceStore(directory, splits["train"]["shards"])
        validation_shards = splits.get("validation", {}).get("shards", [])
        validation = InstanceStore(directory, validation_shards) if validation_shards else None
        return cls(directory, metadata, train, validation)

    # -- what the training loop needs to know

    @property
    def max_seq_length(self) -> int:
        return int(self.metadata["max_seq_length"])

    @property
    def vocab_size(self) -> int:
        return int(self.metadata["tokenizer"]["vocab_size"])

    @property
    def special_ids(self) -> dict[str, int]:
        return dict(self.metadata["tokenizer"]["special_ids"])

    @property
    def pad_token_id(self) -> int:
        return int(self.special_ids["pad"])

    @property
    def fingerprint(self) -> str:
        return str(self.metadata["fingerprint"])

    @property
    def tokenizer_dir(self) -> Path:
        return self.directory / TOKENIZER_DIR

    @property
    def tokenizer(self):
        """The tokenizer the ids come from (loaded on first use)."""
        cached = self.__dict__.get("_tokenizer")
        if cached is None:
            from onebert.tokenizer import Tokenizer

            cached = Tokenizer.from_pretrained(self.tokenizer_dir)
            self.__dict__["_tokenizer"] = cached
        return cached

    @property
    def masking_vocab(self) -> MaskingVocab:
        cached = self.__dict__.get("_masking_vocab")
        if cached is None:
            cached = MaskingVocab.from_tokenizer(self.tokenizer)
            self.__dict__["_masking_vocab"] = cached
        return cached

    def check_compatible(self, *, tokenizer=None, vocab_size: int | None = None,
                         max_position_embeddings: int | None = None) -> None:
        """Refuse a model whose vocabulary or positions do not fit this data (one-line OneBertError)."""
        meta = self.directory / METADATA_FILE
        if tokenizer is not None:
            if tokenizer_fingerprint(tokenizer) != self.metadata["tokenizer"]["vocab_sha256"]:
                raise OneBertError(f"{meta}: this data was built with another vocabulary than the model's tokenizer "
                                   f"({self.vocab_size} tokens, sha256 {self.metadata['tokenizer']['vocab_sha256'][:12]}"
                                   f"); prepare the data with the model's tokenizer (--tokenizer)")
        if vocab_size is not None and vocab_size < self.vocab_size:
            raise OneBertError(f"{meta}: the data uses {self.vocab_size} token ids but the model's vocab_size is "
                               f"{vocab_size}")
        if max_position_embeddings is not None and self.max_seq_length > max_position_embeddings:
            raise OneBertError(f"{meta}: max_seq_length {self.max_seq_length} is larger than the model's "
                               f"max_position_embeddings {max_position_embeddings}")

    # -- batches

    def train_batches(self, batch_size: int, *, seed: int, epoch: int = 0, rank: int = 0, world_size: int = 1,
                      masking: MaskingConfig | None = None, max_epochs: int | None = None,
                      return_tensors: str | None = "pt") -> TrainBatches:
        """Shuffled, masked training batches for one rank; see `TrainBatches` for resume."""
        return TrainBatches(self, batch_size, seed=seed, epoch=epoch, rank=rank, world_size=world_size,
                            masking=masking, max_epochs=max_epochs, return_tensors=return_tensors)

    def validation_batches(self, batch_size: int, *, seed: int = 0, rank: int = 0, world_size: int = 1,
                           masking: MaskingConfig | None = None, max_instances: int | None = None,
                           return_tensors: str | None = "pt") -> Iterator[dict[str, Any]]:
        """The held-out instances in a fixed order with fixed masks, so evaluations are comparable.

        Rank r of W reads instances r, r+W, r+2W, ...; the last batch may be smaller.
        """
        if self.validation is None:
            return iter(())
        masking = masking or MaskingConfig()
        masking.validate()
        total = len(self.validation) if max_instances is None else min(max_instances, len(self.validation))
        mine = np.arange(rank, total, world_size, dtype=np.int64)

        def batches() -> Iterator[dict[str, Any]]:
            for start in range(0, len(mine), batch_size):
                indices = mine[start:start + batch_size]
                yield self._masked_batch(self.validation, indices, indices + VALIDATION_ID_OFFSET, seed=seed,
                                         epoch=0, masking=masking,
                                         max_predictions=masking.max_predictions(self.max_seq_length),
                                         return_tensors=return_tensors)

        return batches()

    @property
    def num_validation_instances(self) -> int:
        return 0 if self.validation is None else len(self.validation)

    def _masked_batch(self, store: InstanceStore, indices: np.ndarray, mask_ids: np.ndarray, *, seed: int, epoch: int,
                      masking: MaskingConfig, max_predictions: int, return_tensors: str | None) -> dict[str, Any]:
        batch = store.collate(indices, self.pad_token_id)
        batch["input_ids"], batch["labels"] = mask_tokens(
            batch["input_ids"], batch["attention_mask"], mask_ids, seed=seed, epoch=epoch, config=masking,
            vocab=self.masking_vocab, max_predictions=max_predictions)
        del batch["instance_ids"]
        return _as_torch(batch) if return_tensors == "pt" else batch
