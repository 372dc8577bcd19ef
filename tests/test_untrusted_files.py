"""Checkpoints, configs and tokenizers from strangers: nothing in them runs code, allocates absurd memory,
reads outside its directory or pairs ids with embeddings they do not fit. Every refusal is one line."""

from __future__ import annotations

import ast
import json
import os
import pickle
import shutil
from pathlib import Path

import pytest
import torch

from onebert.errors import OneBertError
from onebert.model import BertModel
from onebert.model.config import BertConfig

PACKAGE = Path(__file__).resolve().parents[1] / "onebert"


def one_line(exc_info, *names: str) -> str:
    message = str(exc_info.value)
    assert len(message.splitlines()) == 1 and len(message) < 500, message
    assert all(name in message for name in names), message
    return message


class WritesFile:
    """Unpickling this calls open(path, 'w').write(...): proof, by a file on disk, that code ran."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return (exec, (f"open({self.path!r}, 'w').write('code ran')",))


@pytest.fixture()
def tiny_dir(tmp_path, tiny_config) -> Path:
    directory = tmp_path / "model"
    BertModel(tiny_config).save_pretrained(directory)
    return directory


# ----------------------------------------------------------------------------- weights never unpickle code

@pytest.mark.parametrize("layout", ["torch.save zip", "legacy pickle", "tensor beside the payload"])
def test_pickle_weights_with_a_code_payload_are_refused_and_the_code_never_runs(tmp_path, tiny_config, layout):
    directory = tmp_path / "model"
    directory.mkdir()
    tiny_config.save(directory)
    side_effect = tmp_path / "pwned"
    payload = WritesFile(side_effect)
    if layout == "torch.save zip":
        torch.save({"embeddings.word_embeddings.weight": payload}, directory / "pytorch_model.bin")
    elif layout == "legacy pickle":
        (directory / "pytorch_model.bin").write_bytes(pickle.dumps(payload, protocol=2))
    else:
        torch.save({"embeddings.word_embeddings.weight": torch.zeros(2), "extra": payload},
                   directory / "pytorch_model.bin")
    with pytest.raises(OneBertError) as error:
        BertModel.from_pretrained(directory)
    one_line(error, "pytorch_model.bin")
    assert not side_effect.exists(), "unpickling ran the payload"


def test_pickle_weights_holding_non_tensors_are_a_one_line_error(tmp_path, tiny_config):
    tiny_config.save(tmp_path)
    torch.save({"embeddings.word_embeddings.weight": 5, 7: torch.zeros(1)}, tmp_path / "pytorch_model.bin")
    with pytest.raises(OneBertError) as error:
        BertModel.from_pretrained(tmp_path)
    one_line(error, "pytorch_model.bin", "named tensors")


def test_a_training_checkpoint_with_a_code_payload_and_a_valid_checksum_never_runs_it(tmp_path):
    import hashlib

    from onebert.train.checkpoint import MANIFEST_FILE, STATE_FILE, CheckpointError, load_checkpoint

    checkpoint = tmp_path / "step-00000001"
    checkpoint.mkdir()
    side_effect = tmp_path / "pwned"
    torch.save({"format": 1, "step": 1, "model": WritesFile(side_effect)}, checkpoint / STATE_FILE)
    data = (checkpoint / STATE_FILE).read_bytes()
    (checkpoint / MANIFEST_FILE).write_text(json.dumps({"format": 1, "step": 1, "file": STATE_FILE, "bytes": len(data),
                                                        "sha256": hashlib.sha256(data).hexdigest()}))
    with pytest.raises(CheckpointError) as error:
        load_checkpoint(checkpoint)
    assert len(str(error.value).splitlines()) == 1
    assert not side_effect.exists()


_REFUSED_PAYLOADS = {
    "code payload": lambda path, tmp: torch.save({"model": WritesFile(tmp / "pwned")}, path),
    "a class that is not allow-listed": lambda path, tmp: torch.save({"model": frozenset()}, path),
    "a pickle opcode torch does not know": lambda path, tmp: path.write_bytes(b"\x80\x02garbage"),
    "a legacy pickle of a global": lambda path, tmp: path.write_bytes(pickle.dumps(int, protocol=2)),
}


def _reason(message: str) -> str:
    return message.split("refused to unpickle anything but tensors", 1)[1].split(":", 1)[1].strip(" )")


@pytest.mark.parametrize("payload", sorted(_REFUSED_PAYLOADS))
def test_refused_weights_say_why_and_never_suggest_weights_only_false(tmp_path, tiny_config, payload):
    directory = tmp_path / "model"
    directory.mkdir()
    tiny_config.save(directory)
    _REFUSED_PAYLOADS[payload](directory / "pytorch_model.bin", tmp_path)
    with pytest.raises(OneBertError) as error:
        BertModel.from_pretrained(directory)
    message = one_line(error, "pytorch_model.bin", "refused to unpickle")
    assert len(_reason(message)) >= 5, message
    assert "weights_only" not in message and "safe_globals" not in message, message


@pytest.mark.parametrize("payload", sorted(_REFUSED_PAYLOADS))
def test_refused_checkpoints_say_why_and_never_suggest_weights_only_false(tmp_path, payload):
    import hashlib

    from onebert.train.checkpoint import MANIFEST_FILE, STATE_FILE, CheckpointError, load_checkpoint

    checkpoint = tmp_path / "step-00000001"
    checkpoint.mkdir()
    _REFUSED_PAYLOADS[payload](checkpoint / STATE_FILE, tmp_path)
    data = (checkpoint / STATE_FILE).read_bytes()
    (checkpoint / MANIFEST_FILE).write_text(json.dumps({"format": 1, "step": 1, "file": STATE_FILE, "bytes": len(data),
                                                        "sha256": hashlib.sha256(data).hexdigest()}))
    with pytest.raises(CheckpointError) as error:
        load_checkpoint(checkpoint)
    message = one_line(error, STATE_FILE, "refused to unpickle")
    assert len(_reason(message)) >= 5, message
    assert "weights_only" not in message and "safe_globals" not in message, message
    assert not (tmp_path / "pwned").exists()


def _calls(tree: ast.AST, module: str, function: str):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == function \
                and isinstance(node.func.value, ast.Name) and node.func.value.id == module:
            yield node


def test_every_deserialiser_in_the_package_refuses_code():
    """Read every module: torch.load only with weights_only=True, np.load never with allow_pickle, no pickle,
    marshal or unsafe YAML. A new call site that forgets this fails here, not in a user's machine."""
    problems = []
    for file in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(file.read_text(encoding="utf-8"))
        where = file.relative_to(PACKAGE.parent)
        for call in _calls(tree, "torch", "load"):
            flag = next((k.value for k in call.keywords if k.arg == "weights_only"), None)
            if not (isinstance(flag, ast.Constant) and flag.value is True):
                problems.append(f"{where}:{call.lineno}: torch.load without weights_only=True")
        for call in _calls(tree, "np", "load"):
            flag = next((k.value for k in call.keywords if k.arg == "allow_pickle"), None)
            if flag is not None and not (isinstance(flag, ast.Constant) and flag.value is False):
                problems.append(f"{where}:{call.lineno}: np.load with allow_pickle")
        for module, function in (("pickle", "load"), ("pickle", "loads"), ("marshal", "loads"), ("yaml", "unsafe_load"),
                                 ("yaml", "full_load")):
            problems += [f"{where}:{c.lineno}: {module}.{function}" for c in _calls(tree, module, function)]
        for call in _calls(tree, "yaml", "load"):
            loader = next((k.value for k in call.keywords if k.arg == "Loader"), None)
            defined_safe = {node.name for node in ast.walk(tree) if isinstance(node, ast.ClassDef)
                            and any(ast.unparse(base) in ("yaml.SafeLoader", "SafeLoader") for base in node.bases)}
            name = ast.unparse(loader) if loader is not None else ""
            if name not in defined_safe and name not in ("yaml.SafeLoader", "SafeLoader"):
                problems.append(f"{where}:{call.lineno}: yaml.load with Loader={name or 'default'}")
    assert not problems, problems


