"""The model against transformers: same weights in, same outputs and losses out, for every head."""

from __future__ import annotations

import pytest
import torch

import onebert
from onebert.model import (BertForMaskedLM, BertForPreTraining, BertForQuestionAnswering,
                           BertForSequenceClassification, BertForTokenClassification, BertModel, training_flops)
from onebert.model.config import BertConfig, SpeedConfig

transformers = pytest.importorskip("transformers")

TOL = dict(atol=1e-5, rtol=1e-5)


def _hf_config(config: BertConfig, **extra):
    return transformers.BertConfig(**{k: v for k, v in config.to_dict().items() if k not in ("id2label", "label2id", "onebert")},
                                   attn_implementation="sdpa", **extra)


def _batch(config: BertConfig, lengths=(16, 9, 3, 12), seed=0):
    generator = torch.Generator().manual_seed(seed)
    seq = max(lengths)
    input_ids = torch.randint(5, config.vocab_size, (len(lengths), seq), generator=generator)
    attention_mask = torch.zeros_like(input_ids)
    token_type_ids = torch.zeros_like(input_ids)
    for row, length in enumerate(lengths):
        attention_mask[row, :length] = 1
        token_type_ids[row, length // 2:length] = 1
        input_ids[row, length:] = 0
    return dict(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)


def _copy_into_hf(ours, hf_model):
    missing, unexpected = hf_model.load_state_dict(ours.state_dict(), strict=False)
    assert not [k for k in missing if "position_ids" not in k and k != "cls.predictions.decoder.bias"], missing
    assert not unexpected, unexpected
    hf_model.eval()
    return hf_model


@pytest.mark.parametrize("unpad", [True, False])
def test_bert_model_matches_transformers_on_padded_batch(tiny_config, unpad):
    ours = BertModel(tiny_config, speed=SpeedConfig(unpadding=unpad)).eval()
    hf = _copy_into_hf(ours, transformers.BertModel(_hf_config(tiny_config)))
    batch = _batch(tiny_config)
    with torch.no_grad():
        a, b = ours(**batch), hf(**batch)
    real = batch["attention_mask"].bool()
    torch.testing.assert_close(a.last_hidden_state[real], b.last_hidden_state[real], **TOL)
    torch.testing.assert_close(a.pooler_output, b.pooler_output, **TOL)


def test_pretraining_head_logits_and_loss_match_transformers(tiny_config):
    torch.manual_seed(0)
    ours = BertForPreTraining(tiny_config).eval()
    hf = _copy_into_hf(ours, transformers.BertForPreTraining(_hf_config(tiny_config)))
    batch = _batch(tiny_config)
    labels = torch.full_like(batch["input_ids"], -100)
    labels[0, 1], labels[0, 5], labels[1, 2], labels[3, 7] = 7, 8, 9, 10
    nsp = torch.tensor([0, 1, 1, 0])
    with torch.no_grad():
        full = ours(**batch)
        a = ours(**batch, labels=labels, next_sentence_label=nsp)
        b = hf(**batch, labels=labels, next_sentence_label=nsp)
    real = batch["attention_mask"].bool()
    torch.testing.assert_close(full.prediction_logits[real], b.prediction_logits[real], **TOL)
    torch.testing.assert_close(a.seq_relationship_logits, b.seq_relationship_logits, **TOL)
    torch.testing.assert_close(a.masked_logits, b.prediction_logits[labels != -100], **TOL)
    torch.testing.assert_close(a.loss, b.loss, **TOL)


def test_masked_lm_head_matches_transformers(tiny_config):
    ours = BertForMaskedLM(tiny_config).eval()
    hf = _copy_into_hf(ours, transformers.BertForMaskedLM(_hf_config(tiny_config)))
    batch = _batch(tiny_config)
    labels = torch.full_like(batch["input_ids"], -100)
    labels[:, 1] = 11
    with torch.no_grad():
        a, b = ours(**batch, labels=labels), hf(**batch, labels=labels)
        logits = ours(**batch).logits
    real = batch["attention_mask"].bool()
    torch.testing.assert_close(logits[real], b.logits[real], **TOL)
    torch.testing.assert_close(a.loss, b.loss, **TOL)


@pytest.mark.parametrize("num_labels,problem_type", [(3, None), (1, None), (1, "regression")])
def test_sequence_classification_matches_transformers(tiny_config, num_labels, problem_type):
    config = BertConfig(**{**tiny_config.__dict__, "num_labels": num_labels, "problem_type": problem_type})
    ours = BertForSequenceClassification(config).eval()
    hf = _copy_into_hf(ours, transformers.BertForSequenceClassification(
        _hf_config(config)))
    batch = _batch(config)
    labels = torch.tensor([0.5, 1.0, -0.2, 2.0]) if num_labels == 1 else torch.tensor([0, 2, 1, 2])
    with torch.no_grad():
        a, b = ours(**batch, labels=labels), hf(**batch, labels=labels)
    torch.testing.assert_close(a.logits, b.logits, **TOL)
    torch.testing.assert_close(a.loss, b.loss, **TOL)


def test_token_classification_matches_transformers(tiny_config):
    config = BertConfig(**{**tiny_config.__dict__, "num_labels": 5})
    ours = BertForTokenClassification(config).eval()
    hf = _copy_into_hf(ours, transformers.BertForTokenClassification(_hf_config(config)))
    batch = _batch(config)
    labels = torch.randint(0, 5, batch["input_ids"].shape).masked_fill(batch["attention_mask"] == 0, -100)
    with torch.no_grad():
        a, b = ours(**batch, labels=labels), hf(**batch, labels=labels)
    real = batch["attention_mask"].bool()
    torch.testing.assert_close(a.logits[real], b.logits[real], **TOL)
    torch.testing.assert_close(a.loss, b.loss, **TOL)


def test_question_answering_matches_transformers(tiny_config):
    ours = BertForQuestionAnswering(tiny_config).eval()
    hf = _copy_into_hf(ours, transformers.BertForQuestionAnswering(_hf_config(tiny_config)))
    padded = _batch(tiny_config)
    full = _batch(tiny_config, lengths=(10, 10, 10))  # no padding: transformers scores every position
    starts, ends = torch.tensor([1, 4, 0]), torch.tensor([3, 9, 0])
    with torch.no_grad():
        a, b = ours(**padded), hf(**padded)
        la, lb = ours(**full, start_positions=starts, end_positions=ends), hf(
            **full, start_positions=starts, end_positions=ends)
    real = padded["attention_mask"].bool()
    torch.testing.assert_close(a.start_logits[real], b.start_logits[real], **TOL)
    torch.testing.assert_close(a.end_logits[real], b.end_logits[real], **TOL)
    assert (a.start_logits[~real] < -1e30).all(), "pad positions must never win a span"
    torch.testing.assert_close(la.loss, lb.loss, **TOL)


def test_unpadded_and_padded_paths_give_same_loss_and_gradients(tiny_config):
    torch.manual_seed(1)
    model = BertForPreTraining(tiny_config)
    batch = _batch(tiny_config, lengths=(16, 5, 11, 2, 16))
    labels = torch.full_like(batch["input_ids"], -100)
    labels[:, 1] = 20
    labels[0, 9] = 21
    nsp = torch.tensor([0, 1, 0, 1, 1])
    grads = []
    for unpad in (True, False):
        model.zero_grad()
        model.set_speed(SpeedConfig(unpadding=unpad))
        out = model(**batch, labels=labels, next_sentence_label=nsp)
        out.loss.backward()
        grads.append((out.loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}))
    torch.testing.assert_close(grads[0][0], grads[1][0], atol=1e-6, rtol=1e-6)
    for name, grad in grads[0][1].items():
        torch.testing.assert_close(grad, grads[1][1][name], atol=1e-6, rtol=1e-5, msg=name)


