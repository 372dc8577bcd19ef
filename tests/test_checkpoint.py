"""Checkpoints are atomic and checksummed; damaged ones are detected, skipped on auto-resume, refused when named."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch

from onebert.errors import OneBertError
from onebert.train import checkpoint as ckpt


def _state(step: int) -> dict:
    return {"format": ckpt.FORMAT_VERSION, "step": step, "model": {"w": torch.full((4, 4), float(step))},
            "optimizer": {"state": {}, "param_groups": []}, "schedule": {"total_steps": 10},
            "ranks": [{"rng": ckpt.capture_rng_state(), "data": {"position": step}}], "trainer": {"train_seconds": 1.5}}


def test_save_writes_state_and_checksummed_manifest_and_keeps_last_k(tmp_path):
    for step in (1, 2, 3, 4):
        ckpt.save_checkpoint(tmp_path, step, _state(step), keep_last=2)
    paths = ckpt.list_checkpoints(tmp_path)
    assert [p.name for p in paths] == ["step-00000003", "step-00000004"]
    manifest = json.loads((paths[-1] / "manifest.json").read_text())
    assert manifest["step"] == 4 and len(manifest["sha256"]) == 64
    assert manifest["bytes"] == (paths[-1] / "state.pt").stat().st_size
    loaded = ckpt.load_checkpoint(paths[-1])
    assert torch.equal(loaded["model"]["w"], torch.full((4, 4), 4.0)) and loaded["ranks"][0]["data"] == {"position": 4}


def test_rng_states_round_trip_through_a_checkpoint(tmp_path):
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    ckpt.save_checkpoint(tmp_path, 1, _state(1))
    expected = (random.random(), float(np.random.rand()), float(torch.rand(1)))
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    ckpt.restore_rng_state(ckpt.load_checkpoint(ckpt.list_checkpoints(tmp_path)[0])["ranks"][0]["rng"])
    assert (random.random(), float(np.random.rand()), float(torch.rand(1))) == expected


@pytest.mark.parametrize("damage", ["truncate", "flip_byte", "no_manifest", "garbage_manifest"])
def test_damaged_newest_checkpoint_is_skipped_with_a_message_and_the_previous_used(tmp_path, damage):
    ckpt.save_checkpoint(tmp_path, 1, _state(1))
    newest = ckpt.save_checkpoint(tmp_path, 2, _state(2))
    state_file = newest / "state.pt"
    data = state_file.read_bytes()
    if damage == "truncate":
        state_file.write_bytes(data[: len(data) // 2])
    elif damage == "flip_byte":
        state_file.write_bytes(data[:100] + bytes([data[100] ^ 0xFF]) + data[101:])
    elif damage == "no_manifest":
        (newest / "manifest.json").unlink()
    else:
        (newest / "manifest.json").write_text("{not json")
    messages = []
    path, state = ckpt.resolve_resume(tmp_path, "auto", log=messages.append)
    assert path.name == "step-00000001" and state["step"] == 1
    assert len(messages) == 1 and "step-00000002" in messages[0] and "skipping" in messages[0]
    with pytest.raises(OneBertError) as info:  # named explicitly, the same damage is an error
        ckpt.resolve_resume(tmp_path, str(newest))
    assert "\n" not in str(info.value) and "step-00000002" in str(info.value)


def test_a_checkpoint_that_is_valid_bytes_but_not_ours_is_refused(tmp_path):
    path = ckpt.save_checkpoint(tmp_path, 1, {"format": 1, "step": 1})
    with pytest.raises(ckpt.CheckpointError, match="not a onebert training checkpoint"):
        ckpt.load_checkpoint(path)


def test_pickled_code_is_refused_by_weights_only_loading(tmp_path):
    path = ckpt.save_checkpoint(tmp_path, 1, {**_state(1), "evil": _Evil()})
    with pytest.raises(ckpt.CheckpointError, match="cannot be loaded"):
        ckpt.load_checkpoint(path)


class _Evil:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_interrupted_save_leaves_no_checkpoint_and_its_leftover_is_cleaned(tmp_path, monkeypatch):
    ckpt.save_checkpoint(tmp_path, 1, _state(1))

    def crash(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        ckpt.save_checkpoint(tmp_path, 2, _state(2))
    monkeypatch.undo()
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ["step-00000001"]
    assert not list(ckpt.checkpoint_dir(tmp_path).glob(".*"))
    # a leftover from a kill -9 (no exception handler ran) is ignored, then removed by the next save
    (ckpt.checkpoint_dir(tmp_path) / ".step-00000002.abc.tmp").mkdir()
    assert ckpt.resolve_resume(tmp_path, "auto")[0].name == "step-00000001"
    ckpt.save_checkpoint(tmp_path, 2, _state(2))
    assert not list(ckpt.checkpoint_dir(tmp_path).glob(".*"))


def test_all_checkpoints_damaged_is_an_error_not_a_silent_fresh_start(tmp_path):
    path = ckpt.save_checkpoint(tmp_path, 1, _state(1))
    (path / "state.pt").write_bytes(b"")
    with pytest.raises(OneBertError, match="none of the 1 checkpoints is intact"):
        ckpt.resolve_resume(tmp_path, "auto", log=lambda m: None)
    assert ckpt.resolve_resume(tmp_path / "fresh", "auto") is None