# ----------------------------------------------------------------------------- config values

@pytest.mark.parametrize("field, value, expected", [
    ("hidden_size", 10**9, "'hidden_size' is 1000000000, more than"),
    ("vocab_size", 10**12, "'vocab_size' is"),
    ("max_position_embeddings", 2**40, "'max_position_embeddings' is"),
    ("num_hidden_layers", 0, "'num_hidden_layers' must be a positive integer"),
    ("intermediate_size", -3072, "'intermediate_size' must be a positive integer"),
    ("num_attention_heads", 5.0, "'num_attention_heads' must be a positive integer"),
    ("vocab_size", "30522", "'vocab_size' must be a positive integer"),
    ("hidden_dropout_prob", float("nan"), "'hidden_dropout_prob' must be in [0, 1)"),
    ("initializer_range", float("inf"), "'initializer_range' must be a positive finite number"),
    ("layer_norm_eps", 0, "'layer_norm_eps' must be in (0, 1)"),
    ("id2label", ["NEG", "POS"], "'id2label' must be an object"),
    ("id2label", {"zero": "NEG"}, "'id2label' must map indices"),
    ("hidden_act", "rm -rf", "'hidden_act' must be one of"),
])
def test_config_values_are_checked_before_anything_is_built(tmp_path, minilm_dir, field, value, expected):
    """Sizes are refused by value, so a hostile config.json never gets as far as allocating a model."""
    data = json.loads((minilm_dir / "config.json").read_text())
    data[field] = value
    (tmp_path / "config.json").write_text(json.dumps(data))
    os.symlink(minilm_dir / "model.safetensors", tmp_path / "model.safetensors")
    with pytest.raises(OneBertError) as error:
        BertModel.from_pretrained(tmp_path)
    one_line(error, str(tmp_path / "config.json"), expected)