def test_decoder_is_tied_to_word_embeddings(tiny_config):
    model = BertForPreTraining(tiny_config)
    assert model.cls.predictions.decoder.weight is model.bert.embeddings.word_embeddings.weight
    mlm = BertForMaskedLM(tiny_config)
    assert mlm.cls.predictions.decoder.weight is mlm.bert.embeddings.word_embeddings.weight


def test_initialisation_follows_bert(tiny_config):
    model = BertForPreTraining(BertConfig(**{**tiny_config.__dict__, "hidden_size": 256, "num_attention_heads": 4,
                                             "intermediate_size": 512}))
    weight = model.bert.encoder.layer[0].intermediate.dense.weight
    assert abs(weight.std().item() - 0.02) < 0.002
    assert model.bert.encoder.layer[0].intermediate.dense.bias.abs().max() == 0
    assert (model.bert.embeddings.LayerNorm.weight == 1).all()
    assert (model.bert.embeddings.word_embeddings.weight[0] == 0).all(), "the [PAD] row starts at zero"


def test_presets_have_the_documented_shapes():
    shapes = {name: (c.num_hidden_layers, c.hidden_size) for name, c in onebert.PRESETS.items()}
    assert shapes == {"tiny": (2, 128), "mini": (4, 256), "small": (4, 512), "medium": (8, 512),
                      "base": (12, 768), "large": (24, 1024)}
    base = BertModel(BertConfig.from_preset("base"))
    assert 109_000_000 < base.num_parameters() < 110_000_000  # bert-base-uncased: 109.5M


