"""BERT's WordPiece tokenizer, through HuggingFace `tokenizers` (the Rust library; nothing re-implemented).

One class, `Tokenizer`, wraps a `tokenizers.Tokenizer` (`.backend`) configured exactly as BERT's:
BertNormalizer (clean text, split CJK characters, optional lower-casing and accent stripping),
BertPreTokenizer (whitespace and punctuation), WordPiece with "##" continuation pieces and the
`[CLS] A [SEP] B [SEP]` template. It loads what transformers writes (a directory with tokenizer.json,
or vocab.txt + tokenizer_config.json), trains a new vocabulary from text files, and saves in the
layout `transformers.BertTokenizerFast.from_pretrained` reads.

Encoding (`tok(texts, pairs)`) does what transformers' fast tokenizer does with the same backend
calls, so ids, token types, masks and offsets match it token for token (tests/test_tokenizer.py
checks this on real data). The backend is kept free of truncation and padding settings between
calls; a call sets what it needs and clears it again, so one `Tokenizer` should not be called
from several threads at once (DataLoader worker processes are fine).
"""

from __future__ import annotations

import gzip
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Sequence

import tokenizers
from tokenizers import decoders, normalizers, pre_tokenizers, processors, trainers
from tokenizers.models import WordPiece

from onebert.errors import OneBertError
from onebert.io_utils import atomic_write_text
from onebert.text_input import decode_utf8

if TYPE_CHECKING:
    import numpy as np

logger = logging.getLogger(__name__)

PAD, UNK, CLS, SEP, MASK = "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"
# Training puts them at ids 0..4 in this order; loaded vocabularies keep their own ids
# (bert-base-uncased has [PAD]=0, [UNK]=100, [CLS]=101, [SEP]=102, [MASK]=103).
SPECIAL_TOKENS = (PAD, UNK, CLS, SEP, MASK)
TRUNCATION_STRATEGIES = ("longest_first", "only_first", "only_second")
# Original BERT: words longer than this become a single [UNK].
MAX_INPUT_CHARS_PER_WORD = 100
# transformers writes 1e30 for "no limit"; anything this large means the config did not say.
_UNSET_MAX_LENGTH = 10**6
# tokenizer_config.json fields (transformers' names) that configure BertNormalizer.
_NORMALIZER_SETTINGS = ("do_lower_case", "tokenize_chinese_chars", "strip_accents")


@dataclass
class TrainingStats:
    files: int = 0
    lines: int = 0
    lines_with_text: int = 0