def test_sizes_each_in_range_but_absurd_together_are_refused():
    with pytest.raises(OneBertError) as error:
        BertConfig(vocab_size=4_000_000, hidden_size=65536, num_attention_heads=64, intermediate_size=262144)
    one_line(error, "parameters, more than")


def test_every_preset_stays_within_the_limits():
    from onebert.model.config import MAX_PARAMETERS, PRESETS

    assert all(config.estimated_parameters() < MAX_PARAMETERS / 100 for config in PRESETS.values())


def test_config_vocab_size_that_disagrees_with_the_embeddings_is_named_before_the_model_is_built(tmp_path, minilm_dir,
                                                                                                 monkeypatch):
    data = json.loads((minilm_dir / "config.json").read_text())
    data["vocab_size"] = 1000
    (tmp_path / "config.json").write_text(json.dumps(data))
    os.symlink(minilm_dir / "model.safetensors", tmp_path / "model.safetensors")
    monkeypatch.setattr(BertModel, "__init__", lambda *a, **k: pytest.fail("a model was built"))
    with pytest.raises(OneBertError) as error:
        BertModel.from_pretrained(tmp_path)
    one_line(error, "model.safetensors", "word_embeddings.weight' is 30522 x 384", "vocab_size=1000")


# ----------------------------------------------------------------------------- tokenizer meets model

def _model_with_a_bigger_tokenizer(tmp_path: Path, minilm_dir: Path) -> Path:
    directory = tmp_path / "model"
    directory.mkdir()
    os.symlink(minilm_dir / "model.safetensors", directory / "model.safetensors")
    shutil.copy(minilm_dir / "config.json", directory / "config.json")
    extra = "".join(f"zzextra{i}\n" for i in range(50))
    vocab = (minilm_dir / "vocab.txt").read_text(encoding="utf-8")
    (directory / "vocab.txt").write_text(vocab + extra, encoding="utf-8")
    return directory


def test_a_tokenizer_larger_than_the_model_embeddings_is_refused_where_they_meet(tmp_path, minilm_dir):
    from onebert.infer.embedder import embed
    from onebert.tokenizer import Tokenizer

    directory = _model_with_a_bigger_tokenizer(tmp_path, minilm_dir)
    tokenizer = Tokenizer.from_pretrained(directory)
    with pytest.raises(OneBertError) as error:
        tokenizer.check_fits(BertConfig.load(directory), where=str(directory))
    one_line(error, str(directory), "30572 tokens", "vocab_size is 30522")
    Tokenizer.from_pretrained(minilm_dir).check_fits(BertConfig.load(minilm_dir))  # the real pair fits
    with pytest.raises(OneBertError) as error:  # the embeddings API, where the id would index past the table
        embed(directory, ["hello zzextra7"])
    one_line(error, "30572 tokens")


def test_tokenizer_json_with_a_gap_in_its_ids_is_refused(tmp_path):
    from onebert.tokenizer import Tokenizer

    (tmp_path / "vocab.txt").write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\nhello\nworld\n")
    Tokenizer.from_pretrained(tmp_path).save_pretrained(tmp_path)
    spec = json.loads((tmp_path / "tokenizer.json").read_text())
    spec["model"]["vocab"]["hello"] = 1_000_000  # would index a million rows into a 7-row table
    (tmp_path / "tokenizer.json").write_text(json.dumps(spec))
    with pytest.raises(OneBertError) as error:
        Tokenizer.from_pretrained(tmp_path)
    one_line(error, "tokenizer.json", "without gaps")


