"""A tiny pretrained-model directory and small synthetic task files, for fast fine-tuning tests.

The model is a 2-layer, 32-wide BERT with a hand-made WordPiece vocabulary (every letter, so any
lower-case text tokenizes); the tasks are easy enough that it learns them in a few dozen steps:
pairs whose second text contains "good", numbers of "good"s, names and cities, "where does X live?".
"""

from __future__ import annotations

import json
import random
import string
from pathlib import Path

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
WORDS = ("the a good bad movie film was is not very and plot acting john mary anna paris london rome lives "
         "works in where does who live ? . , city name of to from new york").split()
NAMES = ["john", "mary", "anna"]
CITIES = ["paris", "london", "rome"]
FILLER = ["the", "movie", "was", "very", "a", "film", "plot", "and", "acting", "is", "not"]


def make_tiny_model(directory: Path, seed: int = 0, max_position_embeddings: int = 64) -> Path:
    """A random-weight BertModel directory with tokenizer files, like a small pretraining output."""
    import torch

    from onebert.model import BertModel
    from onebert.model.config import BertConfig
    from onebert.tokenizer import Tokenizer

    directory.mkdir(parents=True, exist_ok=True)
    letters = list(string.ascii_lowercase + string.digits)
    vocab = SPECIALS + list(".,?!'-") + letters + ["##" + c for c in letters] + [w for w in WORDS if len(w) > 1]
    vocab = list(dict.fromkeys(vocab))
    (directory / "vocab.txt").write_text("".join(token + "\n" for token in vocab), encoding="utf-8")
    Tokenizer.from_vocab(directory / "vocab.txt").save_pretrained(directory)
    config = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=max_position_embeddings,
                        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    torch.manual_seed(seed)
    BertModel(config).save_pretrained(directory)
    return directory


def save_random_heads(root: Path, specs: dict, seed: int = 1) -> dict[str, Path]:
    """Fine-tuned model directories without training: the tiny base (`root/base`) with each TaskSpec's head
    drawn at std 1.0, so its outputs have opinions (deterministic outputs to compare). name -> directory,
    and "base" -> the base."""
    import torch

    from onebert.infer.predictor import load_tokenizer, model_class
    from onebert.model.config import BertConfig
    from onebert.train.finetuning import save_model_dir

    base = make_tiny_model(root / "base")
    config = BertConfig.load(base)
    tokenizer = load_tokenizer(base, config)
    out = {"base": base}
    for name, spec in specs.items():
        torch.manual_seed(seed)
        model = model_class(spec.task).from_pretrained(base, config=spec.apply_to(config))
        for parameter in (model.classifier if hasattr(model, "classifier") else model.qa_outputs).parameters():
            torch.nn.init.normal_(parameter, std=1.0)  # a head with opinions
        save_model_dir(model, tokenizer, spec, root / name)
        out[name] = root / name
    return out


def _sentence(rng: random.Random, length: int) -> list[str]:
    return [rng.choice(FILLER) for _ in range(length)]


def write_pairs(path: Path, n: int, seed: int) -> Path:
    """sentence1 / sentence2 / label: "yes" when the second sentence says "good"."""
    rng = random.Random(seed)
    lines = ["sentence1\tsentence2\tlabel"]
    for i in range(n):
        second = _sentence(rng, rng.randint(2, 8))
        positive = i % 2 == 0
        if positive:
            second.insert(rng.randrange(len(second) + 1), "good")
        lines.append(f"{' '.join(_sentence(rng, rng.randint(2, 8)))}\t{' '.join(second)}\t{'yes' if positive else 'no'}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def write_regression(path: Path, n: int, seed: int) -> Path:
    """text / score: 1.0 when the text says "good" (once or twice), else 0.0 (decimals: detected as regression)."""
    rng = random.Random(seed)
    lines = ["text\tscore"]
    for i in range(n):
        words = _sentence(rng, rng.randint(2, 6))
        k = (i % 2) * rng.randint(1, 2)
        for _ in range(k):
            words.insert(rng.randrange(len(words) + 1), "good")
        lines.append(f"{' '.join(words)}\t{1.0 if k else 0.0}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def write_conll(path: Path, n: int, seed: int) -> Path:
    """Sentences with names (PER), cities (LOC) and "new york" (B-LOC I-LOC), CoNLL-2003 style."""
    rng = random.Random(seed)
    lines = ["-DOCSTART- O", ""]
    for _ in range(n):
        tokens: list[tuple[str, str]] = [(w, "O") for w in _sentence(rng, rng.randint(1, 4))]
        tokens.append((rng.choice(NAMES), "B-PER"))
        tokens += [("lives", "O"), ("in", "O")]
        tokens += [("new", "B-LOC"), ("york", "I-LOC")] if rng.random() < 0.3 else [(rng.choice(CITIES), "B-LOC")]
        tokens += [(w, "O") for w in _sentence(rng, rng.randint(0, 3))] + [(".", "O")]
        lines += [f"{word} {tag}" for word, tag in tokens] + [""]
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def write_squad(path: Path, n: int, seed: int, version_2: bool = True) -> Path:
    """Two people and their cities per context; a question about a third person has no answer (v2.0)."""
    rng = random.Random(seed)
    paragraphs = []
    for i in range(n):
        first, second, absent = rng.sample(NAMES, 3)
        city_a, city_b = rng.sample(CITIES, 2)
        context = f"{' '.join(_sentence(rng, 2))} {first} lives in {city_a} . {second} lives in {city_b} ."
        qas = [{"id": f"q{i}a", "question": f"where does {first} live ?",
                "answers": [{"text": city_a, "answer_start": context.index(f"in {city_a}") + 3}]}]
        if version_2:
            qas.append({"id": f"q{i}b", "question": f"where does {absent} live ?", "answers": [],
                        "is_impossible": True})
        paragraphs.append({"context": context, "qas": qas})
    data = {"version": "v2.0" if version_2 else "1.1", "data": [{"title": "tiny", "paragraphs": paragraphs}]}
    path.write_text(json.dumps(data), encoding="utf-8")
    return path
