"""`onebert demo` end to end (the README's first command) on a tiny budget: every stage runs and leaves its output."""

from __future__ import annotations

import json

import pytest

from onebert.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")


def test_demo_runs_every_stage_and_fills_in_masks(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--output", str(out), "--minutes", "0.1", "--model-config", "tiny", "--vocab-size", "1000",
                 "--max-seq-length", "64", "--batch-size", "16"]) == 0
    printed = capsys.readouterr().out
    assert "built-in corpus" in printed and "fills in [MASK]" in printed and printed.count("\n      -> ") == 3
    assert json.loads((out / "data" / "metadata.json").read_text())["splits"]["train"]["instances"] > 1000
    final = out / "run" / "final"
    assert {"config.json", "model.safetensors", "vocab.txt"} <= {p.name for p in final.iterdir()}
    assert (out / "run" / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    records = [json.loads(line) for line in (out / "run" / "metrics.jsonl").read_text().splitlines()]
    assert any(r["split"] == "eval" for r in records)