# ----------------------------------------------------------------------------- paths stay inside their directory

@pytest.mark.parametrize("shard", ["../outside/model.safetensors", "sub/../../outside/model.safetensors",
                                   "{outside}/model.safetensors", "/etc/passwd", "../../../../../../etc/passwd"])
def test_index_file_pointing_outside_the_model_directory_is_refused(tmp_path, tiny_config, shard):
    """The shard outside is a valid checkpoint: had it been read, the model would have loaded."""
    outside = tmp_path / "outside"
    BertModel(tiny_config).save_pretrained(outside)
    directory = tmp_path / "model"
    directory.mkdir()
    tiny_config.save(directory)
    shard = shard.format(outside=outside)
    index = {"metadata": {}, "weight_map": {"embeddings.word_embeddings.weight": shard}}
    (directory / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(OneBertError) as error:
        BertModel.from_pretrained(directory)
    one_line(error, "model.safetensors.index.json", "outside the model directory")


def test_sharded_checkpoint_in_a_subfolder_and_linked_from_a_cache_loads(tmp_path, tiny_config):
    """Shards may live in a subfolder or be symlinks into a blob store (the HuggingFace cache layout)."""
    from safetensors.torch import save_file

    model = BertModel(tiny_config)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    names = sorted(state)
    blobs = tmp_path / "blobs"
    blobs.mkdir()
    snapshot = tmp_path / "snapshots" / "abc"
    (snapshot / "part").mkdir(parents=True)
    save_file({k: state[k] for k in names[::2]}, str(blobs / "sha-1"))
    os.symlink("../../blobs/sha-1", snapshot / "model-1.safetensors")
    save_file({k: state[k] for k in names[1::2]}, str(snapshot / "part" / "model-2.safetensors"))
    weight_map = {k: "model-1.safetensors" if i % 2 == 0 else "part/model-2.safetensors" for i, k in enumerate(names)}
    (snapshot / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    tiny_config.save(snapshot)
    loaded = BertModel.from_pretrained(snapshot)
    assert all(torch.equal(loaded.state_dict()[k], state[k]) for k in names)


@pytest.mark.parametrize("index", ['{"weight_map": ["a"]}', '{"weight_map": {"a": 5}}', '[1, 2]', '{"weight_map": {',
                                   '{"weight_map": {"a": "' + "x" * 5000 + '/../b"}}'])
def test_malformed_index_file_is_a_one_line_error(tmp_path, tiny_config, index):
    tiny_config.save(tmp_path)
    (tmp_path / "model.safetensors.index.json").write_text(index)
    with pytest.raises(OneBertError) as error:
        BertModel.from_pretrained(tmp_path)
    one_line(error, "model.safetensors.index.json")


def test_data_directory_metadata_cannot_point_outside_the_directory(tmp_path, monkeypatch):
    import numpy as np

    from onebert.data import shards

    directory = tmp_path / "data"
    (directory / "shards").mkdir(parents=True)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    for field, values in (("tokens", []), ("offsets", [0]), ("a_lengths", []), ("labels", [])):
        np.save(outside / f"x.{field}.npy", np.array(values, dtype=np.int64))
    metadata = {"format": shards.FORMAT_NAME, "format_version": shards.FORMAT_VERSION,
                "splits": {"train": {"shards": [{"name": "../../elsewhere/x", "instances": 0}]}}}
    (directory / "metadata.json").write_text(json.dumps(metadata))
    reads = []
    real_load = np.load
    monkeypatch.setattr(shards.np, "load", lambda file, *a, **k: reads.append(Path(file)) or real_load(file, *a, **k))
    with pytest.raises(OneBertError) as error:
        shards.PretrainingData.open(directory)
    assert "outside" in str(error.value) and not reads


@pytest.mark.parametrize("metadata", ['{"format": "onebert-pretraining-data", "format_version": 1}',
                                      '{"format": "onebert-pretraining-data", "format_version": 1, "splits": []}',
                                      "[" * 5000])
def test_malformed_data_directory_metadata_is_a_one_line_error(tmp_path, metadata):
    from onebert.data.shards import PretrainingData

    (tmp_path / "metadata.json").write_text(metadata)
    with pytest.raises(OneBertError) as error:
        PretrainingData.open(tmp_path)
    one_line(error, "metadata.json")