def test_training_flops_counts_real_tokens_only(tiny_config):
    assert training_flops(tiny_config, [10, 10], 3) < training_flops(tiny_config, [10, 20], 3)
    # 6 FLOPs per weight per token dominate; attention and heads add the rest.
    weights = tiny_config.num_hidden_layers * (4 * 32 * 32 + 2 * 32 * 37)
    assert training_flops(tiny_config, [10], 0) >= 6 * weights * 10


def test_sequence_longer_than_positions_is_refused(tiny_config):
    model = BertModel(tiny_config)
    with pytest.raises(ValueError, match="max_position_embeddings"):
        model(torch.ones(1, tiny_config.max_position_embeddings + 1, dtype=torch.long))


# ----------------------------------------------------------------------------- transformers' calling conventions

ALL_CLASSES = [BertModel, BertForPreTraining, BertForMaskedLM, BertForSequenceClassification,
               BertForTokenClassification, BertForQuestionAnswering]


@pytest.fixture(scope="module")
def minilm_tokenizer(minilm_dir):
    from onebert.tokenizer import Tokenizer

    return Tokenizer.from_pretrained(minilm_dir)


@pytest.mark.parametrize("model_cls", ALL_CLASSES, ids=lambda cls: cls.__name__)
def test_every_model_takes_exactly_what_the_tokenizer_returns_by_default(tiny_config, minilm_tokenizer, model_cls):
    config = BertConfig(**{**tiny_config.__dict__, "vocab_size": minilm_tokenizer.vocab_size})
    model = model_cls(config).eval()
    texts, pairs = ["the cat sat on the mat .", "hello"], ["a dog", "a much longer second text than the first"]
    with torch.no_grad():
        for batch in (minilm_tokenizer(texts), minilm_tokenizer(texts, return_tensors="pt", padding=True),
                      minilm_tokenizer(texts, pairs, return_tensors="pt", padding="max_length", truncation=True,
                                       max_length=16)):
            output = model(**batch)
            assert output.keys(), model_cls.__name__


@pytest.mark.parametrize("model_cls", ALL_CLASSES, ids=lambda cls: cls.__name__)
def test_an_unknown_model_keyword_is_a_type_error_naming_it_and_the_accepted_ones(tiny_config, model_cls):
    model = model_cls(tiny_config).eval()
    batch = _batch(tiny_config)
    with pytest.raises(TypeError, match=r"unexpected keyword argument 'offset_mapping' \(a tokenizer output.*"
                                        r"it accepts input_ids, attention_mask, token_type_ids"):
        model(**batch, offset_mapping=torch.zeros(4, 16, 2, dtype=torch.long))
    with pytest.raises(TypeError, match=rf"{model_cls.__name__}.forward\(\) got an unexpected keyword argument "
                                        r"'colour'; it accepts input_ids, .*return_dict"):
        model(**batch, colour="blue")


def _hf_tuple_order_matches(ours_tuple, hf_tuple):
    # transformers' BertModel also returns cross_attentions, an empty tuple for an encoder without cross-attention.
    hf_tuple = tuple(x for x in hf_tuple if not (isinstance(x, tuple) and not x))
    assert len(ours_tuple) == len(hf_tuple)
    for a, b in zip(ours_tuple, hf_tuple):
        if isinstance(b, tuple):
            assert [t.shape for t in a] == [t.shape for t in b]
        else:
            assert a.shape == b.shape


