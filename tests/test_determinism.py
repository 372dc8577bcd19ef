"""Same seed and config, same bits: `onebert prepare` shards, the masks drawn from them and the first
pretraining losses on CPU are identical across two separate processes.

The two runs differ in everything that must not matter: PYTHONHASHSEED (so set and dict-of-str order
and hash() differ), the number of prepare workers, and the output directories. The tokenizer is
the MiniLM vocabulary rather than one trained on the corpus, because WordPiece training is not
deterministic in tokenizers 0.23 (huggingface/tokenizers#1794). Both runs use one CPU thread: a
different thread count may change float summation order. GPU runs are not covered here.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from synthetic_pretraining import WORDS

REPO = Path(__file__).resolve().parents[1]
PREPARE = ["--max-seq-length", "64", "--shard-size", "3000", "--dupe-factor", "2", "--validation-fraction", "0.1",
           "--format", "lines", "--no-progress"]
PRETRAIN = ["--model-config", "tiny", "--max-steps", "4", "--batch-size", "8", "--log-every", "1", "--eval-every", "4",
            "--save-every", "1000", "--precision", "fp32", "--device", "cpu", "--lr", "1e-3", "--seed", "5",
            "--whole-word-masking"]
# Prepare, draw masked batches, pretrain: one process, so torch is imported once.
RUN = """
import json, sys
from onebert.cli import main
from onebert.data import MaskingConfig, PretrainingData

corpus, tokenizer, out, seed, workers, prepare, pretrain = sys.argv[1:]
assert main(["prepare", "--corpus", corpus, "--tokenizer", tokenizer, "--output", out + "/data", "--seed", seed,
             "--workers", workers, *json.loads(prepare)]) == 0
data = PretrainingData.open(out + "/data")
batches = iter(data.train_batches(8, seed=3, masking=MaskingConfig(whole_word=True)))
masked = [{key: value.tolist() for key, value in next(batches).items()} for _ in range(6)]
with open(out + "/masked_batches.json", "w") as handle:
    json.dump(masked, handle)
assert main(["pretrain", "--data", out + "/data", "--output", out + "/run", *json.loads(pretrain)]) == 0
"""
TRAINING_FIELDS = ("split", "step", "loss", "mlm_loss", "mlm_accuracy", "nsp_loss", "nsp_accuracy", "lr", "grad_norm")


def write_corpus(path: Path) -> Path:
    rng = random.Random(0)
    documents = ["\n".join(" ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 14))).capitalize() + "."
                           for _ in range(rng.randint(8, 16))) for _ in range(40)]
    path.write_text("\n\n".join(documents) + "\n")
    return path


def run_in_a_fresh_process(corpus: Path, tokenizer: Path, out: Path, hash_seed: str, workers: int) -> None:
    env = {**os.environ, "PYTHONHASHSEED": hash_seed, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run([sys.executable, "-c", RUN, str(corpus), str(tokenizer), str(out), "17", str(workers),
                             json.dumps(PREPARE), json.dumps(PRETRAIN)], env=env, cwd=out.parent,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]


def files_under(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def training_records(run_dir: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return [{k: row.get(k) for k in TRAINING_FIELDS} for row in rows]


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory, minilm_dir) -> tuple[Path, Path, Path]:
    root = tmp_path_factory.mktemp("determinism")
    corpus = write_corpus(root / "corpus.txt")
    first, second = root / "first", root / "second"
    first.mkdir()
    second.mkdir()
    run_in_a_fresh_process(corpus, minilm_dir, first, hash_seed="1", workers=1)
    run_in_a_fresh_process(corpus, minilm_dir, second, hash_seed="2", workers=2)
    return corpus, first, second


def test_prepare_gives_bit_identical_data_directories_across_processes_and_worker_counts(two_runs):
    _, first, second = two_runs
    a, b = files_under(first / "data"), files_under(second / "data")
    assert sum(name.startswith("shards/") for name in a) >= 3 * 4  # several shards of 4 arrays each
    assert a.keys() == b.keys()
    assert [name for name in a if a[name] != b[name]] == []


def test_another_seed_gives_other_shards(two_runs, minilm_dir, tmp_path):
    """The control: the comparison above can fail (the seed reaches the shards)."""
    from onebert.cli import main

    corpus, first, _ = two_runs
    assert main(["prepare", "--corpus", str(corpus), "--tokenizer", str(minilm_dir), "--output", str(tmp_path / "data"),
                 "--seed", "18", "--workers", "1", *PREPARE]) == 0
    a, c = files_under(first / "data"), files_under(tmp_path / "data")
    assert a["metadata.json"] != c["metadata.json"]
    assert any(a[name] != c.get(name) for name in a if name.startswith("shards/"))


def test_masked_batches_are_identical_across_processes(two_runs):
    _, first, second = two_runs
    a = json.loads((first / "masked_batches.json").read_text())
    b = json.loads((second / "masked_batches.json").read_text())
    assert len(a) == 6 and sum(label != -100 for batch in a for row in batch["labels"] for label in row) > 50
    assert a == b


def test_first_pretraining_steps_give_identical_losses_and_weights_on_cpu(two_runs):
    _, first, second = two_runs
    a, b = training_records(first / "run"), training_records(second / "run")
    assert [r["step"] for r in a if r["split"] == "train"] == [1, 2, 3, 4]
    assert any(r["split"] != "train" for r in a)  # the held-out evaluation at step 4 is compared too
    assert a == b
    assert (first / "run" / "final" / "model.safetensors").read_bytes() == \
        (second / "run" / "final" / "model.safetensors").read_bytes()
