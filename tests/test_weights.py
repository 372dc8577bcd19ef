"""HuggingFace-layout checkpoints: real weights load exactly, saves load in transformers, bad files are named."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

import onebert
from onebert.errors import OneBertError
from onebert.model import BertForPreTraining, BertForSequenceClassification, BertModel
from onebert.model.config import BertConfig

transformers = pytest.importorskip("transformers")


def _mrpc_pairs(shared_data, count=24):
    lines = (shared_data / "mrpc" / "dev.tsv").read_text(encoding="utf-8-sig").splitlines()[1:count + 1]
    rows = [line.split("\t") for line in lines]
    return [r[3] for r in rows], [r[4] for r in rows]


def test_real_minilm_checkpoint_matches_transformers(minilm_dir, shared_data):
    ours = onebert.BertModel.from_pretrained(minilm_dir).eval()
    theirs = transformers.BertModel.from_pretrained(minilm_dir, attn_implementation="sdpa").eval()
    tokenizer = transformers.BertTokenizerFast.from_pretrained(minilm_dir)
    first, second = _mrpc_pairs(shared_data)
    batch = tokenizer(first, second, padding=True, truncation=True, max_length=128, return_tensors="pt")
    lengths = batch["attention_mask"].sum(1)
    assert lengths.min() < lengths.max(), "the batch must be differently padded"
    with torch.no_grad():
        a, b = ours(**batch), theirs(**batch)
    real = batch["attention_mask"].bool()
    assert (a.last_hidden_state[real] - b.last_hidden_state[real]).abs().max() <= 1e-5
    assert (a.pooler_output - b.pooler_output).abs().max() <= 1e-5


@pytest.mark.parametrize("speed", [None, {"packed_attention": True}, {"unpadding": False}],
                         ids=["default", "packed", "padded"])
def test_real_minilm_hidden_states_and_attentions_match_transformers_for_the_same_tokenizer_call(minilm_dir,
                                                                                                shared_data, speed):
    from onebert.model.config import SpeedConfig
    from onebert.tokenizer import Tokenizer

    first, second = _mrpc_pairs(shared_data, count=12)
    texts = first + second
    # The same call on both tokenizers, each straight into its model.
    theirs_batch = transformers.BertTokenizerFast.from_pretrained(minilm_dir)(texts, return_tensors="pt", padding=True)
    ours_batch = Tokenizer.from_pretrained(minilm_dir)(texts, return_tensors="pt", padding=True)
    ours = onebert.BertModel.from_pretrained(minilm_dir, speed=SpeedConfig(**speed) if speed else None).eval()
    # Eager attention: transformers' SDPA path returns no attention maps.
    theirs = transformers.BertModel.from_pretrained(minilm_dir, attn_implementation="eager").eval()
    real = theirs_batch["attention_mask"].bool()
    assert real.sum(1).min() < real.sum(1).max(), "the batch must be differently padded"
    with torch.no_grad():
        b = theirs(**theirs_batch, output_hidden_states=True, output_attentions=True)
        states = ours(**ours_batch, output_hidden_states=True)  # hidden states alone keep the fused attention
        maps = ours(**ours_batch, output_attentions=True, return_dict=False)
    assert (states.last_hidden_state[real] - b.last_hidden_state[real]).abs().max() <= 1e-5
    assert len(states.hidden_states) == len(b.hidden_states) == 7
    for a_state, b_state in zip(states.hidden_states, b.hidden_states):
        assert (a_state[real] - b_state[real]).abs().max() <= 1e-5
    last_hidden_state, pooler_output, attentions = maps
    assert (pooler_output - b.pooler_output).abs().max() <= 1e-5
    assert len(attentions) == len(b.attentions) == 6
    for a_map, b_map in zip(attentions, b.attentions):
        assert a_map.shape == b_map.shape
        assert (a_map.transpose(1, 2)[real] - b_map.transpose(1, 2)[real]).abs().max() <= 1e-5


def test_bare_encoder_checkpoint_loads_into_a_head_and_lists_new_weights(minilm_dir):
    model = BertForSequenceClassification.from_pretrained(minilm_dir, num_labels=3)
    assert model.load_report.initialised == ["classifier.weight", "classifier.bias"]
    encoder = BertModel.from_pretrained(minilm_dir)
    torch.testing.assert_close(model.bert.encoder.layer[5].output.dense.weight,
                               encoder.encoder.layer[5].output.dense.weight)


@pytest.mark.parametrize("ours_cls,auto_name", [
    (onebert.BertForPreTraining, "AutoModelForPreTraining"),
    (onebert.BertForMaskedLM, "AutoModelForMaskedLM"),
    (onebert.BertForSequenceClassification, "AutoModelForSequenceClassification"),
    (onebert.BertForTokenClassification, "AutoModelForTokenClassification"),
    (onebert.BertForQuestionAnswering, "AutoModelForQuestionAnswering"),
    (onebert.BertModel, "AutoModel"),
])
def test_saved_model_loads_in_transformers_and_back_with_equal_outputs(tmp_path, tiny_config, ours_cls, auto_name):
    torch.manual_seed(0)
    config = BertConfig(**{**tiny_config.__dict__, "id2label": {0: "neg", 1: "pos", 2: "mid"}})
    ours = ours_cls(config).eval()
    ours.save_pretrained(tmp_path / "ours")
    theirs, info = getattr(transformers, auto_name).from_pretrained(tmp_path / "ours", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    theirs.eval()
    batch = dict(input_ids=torch.randint(5, 99, (2, 7)), attention_mask=torch.ones(2, 7, dtype=torch.long))
    with torch.no_grad():
        a, b = ours(**batch), theirs(**batch)
    for field in ("logits", "start_logits", "seq_relationship_logits", "last_hidden_state"):
        if getattr(b, field, None) is not None:
            ours_value = getattr(a, field) if getattr(a, field) is not None else a.prediction_logits
            torch.testing.assert_close(ours_value, getattr(b, field), atol=1e-5, rtol=1e-5)
    # ... and back: transformers' save loads in onebert with the same weights.
    theirs.save_pretrained(tmp_path / "theirs")
    again = ours_cls.from_pretrained(tmp_path / "theirs")
    assert not again.load_report.initialised and not again.load_report.unused
    for name, tensor in ours.state_dict().items():
        torch.testing.assert_close(again.state_dict()[name], tensor, msg=name)
    if config.id2label and ours_cls is onebert.BertForSequenceClassification:
        assert again.config.id2label == {0: "neg", 1: "pos", 2: "mid"}


def test_old_checkpoints_with_gamma_beta_and_position_ids_load(tmp_path, tiny_config):
    model = BertForPreTraining(tiny_config)
    state = {}
    for key, value in model.state_dict().items():
        key = key.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta")
        state[key] = value.clone()
    state["bert.embeddings.position_ids"] = torch.arange(64)[None]
    state["cls.predictions.decoder.bias"] = state.pop("cls.predictions.bias")
    tiny_config.save(tmp_path)
    torch.save(state, tmp_path / "pytorch_model.bin")
    loaded = BertForPreTraining.from_pretrained(tmp_path)
    torch.testing.assert_close(loaded.cls.predictions.bias, model.cls.predictions.bias)
    torch.testing.assert_close(loaded.bert.embeddings.LayerNorm.weight, model.bert.embeddings.LayerNorm.weight)


def test_directory_without_config_is_named(tmp_path):
    with pytest.raises(OneBertError, match=f"{tmp_path}.*config.json"):
        BertModel.from_pretrained(tmp_path)


def test_config_with_typo_names_the_field(tmp_path, tiny_config):
    data = tiny_config.to_dict()
    data["num_hiden_layers"] = 3
    (tmp_path / "config.json").write_text(json.dumps(data))
    with pytest.raises(OneBertError, match=r"config.json: unknown field 'num_hiden_layers' \(did you mean 'num_hidden_layers'"):
        BertModel.from_pretrained(tmp_path)


def test_checkpoint_with_wrong_shape_names_the_weight(tmp_path, tiny_config, minilm_dir):
    shutil.copy(minilm_dir / "model.safetensors", tmp_path / "model.safetensors")
    config = BertConfig.load(minilm_dir)
    config.intermediate_size = 1000
    config.save(tmp_path)
    with pytest.raises(OneBertError, match=r"model.safetensors: weight 'encoder.layer.0.intermediate.dense.weight' "
                                           r"has shape \[1536, 384\], the model expects \[1000, 384\]"):
        BertModel.from_pretrained(tmp_path)


def test_checkpoint_with_more_layers_than_config_is_refused(tmp_path, minilm_dir):
    shutil.copy(minilm_dir / "model.safetensors", tmp_path / "model.safetensors")
    config = BertConfig.load(minilm_dir)
    config.num_hidden_layers = 4
    config.save(tmp_path)
    with pytest.raises(OneBertError, match="unexpected weight 'encoder.layer.4"):
        BertModel.from_pretrained(tmp_path)


def test_missing_encoder_weight_is_an_error_not_a_random_layer(tmp_path, tiny_config):
    from safetensors.torch import save_file

    model = BertModel(tiny_config)
    state = {k: v for k, v in model.state_dict().items() if "layer.1.output.dense.weight" not in k}
    save_file(state, str(tmp_path / "model.safetensors"))
    tiny_config.save(tmp_path)
    with pytest.raises(OneBertError, match="missing weight 'encoder.layer.1.output.dense.weight'"):
        BertModel.from_pretrained(tmp_path)


def test_truncated_safetensors_file_is_a_one_line_error(tmp_path, tiny_config):
    BertModel(tiny_config).save_pretrained(tmp_path)
    data = (tmp_path / "model.safetensors").read_bytes()
    (tmp_path / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(OneBertError, match="model.safetensors: cannot read weights"):
        BertModel.from_pretrained(tmp_path)


def test_pickle_checkpoints_are_never_unpickled_beyond_tensors(tmp_path, tiny_config):
    class Payload:
        def __reduce__(self):
            return (print, ("arbitrary code ran",))

    tiny_config.save(tmp_path)
    torch.save({"x": Payload()}, tmp_path / "pytorch_model.bin")
    with pytest.raises(OneBertError, match="pytorch_model.bin: cannot read weights"):
        BertModel.from_pretrained(tmp_path)


def test_save_writes_transformers_layout_without_tied_decoder(tmp_path, tiny_config):
    from safetensors import safe_open

    BertForPreTraining(tiny_config).save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors"]
    with safe_open(str(tmp_path / "model.safetensors"), "pt") as handle:
        keys = set(handle.keys())
    assert "cls.predictions.decoder.weight" not in keys and "cls.predictions.bias" in keys
    assert json.loads((tmp_path / "config.json").read_text())["architectures"] == ["BertForPreTraining"]