HEADS = [(BertModel, "BertModel", {}), (BertForPreTraining, "BertForPreTraining", {}),
         (BertForMaskedLM, "BertForMaskedLM", {}),
         (BertForSequenceClassification, "BertForSequenceClassification", {"labels": torch.tensor([0, 1, 1, 0])}),
         (BertForTokenClassification, "BertForTokenClassification", {}),
         (BertForQuestionAnswering, "BertForQuestionAnswering", {})]


@pytest.mark.parametrize("speed", [SpeedConfig(), SpeedConfig(packed_attention=True), SpeedConfig(unpadding=False)],
                         ids=["default", "packed", "padded"])
@pytest.mark.parametrize("ours_cls,hf_name,extra", HEADS, ids=[h[1] for h in HEADS])
def test_hidden_states_attentions_and_tuples_match_transformers_for_every_head(tiny_config, ours_cls, hf_name, extra,
                                                                             speed):
    torch.manual_seed(0)
    ours = ours_cls(tiny_config, speed=speed).eval()
    # transformers' SDPA attention returns no maps: its eager attention is the one to compare with.
    hf_config = transformers.BertConfig(**{k: v for k, v in tiny_config.to_dict().items()
                                           if k not in ("id2label", "label2id", "onebert")}, attn_implementation="eager")
    hf = _copy_into_hf(ours, getattr(transformers, hf_name)(hf_config))
    batch = _batch(tiny_config)
    real = batch["attention_mask"].bool()
    flags = dict(output_hidden_states=True, output_attentions=True)
    with torch.no_grad():
        a, b = ours(**batch, **extra, **flags), hf(**batch, **extra, **flags)
        as_tuple = ours(**batch, **extra, **flags, return_dict=False)
        hf_tuple = hf(**batch, **extra, **flags, return_dict=False)
    assert len(a.hidden_states) == len(b.hidden_states) == tiny_config.num_hidden_layers + 1
    assert len(a.attentions) == len(b.attentions) == tiny_config.num_hidden_layers
    for ours_state, hf_state in zip(a.hidden_states, b.hidden_states):
        assert ours_state.shape == hf_state.shape
        torch.testing.assert_close(ours_state[real], hf_state[real], **TOL)
    for ours_map, hf_map in zip(a.attentions, b.attentions):
        assert ours_map.shape == hf_map.shape == (4, tiny_config.num_attention_heads, 16, 16)
        # Rows of real queries; their pad-key columns are 0 in both.
        torch.testing.assert_close(ours_map.transpose(1, 2)[real], hf_map.transpose(1, 2)[real], **TOL)
    _hf_tuple_order_matches(as_tuple, hf_tuple)
    assert all(x is not None for x in as_tuple)
    torch.testing.assert_close(as_tuple[-2][-1], a.hidden_states[-1])


@pytest.mark.parametrize("ours_cls,labels", [(BertForPreTraining, True), (BertForMaskedLM, True),
                                             (BertForSequenceClassification, False)])
def test_asking_for_hidden_states_turns_the_last_layer_subset_off_without_changing_results(tiny_config, ours_cls,
                                                                                          labels):
    torch.manual_seed(0)
    model = ours_cls(tiny_config).eval()
    batch = _batch(tiny_config)
    extra = {}
    if ours_cls is BertForSequenceClassification:
        extra["labels"] = torch.tensor([0, 1, 1, 0])
    else:
        mlm = torch.full_like(batch["input_ids"], -100)
        mlm[:, 1] = 7
        extra["labels"] = mlm
    real = batch["attention_mask"].bool()
    with torch.no_grad():
        plain = model(**batch, **extra)
        traced = model(**batch, **extra, output_hidden_states=True)
        reference = model.set_speed(SpeedConfig(unpadding=False, last_layer_subset=False))(
            **batch, **extra, output_hidden_states=True)
    torch.testing.assert_close(traced.loss, plain.loss, **TOL)
    for fast, slow in zip(traced.hidden_states, reference.hidden_states):
        torch.testing.assert_close(fast[real], slow[real], **TOL)
    assert (traced.hidden_states[-1][~real] == 0).all(), "pad positions of the unpadded path are zeros"