class Tokenizer:
    """BERT WordPiece tokenizer with transformers-compatible encoding, loading and saving.

    Build one with `Tokenizer.from_pretrained(dir)` or `Tokenizer.train(files)`; the constructor
    takes an already configured `tokenizers.Tokenizer` and checks that it has BERT's special tokens.
    """

    def __init__(self, backend: tokenizers.Tokenizer, *, do_lower_case: bool, tokenize_chinese_chars: bool = True,
                 strip_accents: bool | None = None, model_max_length: int = 512, source: str = "tokenizer") -> None:
        missing = [token for token in SPECIAL_TOKENS if backend.token_to_id(token) is None]
        if missing:
            raise OneBertError(f"{source}: missing special tokens {', '.join(missing)} "
                               f"(a BERT vocabulary needs {', '.join(SPECIAL_TOKENS)})")
        _check_contiguous_ids(backend, source)
        backend.no_truncation()
        backend.no_padding()
        self.backend = backend
        self.do_lower_case = do_lower_case
        self.tokenize_chinese_chars = tokenize_chinese_chars
        self.strip_accents = strip_accents
        self.model_max_length = model_max_length
        self.pad_token_id: int = backend.token_to_id(PAD)
        self.unk_token_id: int = backend.token_to_id(UNK)
        self.cls_token_id: int = backend.token_to_id(CLS)
        self.sep_token_id: int = backend.token_to_id(SEP)
        self.mask_token_id: int = backend.token_to_id(MASK)
        self.special_token_ids: frozenset[int] = frozenset(backend.token_to_id(t) for t in SPECIAL_TOKENS)
        self.vocab_size: int = backend.get_vocab_size(with_added_tokens=True)
        # Whatever post-processor a tokenizer.json carries, BERT inputs are [CLS] A [SEP] B [SEP]
        # with token types 0 / 1 (transformers' BertTokenizer sets the same template on load).
        backend.post_processor = _bert_template(self.cls_token_id, self.sep_token_id)
        self._word_start_mask: np.ndarray | None = None
        self.training_stats: TrainingStats | None = None  # set by train()

    # ------------------------------------------------------------------ loading and saving

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike) -> Tokenizer:
        """Load a directory written by us or by transformers (tokenizer.json, else vocab.txt).

        tokenizer_config.json, when present, supplies `model_max_length` and, for a bare vocab.txt,
        `do_lower_case`, `tokenize_chinese_chars` and `strip_accents` (defaults: BERT uncased).
        A path to a tokenizer.json or vocab.txt file is accepted too.
        """
        path = Path(path)
        if path.is_file():
            directory, names = path.parent, [path.name]
        elif path.is_dir():
            directory, names = path, ["tokenizer.json", "vocab.txt"]
        else:
            raise OneBertError(f"{path}: no such tokenizer directory")
        config = _read_tokenizer_config(directory / "tokenizer_config.json")
        model_max_length = config.get("model_max_length")
        if not isinstance(model_max_length, int) or isinstance(model_max_length, bool) \
                or not 0 < model_max_length < _UNSET_MAX_LENGTH:
            model_max_length = 512
        for name in names:
            file = directory / name
            if not file.is_file():
                continue
            settings = {key: _config_bool(config, key, directory) for key in _NORMALIZER_SETTINGS if key in config}
            # null means "not set", except for strip_accents, where it means "strip when lower-casing"
            settings = {key: value for key, value in settings.items() if value is not None or key == "strip_accents"}
            if name.endswith(".json"):
                return cls._from_tokenizer_json(file, settings, model_max_length)
            return cls.from_vocab(file, do_lower_case=settings.get("do_lower_case", True),
                                  tokenize_chinese_chars=settings.get("tokenize_chinese_chars", True),
                                  strip_accents=settings.get("strip_accents"), model_max_length=model_max_length)
        raise OneBertError(f"{path}: neither tokenizer.json nor vocab.txt found; "
                           f"pass a directory written by `onebert tokenizer train` or by transformers")

    @classmethod
    def from_vocab(cls, vocab_file: str | os.PathLike, *, do_lower_case: bool = True,
                   tokenize_chinese_chars: bool = True, strip_accents: bool | None = None,
                   model_max_length: int = 512) -> Tokenizer:
        """Build BERT's tokenizer around a vocab.txt (one token per line, id = line number - 1)."""
        vocab = read_vocab(vocab_file)
        backend = _bert_backend(WordPiece(vocab, unk_token=UNK, continuing_subword_prefix="##",
                                          max_input_chars_per_word=MAX_INPUT_CHARS_PER_WORD),
                                lowercase=do_lower_case, tokenize_chinese_chars=tokenize_chinese_chars,
                                strip_accents=strip_accents)
        # As transformers does: special tokens are "added tokens", so "[MASK]" written in a text
        # stays one token instead of being split into "[", "mask", "]".
        backend.add_special_tokens(list(SPECIAL_TOKENS))
        return cls(backend, do_lower_case=do_lower_case, tokenize_chinese_chars=tokenize_chinese_chars,
                   strip_accents=strip_accents, model_max_length=model_max_length, source=str(vocab_file))

    @classmethod
    def _from_tokenizer_json(cls, file: Path, settings: dict[str, bool | None], model_max_length: int) -> Tokenizer:
        try:
            text = file.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise OneBertError(f"{file}: not valid UTF-8 (byte offset {exc.start})") from None
        try:
            backend = tokenizers.Tokenizer.from_str(text)
            spec = json.loads(text)
        except Exception as exc:  # noqa: BLE001 - the Rust parser raises a bare Exception
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise OneBertError(f"{file}: not a tokenizers JSON file: {first}") from None
        model_type = (spec.get("model") or {}).get("type")
        if model_type != "WordPiece":
            raise OneBertError(f"{file}: model type is {repr(model_type)[:60]}; BERT needs a WordPiece tokenizer")
        model_vocab = spec["model"].get("vocab")
        if spec["model"].get("unk_token") != UNK or not isinstance(model_vocab, dict) or UNK not in model_vocab:
            # Loading succeeds, but encoding any unknown word then fails inside the Rust model.
            raise OneBertError(f"{file}: the WordPiece model's unknown token must be {UNK}, in its vocabulary")
        normalizer = spec.get("normalizer")
        if normalizer is None or normalizer.get("type") == "BertNormalizer":
            normalizer = normalizer or {"lowercase": False, "handle_chinese_chars": False, "strip_accents": False}
            stored = {"do_lower_case": bool(normalizer.get("lowercase", True)),
                      "tokenize_chinese_chars": bool(normalizer.get("handle_chinese_chars", True)),
                      "strip_accents": normalizer.get("strip_accents")}
            # tokenizer_config.json's explicit settings win, as in transformers (4.x and 5.x alike).
            wanted = {**stored, **settings}
            if wanted != stored:
                logger.info("%s: normalizer set from tokenizer_config.json: %s", file, wanted)
                backend.normalizer = normalizers.BertNormalizer(
                    clean_text=True, handle_chinese_chars=wanted["tokenize_chinese_chars"],
                    strip_accents=wanted["strip_accents"], lowercase=wanted["do_lower_case"])
        else:
            # A custom normalizer chain is used as is; report what it does as well as we can.
            wanted = {"do_lower_case": _has_lowercase(normalizer), "tokenize_chinese_chars": True,
                      "strip_accents": None}
        return cls(backend, do_lower_case=wanted["do_lower_case"],
                   tokenize_chinese_chars=wanted["tokenize_chinese_chars"], strip_accents=wanted["strip_accents"],
                   model_max_length=model_max_length, source=str(file))

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        """Write vocab.txt, tokenizer.json, tokenizer_config.json and special_tokens_map.json (each atomically)."""
        directory = Path(directory)
        tokens = [self.backend.id_to_token(i) for i in range(self.vocab_size)]
        gaps = [i for i, token in enumerate(tokens) if token is None]
        if gaps:
            raise OneBertError(f"{directory}: cannot write vocab.txt: the vocabulary has no token for id "
                               f"{gaps[0]} (ids must run 0..{self.vocab_size - 1} without gaps)")
        bad = [t for t in tokens if "\n" in t or "\r" in t]
        if bad:
            raise OneBertError(f"{directory}: cannot write vocab.txt: token {bad[0]!r} contains a line break")
        config = {
            "tokenizer_class": "BertTokenizer",
            "do_lower_case": self.do_lower_case,
            "tokenize_chinese_chars": self.tokenize_chinese_chars,
            "strip_accents": self.strip_accents,
            "model_max_length": self.model_max_length,
            "unk_token": UNK, "sep_token": SEP, "pad_token": PAD, "cls_token": CLS, "mask_token": MASK,
            "clean_up_tokenization_spaces": True,
        }
        special = {"unk_token": UNK, "sep_token": SEP, "pad_token": PAD, "cls_token": CLS, "mask_token": MASK}
        atomic_write_text(directory / "vocab.txt", "".join(token + "\n" for token in tokens))
        atomic_write_text(directory / "tokenizer.json", self.backend.to_str(pretty=True))
        atomic_write_text(directory / "tokenizer_config.json", json.dumps(config, indent=2) + "\n")
        atomic_write_text(directory / "special_tokens_map.json", json.dumps(special, indent=2) + "\n")

    # ------------------------------------------------------------------ training

    @classmethod
    def train(cls, files: str | os.PathLike | Iterable[str | os.PathLike], vocab_size: int = 30522,
              lowercase: bool = True, min_frequency: int = 2, *, limit_alphabet: int = 1000,
              model_max_length: int = 512, show_progress: bool = False) -> Tokenizer:
        """Learn a WordPiece vocabulary from text files (plain or .gz, UTF-8, one or more lines each).

        Special tokens get ids 0..4 ([PAD] [UNK] [CLS] [SEP] [MASK]). `lowercase=False` trains a cased
        vocabulary (no lower-casing, no accent stripping), as BERT's cased models. Blank lines are
        skipped and counted in `training_stats`.

        Two runs on the same corpus can give different vocabularies (id order, and a few tokens
        where merge counts tie): tokenizers 0.23's WordPiece trainer breaks ties in hash-map order
        (huggingface/tokenizers#1794). Train once and keep the saved directory with the model.
        """
        paths = _check_training_files(files)
        if vocab_size <= len(SPECIAL_TOKENS):
            raise OneBertError(f"vocab_size must be larger than {len(SPECIAL_TOKENS)} (the special tokens), "
                               f"got {vocab_size}")
        if min_frequency < 0:
            raise OneBertError(f"min_frequency must be >= 0, got {min_frequency}")
        backend = _bert_backend(WordPiece(unk_token=UNK, continuing_subword_prefix="##",
                                          max_input_chars_per_word=MAX_INPUT_CHARS_PER_WORD),
                                lowercase=lowercase, tokenize_chinese_chars=True, strip_accents=None)
        trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, min_frequency=min_frequency,
                                            show_progress=show_progress, special_tokens=list(SPECIAL_TOKENS),
                                            limit_alphabet=limit_alphabet, continuing_subword_prefix="##")
        stats = TrainingStats(files=len(paths))
        backend.train_from_iterator(_read_text_lines(paths, stats), trainer=trainer)
        if stats.lines_with_text == 0:
            raise OneBertError(f"{', '.join(map(str, paths))}: no text to train on (only empty lines)")
        # The trainer registers the special tokens as added tokens; the template is ours to set
        # (the Tokenizer constructor does it).
        tokenizer = cls(backend, do_lower_case=lowercase, tokenize_chinese_chars=True, strip_accents=None,
                        model_max_length=model_max_length, source="trained tokenizer")
        tokenizer.training_stats = stats
        if tokenizer.vocab_size < vocab_size:
            logger.warning("the corpus yields only %d tokens (asked for %d): %d lines of text in %d file(s)",
                           tokenizer.vocab_size, vocab_size, stats.lines_with_text, stats.files)
        return tokenizer

    # ------------------------------------------------------------------ encoding

    def __call__(self, texts: str | Sequence[str] | None = None, text_pairs: str | Sequence[str] | None = None,
                 max_length: int | None = None, truncation: str | bool = "longest_first",
                 padding: str | bool = True, return_tensors: str | None = "pt", *,
                 text: str | Sequence[str] | None = None, text_pair: str | Sequence[str] | None = None,
                 return_token_type_ids: bool | None = None, return_attention_mask: bool | None = None,
                 return_offsets_mapping: bool = False, return_word_ids: bool = False) -> dict[str, Any]:
        """Encode texts (or text pairs) as `[CLS] A [SEP]` / `[CLS] A [SEP] B [SEP]`.

        Called as transformers' tokenizers are: `tok(texts)`, `tok(texts, pairs)`, `tok(text=...,
        text_pair=...)`, with max_length, truncation, padding, return_tensors and the return_* flags
        of the same names, so that `model(**tok(texts, return_tensors="pt", padding=True))` works
        for every onebert model as it does for transformers' (the default return holds model inputs
        only). Unlike transformers, padding and "pt" tensors are the defaults.

        max_length: default `model_max_length` (512). truncation: "longest_first" (default, True),
        "only_first", "only_second" (for pairs; a single text is simply cut), or False; a pair that
        the chosen strategy cannot cut short enough raises OneBertError, as transformers raises.
        padding: True / "longest" pads to the longest sequence of the batch, "max_length" to
        max_length, False leaves lengths ragged (lists only).
        Returns a dict of input_ids, token_type_ids and attention_mask (the last two unless
        return_token_type_ids / return_attention_mask is False); with return_offsets_mapping=True
        also offset_mapping (character spans into the original text; (0, 0) for special and padding
        tokens), with return_word_ids=True word_ids and sequence_ids (None, or -1 in tensors, for
        special and padding tokens). With return_tensors="pt" every value is a LongTensor ([B, S],
        offsets [B, S, 2]); with None, lists of lists. A single string is a batch of one.
        """
        texts = _one_of(texts, text, "texts", "text")
        text_pairs = _one_of(text_pairs, text_pair, "text_pairs", "text_pair")
        if texts is None:
            raise TypeError("Tokenizer() needs the texts to encode (first argument, or text=)")
        texts, text_pairs = _as_batch(texts, "texts"), _as_batch(text_pairs, "text_pairs")
        if text_pairs is not None and len(text_pairs) != len(texts):
            raise ValueError(f"got {len(texts)} texts but {len(text_pairs)} text_pairs")
        max_length = self.model_max_length if max_length is None else max_length
        strategy = _truncation_strategy(truncation)
        specials = self.backend.num_special_tokens_to_add(text_pairs is not None)
        if strategy is not None and max_length < specials:
            # The backend would silently skip truncation here.
            raise ValueError(f"max_length={max_length} is shorter than the {specials} special tokens")
        if strategy is not None and text_pairs is None and strategy != "longest_first":
            # A single sequence has only one part to cut.
            strategy = "longest_first"
        _check_return_tensors(return_tensors)
        inputs: list[Any] = texts if text_pairs is None else list(zip(texts, text_pairs))
        try:
            if strategy is not None:
                self.backend.enable_truncation(max_length, strategy=strategy)
            self._enable_padding(padding, max_length)
            encodings = self.backend.encode_batch(inputs)
        except Exception as exc:  # noqa: BLE001 - the Rust side raises a bare Exception
            _refuse_surrogates(exc, texts=texts, text_pairs=text_pairs)
            if not _is_truncation_error(exc):
                raise
            raise OneBertError(f"cannot truncate to max_length={max_length} with truncation={strategy!r}: "
                               f"the part that may be cut is too short; use truncation='longest_first' "
                               f"or a larger max_length") from None
        finally:
            self.backend.no_truncation()
            self.backend.no_padding()
        batch = _collate(encodings, return_tensors, return_offsets_mapping, return_word_ids)
        for key, wanted in (("token_type_ids", return_token_type_ids), ("attention_mask", return_attention_mask)):
            if wanted is False:  # None means the default, as in transformers: returned
                del batch[key]
        return batch

    def encode_windows(self, questions: Sequence[str], contexts: Sequence[str], max_length: int = 384,
                       stride: int = 128, max_query_length: int | None = None, padding: str | bool = True,
                       return_tensors: str | None = "pt") -> dict[str, Any]:
        """Split (question, context) pairs into overlapping windows for extractive QA.

        Every window is `[CLS] question [SEP] part of context [SEP]`, at most max_length tokens; the
        context is cut into as many windows as needed so that every context token appears in one,
        consecutive windows sharing `stride` context tokens (transformers' `stride` with
        `return_overflowing_tokens=True`, and its truncation="only_second"; HF's run_qa.py calls
        this doc_stride). Questions longer than `max_query_length` tokens are cut to that length
        first (original BERT's run_squad does this with 64). A question that leaves no more than
        `stride` tokens for context raises OneBertError naming it.

        Returns the keys of `__call__` for every window (offsets of context tokens point into the
        context, of question tokens into the question; use sequence_ids == 1 to find the context)
        plus `example_index`: the position in `questions` each window came from. Windows of one
        example are consecutive and in context order.
        """
        questions, contexts = _as_batch(questions, "questions"), _as_batch(contexts, "contexts")
        if len(questions) != len(contexts):
            raise ValueError(f"got {len(questions)} questions but {len(contexts)} contexts")
        if not 0 <= stride < max_length:
            raise ValueError(f"stride must be in [0, max_length), got stride={stride}, max_length={max_length}")
        if max_query_length is not None and max_query_length < 1:
            raise ValueError(f"max_query_length must be positive, got {max_query_length}")
        _check_return_tensors(return_tensors)
        questions = self._fit_questions(questions, max_length, stride, max_query_length)
        try:
            self.backend.enable_truncation(max_length, stride=stride, strategy="only_second")
            # The backend pads overflow windows too, to the longest first window (= longest window).
            self._enable_padding(padding, max_length)
            encodings = self.backend.encode_batch(list(zip(questions, contexts)))
        except TypeError as exc:
            _refuse_surrogates(exc, questions=questions, contexts=contexts)
            raise
        finally:
            self.backend.no_truncation()
            self.backend.no_padding()
        windows: list[tokenizers.Encoding] = []
        example_index: list[int] = []
        for i, encoding in enumerate(encodings):
            for window in [encoding, *encoding.overflowing]:
                windows.append(window)
                example_index.append(i)
        batch = _collate(windows, return_tensors, True, True)
        if return_tensors == "pt":
            import torch

            batch["example_index"] = torch.tensor(example_index, dtype=torch.long)
        else:
            batch["example_index"] = example_index
        return batch

    def _enable_padding(self, padding: str | bool, max_length: int) -> None:
        if padding in (True, "longest"):
            length = None
        elif padding == "max_length":
            length = max_length
        elif padding in (False, None, "do_not_pad"):
            return
        else:
            raise ValueError(f"padding must be True, 'longest', 'max_length' or False, got {padding!r}")
        self.backend.enable_padding(pad_id=self.pad_token_id, pad_type_id=0, pad_token=PAD, length=length)

    def encode_ids(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of each text, no special tokens, no truncation: the fast path for data preparation.

        Runs in parallel in Rust (`encode_batch_fast`: no offsets are computed).
        """
        texts = _as_batch(texts, "texts")
        try:
            encodings = self.backend.encode_batch_fast(texts, add_special_tokens=False)
        except TypeError as exc:
            _refuse_surrogates(exc, texts=texts)
            raise
        return [encoding.ids for encoding in encodings]

    def tokenize(self, text: str) -> list[str]:
        """WordPiece tokens of one text, without [CLS]/[SEP]."""
        try:
            return self.backend.encode(text, add_special_tokens=False).tokens
        except TypeError as exc:
            _refuse_surrogates(exc, text=[text])
            raise

    def word_start_mask(self) -> np.ndarray:
        """Bool array [vocab_size]: False for "##" continuation pieces (whole-word masking groups by it)."""
        if self._word_start_mask is None:
            import numpy as np

            self._word_start_mask = np.array(
                [not self.backend.id_to_token(i).startswith("##") for i in range(self.vocab_size)], dtype=bool)
        return self._word_start_mask

    def convert_ids_to_tokens(self, ids: int | Iterable[int]) -> str | list[str]:
        if isinstance(ids, int) or (hasattr(ids, "ndim") and ids.ndim == 0):
            return self._id_to_token(int(ids))
        return [self._id_to_token(int(i)) for i in ids]

    def _id_to_token(self, index: int) -> str:
        token = self.backend.id_to_token(index)
        if token is None:
            raise ValueError(f"token id {index} is outside the vocabulary (0..{self.vocab_size - 1})")
        return token

    def convert_tokens_to_ids(self, tokens: str | Iterable[str]) -> int | list[int]:
        """Ids of tokens; tokens not in the vocabulary map to [UNK] (as transformers)."""
        if isinstance(tokens, str):
            found = self.backend.token_to_id(tokens)
            return self.unk_token_id if found is None else found
        return [self.convert_tokens_to_ids(token) for token in tokens]

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = True) -> str:
        if hasattr(ids, "tolist"):
            ids = ids.tolist()
        return self.backend.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def __len__(self) -> int:
        return self.vocab_size

    def check_fits(self, config: Any, where: str = "model") -> None:
        """Refuse to pair this tokenizer with a model whose embeddings it would index past.

        Call it wherever a tokenizer and a model meet: an id >= config.vocab_size is an IndexError
        on CPU and a device-side assert (a dead CUDA context) on GPU, far from its cause.
        """
        if self.vocab_size > config.vocab_size:
            raise OneBertError(f"{where}: the tokenizer has {self.vocab_size} tokens but the model's vocab_size is "
                               f"{config.vocab_size}; use the tokenizer the model was trained with")

    def __repr__(self) -> str:
        return (f"Tokenizer(vocab_size={self.vocab_size}, do_lower_case={self.do_lower_case}, "
                f"model_max_length={self.model_max_length})")

    # ------------------------------------------------------------------ error messages

    def _fit_questions(self, questions: list[str], max_length: int, stride: int,
                       max_query_length: int | None) -> list[str]:
        """Cut questions to max_query_length tokens and check that every window has room for context.

        The cut is made in the text (after the last kept token, in original characters) so that the
        pair still goes through the one `encode_batch` path: WordPiece is greedy longest-match-first,
        so a prefix cut at a piece boundary re-tokenizes into the same pieces. (The backend's
        `post_process` of separately encoded parts is no alternative: tokenizers 0.23 gives its
        overflow windows token type 0 on the context.) The room check must come first because the
        backend panics, rather than raising, when the context part of a window is not longer than
        the stride.
        """
        try:
            encodings = self.backend.encode_batch(questions, add_special_tokens=False)
        except TypeError as exc:
            _refuse_surrogates(exc, questions=questions)
            raise
        room = max_length - self.backend.num_special_tokens_to_add(True)
        fitted = []
        for i, (question, encoding) in enumerate(zip(questions, encodings)):
            length = len(encoding.ids)
            if max_query_length is not None and length > max_query_length:
                question = question[:encoding.offsets[max_query_length - 1][1]]
                length = max_query_length
            if room - length <= stride:
                raise OneBertError(
                    f"question {i} has {length} tokens: a window of max_length={max_length} holds {room} "
                    f"question and context tokens, too few for that question plus more than stride={stride} "
                    f"context tokens; set max_query_length (BERT used 64) or raise max_length")
            fitted.append(question)
        return fitted


# ---------------------------------------------------------------------- helpers


def read_vocab(vocab_file: str | os.PathLike) -> dict[str, int]:
    """Read a BERT vocab.txt: token on line n gets id n - 1. Checks encoding, blanks and duplicates."""
    vocab_file = Path(vocab_file)
    try:
        data = vocab_file.read_bytes()
    except FileNotFoundError:
        raise OneBertError(f"{vocab_file}: no such vocabulary file") from None
    except OSError as exc:
        raise OneBertError(f"{vocab_file}: cannot read: {exc.strerror or exc}") from None
    text = decode_utf8(data, str(vocab_file), "vocab.txt must be UTF-8")
    # split("\n"), not splitlines(): BERT vocabularies hold tokens such as U+2028 that
    # splitlines() would treat as line breaks.
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    if not lines:
        raise OneBertError(f"{vocab_file}: empty vocabulary")
    vocab: dict[str, int] = {}
    for index, token in enumerate(lines):
        token = token.removesuffix("\r")
        if not token:
            raise OneBertError(f"{vocab_file}: line {index + 1}: empty token")
        if token in vocab:
            raise OneBertError(f"{vocab_file}: line {index + 1}: duplicate token {token!r} "
                               f"(first on line {vocab[token] + 1})")
        vocab[token] = index
    missing = [token for token in SPECIAL_TOKENS if token not in vocab]
    if missing:
        raise OneBertError(f"{vocab_file}: missing special tokens {', '.join(missing)} "
                           f"(a BERT vocabulary needs {', '.join(SPECIAL_TOKENS)})")
    return vocab


def _check_contiguous_ids(backend: tokenizers.Tokenizer, source: str) -> None:
    """Ids must be 0..N-1: a gap (possible in a hand-edited tokenizer.json) yields ids past vocab_size."""
    ids = sorted(set(backend.get_vocab(with_added_tokens=True).values()))
    if ids != list(range(len(ids))) or len(ids) != backend.get_vocab_size(with_added_tokens=True):
        gap = next((i for i, token_id in enumerate(ids) if token_id != i), len(ids))
        raise OneBertError(f"{source}: token ids must run 0..{len(ids) - 1} without gaps, but id {gap} is missing "
                           f"(highest id {ids[-1] if ids else None}); the vocabulary file is corrupt")


def _bert_backend(model: WordPiece, *, lowercase: bool, tokenize_chinese_chars: bool,
                  strip_accents: bool | None) -> tokenizers.Tokenizer:
    backend = tokenizers.Tokenizer(model)
    backend.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=tokenize_chinese_chars,
                                                    strip_accents=strip_accents, lowercase=lowercase)
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    backend.decoder = decoders.WordPiece(prefix="##")
    return backend


def _bert_template(cls_id: int, sep_id: int) -> processors.TemplateProcessing:
    return processors.TemplateProcessing(single=f"{CLS}:0 $A:0 {SEP}:0",
                                         pair=f"{CLS}:0 $A:0 {SEP}:0 $B:1 {SEP}:1",
                                         special_tokens=[(CLS, cls_id), (SEP, sep_id)])


def _has_lowercase(spec: Any) -> bool:
    if isinstance(spec, dict):
        if spec.get("type") == "Lowercase" or (spec.get("type") == "BertNormalizer" and spec.get("lowercase")):
            return True
        return any(_has_lowercase(child) for child in spec.get("normalizers") or [])
    return False


def _read_tokenizer_config(file: Path) -> dict[str, Any]:
    if not file.is_file():
        return {}
    try:
        config = json.loads(file.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise OneBertError(f"{file}: not valid UTF-8 (byte offset {exc.start})") from None
    except json.JSONDecodeError as exc:
        raise OneBertError(f"{file}: line {exc.lineno}: invalid JSON: {exc.msg}") from None
    except (ValueError, RecursionError) as exc:  # an integer of > 4300 digits; nesting too deep
        raise OneBertError(f"{file}: invalid JSON: {str(exc).split(';')[0]}") from None
    if not isinstance(config, dict):
        raise OneBertError(f"{file}: expected a JSON object")
    return config


def _config_bool(config: dict[str, Any], key: str, directory: Path) -> bool | None:
    value = config[key]
    if value is not None and not isinstance(value, bool):
        raise OneBertError(f"{directory / 'tokenizer_config.json'}: field '{key}' must be true, false or null, "
                           f"got {repr(value)[:60]}")
    return value


def _truncation_strategy(truncation: str | bool | None) -> str | None:
    if truncation is True:
        return "longest_first"
    if truncation in (False, None, "do_not_truncate"):
        return None
    if truncation not in TRUNCATION_STRATEGIES:
        raise ValueError(f"truncation must be one of {', '.join(TRUNCATION_STRATEGIES)}, True or False, "
                         f"got {truncation!r}")
    return truncation


def _as_batch(texts: str | Sequence[str] | None, name: str) -> list[str] | None:
    if texts is None:
        return None
    if isinstance(texts, str):
        return [texts]
    texts = list(texts)
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise ValueError(f"{name}[{i}] is {type(text).__name__}, expected str")
    return texts


def _one_of(ours: Any, theirs: Any, our_name: str, their_name: str) -> Any:
    """The value of an argument that may come under onebert's name or transformers' (`text_pair`)."""
    if ours is not None and theirs is not None:
        raise TypeError(f"Tokenizer() got both {our_name} and {their_name}; they are the same argument")
    return theirs if ours is None else ours


def _refuse_surrogates(exc: Exception, **batches: list[str] | None) -> None:
    """After the backend refused a batch: raise OneBertError naming the text that holds a lone surrogate.

    `tokenizers` rejects a str with a lone surrogate (it cannot be UTF-8) with a TypeError that names
    neither the text nor the character. Looking only after a failure keeps the fast path free of a scan.
    """
    if not isinstance(exc, TypeError):
        return
    from onebert.text_input import check_texts

    for name, texts in batches.items():
        if texts is not None:
            try:
                check_texts(texts, name)
            except OneBertError as error:
                raise error from None


def _check_return_tensors(return_tensors: str | None) -> None:
    if return_tensors not in (None, "pt"):
        raise ValueError(f"return_tensors must be 'pt' or None, got {return_tensors!r}")


def _collate(encodings: list[tokenizers.Encoding], return_tensors: str | None, offsets: bool,
             word_ids: bool) -> dict[str, Any]:
    batch: dict[str, Any] = {
        "input_ids": [e.ids for e in encodings],
        "token_type_ids": [e.type_ids for e in encodings],
        "attention_mask": [e.attention_mask for e in encodings],
    }
    if offsets:
        batch["offset_mapping"] = [e.offsets for e in encodings]
    if word_ids:
        batch["word_ids"] = [e.word_ids for e in encodings]
        batch["sequence_ids"] = [e.sequence_ids for e in encodings]
    if return_tensors != "pt":
        return batch
    lengths = {len(ids) for ids in batch["input_ids"]}
    if len(lengths) > 1:
        raise ValueError(f"sequences have {len(lengths)} different lengths (up to {max(lengths)} tokens); "
                         f"tensors need padding=True or truncation to max_length")
    width = lengths.pop() if lengths else 0
    return {key: _long_tensor(rows, width, none_as=-1 if key in ("word_ids", "sequence_ids") else None,
                              pairs=key == "offset_mapping")
            for key, rows in batch.items()}


def _long_tensor(rows: list[list], width: int, none_as: int | None, pairs: bool) -> Any:
    """[B, width] (or [B, width, 2]) LongTensor from equal-length rows.

    np.fromiter over the flattened rows is about 4x faster than torch.tensor(rows) for the
    millions of ints of a large batch.
    """
    import itertools

    import numpy as np
    import torch

    values = itertools.chain.from_iterable(rows)
    if pairs:
        values = itertools.chain.from_iterable(values)
    if none_as is not None:
        values = (none_as if v is None else v for v in values)
    shape = (len(rows), width, 2) if pairs else (len(rows), width)
    array = np.fromiter(values, dtype=np.int64, count=int(np.prod(shape)))
    return torch.from_numpy(array.reshape(shape))


def _is_truncation_error(exc: Exception) -> bool:
    message = str(exc)
    return "Truncation error" in message or "stride" in message.lower()



def _check_training_files(files: str | os.PathLike | Iterable[str | os.PathLike]) -> list[Path]:
    if isinstance(files, (str, os.PathLike)):
        files = [files]
    paths = [Path(f) for f in files]
    if not paths:
        raise OneBertError("no training files given")
    from onebert.text_input import check_input_file

    for path in paths:
        if path.is_dir():
            raise OneBertError(f"{path}: is a directory; pass the text files inside it")
        check_input_file(path)  # a FIFO or device is named as such (not "no such file"); reading it never ends
    return paths


def _read_text_lines(paths: list[Path], stats: TrainingStats, batch_size: int = 1000) -> Iterator[list[str]]:
    """Yield batches of text lines from UTF-8 files (.gz decompressed), counting lines as it goes."""
    batch: list[str] = []
    for path in paths:
        opener = gzip.open if path.suffix == ".gz" else open
        try:
            with opener(path, "rb") as handle:
                for number, raw in enumerate(handle, start=1):
                    try:
                        line = raw.decode("utf-8-sig" if number == 1 else "utf-8")
                    except UnicodeDecodeError as exc:
                        raise OneBertError(f"{path}: line {number}: not valid UTF-8 "
                                           f"(byte 0x{raw[exc.start]:02x})") from None
                    stats.lines += 1
                    if line.strip():
                        stats.lines_with_text += 1
                        batch.append(line)
                        if len(batch) >= batch_size:
                            yield batch
                            batch = []
        except (gzip.BadGzipFile, EOFError) as exc:
            raise OneBertError(f"{path}: not a valid gzip file ({exc})") from None
        except OSError as exc:
            raise OneBertError(f"{path}: cannot read: {exc.strerror or exc}") from None
    if batch:
        yield batch
