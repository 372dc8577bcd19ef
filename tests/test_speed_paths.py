"""The speed paths compute what the plain padded model computes, they are on by default through
the ordinary forward call, and torch.compile runs them without retracing for every batch."""

from __future__ import annotations

import dataclasses
import itertools
import os

import pytest
import torch
import torch.nn.functional as F

from onebert.model import ops
from onebert.model.bert import BertForMaskedLM, BertForPreTraining, BertForSequenceClassification, BertModel
from onebert.model.config import BertConfig, SpeedConfig
from onebert.model.flops import inference_flops, training_flops
from onebert.model.ops import BertDropout, packed_attention, padding_info

LOSS_TOL = dict(atol=1e-6, rtol=1e-6)
GRAD_TOL = dict(atol=1e-6, rtol=1e-5)


def _batch(config: BertConfig, lengths, seed=0):
    generator = torch.Generator().manual_seed(seed)
    seq = max(lengths)
    input_ids = torch.randint(5, config.vocab_size, (len(lengths), seq), generator=generator)
    attention_mask = torch.zeros_like(input_ids)
    token_type_ids = torch.zeros_like(input_ids)
    labels = torch.full_like(input_ids, -100)
    for row, length in enumerate(lengths):
        attention_mask[row, :length] = 1
        token_type_ids[row, length // 2:length] = 1
        input_ids[row, length:] = 0
        labels[row, 1:length:3] = input_ids[row, 1:length:3]  # every third real token is predicted
    return dict(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids), labels


def _configure(model, unpadding: bool, packed: bool, subset: bool, sparse: bool | None = None):
    sparse = unpadding if sparse is None else sparse
    return model.set_speed(SpeedConfig(unpadding=unpadding, packed_attention=packed, last_layer_subset=subset,
                                       sparse_word_gradient=sparse))


def _loss_and_grads(model, loss_fn):
    model.zero_grad(set_to_none=True)
    loss = loss_fn(model)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _assert_same(reference, other, what):
    torch.testing.assert_close(other[0], reference[0], **LOSS_TOL, msg=f"loss differs: {what}")
    assert other[1].keys() == reference[1].keys(), what
    for name, grad in reference[1].items():
        torch.testing.assert_close(other[1][name], grad, **GRAD_TOL, msg=f"{name}: {what}")


# ----------------------------------------------------------------------------- the attention helper


def _padded_sdpa(qkv, lengths, heads):
    mask = torch.zeros(len(lengths), max(lengths), dtype=torch.bool)
    for row, length in enumerate(lengths):
        mask[row, :length] = True
    info = padding_info(mask)
    hidden = qkv.shape[-1] // 3
    padded = qkv.new_zeros(len(lengths) * max(lengths), 3 * hidden).index_copy(0, info.indices, qkv)
    q, k, v = padded.view(len(lengths), max(lengths), 3, heads, hidden // heads).permute(2, 0, 3, 1, 4)
    context = F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None, None, :])
    return context.transpose(1, 2).reshape(-1, hidden).index_select(0, info.indices)


@pytest.mark.parametrize("lengths", [(7, 3, 3, 1, 9), (5, 5, 5), (4,), (2, 6, 6, 6, 1)])
def test_packed_attention_equals_masked_sdpa_values_and_gradients(lengths):
    torch.manual_seed(0)
    qkv = torch.randn(sum(lengths), 3 * 16, requires_grad=True)
    upstream = torch.randn(sum(lengths), 16)
    ours = packed_attention(qkv, list(lengths), num_heads=4)
    (grad_ours,) = torch.autograd.grad(ours, qkv, upstream)
    reference = _padded_sdpa(qkv, list(lengths), heads=4)
    (grad_reference,) = torch.autograd.grad(reference, qkv, upstream)
    torch.testing.assert_close(ours, reference, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(grad_ours, grad_reference, atol=1e-6, rtol=1e-5)


def test_packed_attention_keeps_sequences_apart():
    torch.manual_seed(0)
    first, second = torch.randn(4, 24), torch.randn(6, 24)
    together = packed_attention(torch.cat([first, second]), [4, 6], num_heads=2)
    torch.testing.assert_close(together[:4], packed_attention(first, [4], num_heads=2))
    torch.testing.assert_close(together[4:], packed_attention(second, [6], num_heads=2))


# ----------------------------------------------------------------------------- whole models


# unpadding, packed attention, last-layer subset, sparse word-lookup gradient
SWITCHES = list(itertools.product([True, False], repeat=4))


@pytest.mark.parametrize("lengths", [(16, 5, 11, 2, 16), (9, 9, 9)], ids=["padded", "no-padding"])
def test_pretraining_speed_paths_give_the_plain_loss_and_gradients(tiny_config, lengths):
    torch.manual_seed(1)
    model = BertForPreTraining(tiny_config)
    inputs, labels = _batch(tiny_config, lengths)
    nsp = torch.arange(len(lengths)) % 2

    def loss_fn(m):
        return m(**inputs, labels=labels, next_sentence_label=nsp).loss

    plain = _loss_and_grads(_configure(model, False, False, False, False), loss_fn)
    for switches in SWITCHES[:-1]:
        _assert_same(plain, _loss_and_grads(_configure(model, *switches), loss_fn), f"switches {switches}")


def test_word_embedding_gradient_is_dense_even_when_the_decoder_is_not_in_the_loss(tiny_config):
    model = BertForPreTraining(tiny_config)
    assert model.bert.embeddings.sparse_word_gradient, "on by default for a tied decoder"
    inputs, labels = _batch(tiny_config, (8, 3))
    model(**inputs, labels=labels).mlm_loss.backward()
    assert not model.bert.embeddings.word_embeddings.weight.grad.is_sparse
    model.zero_grad(set_to_none=True)
    model(**inputs, next_sentence_label=torch.tensor([0, 1])).nsp_loss.backward()  # decoder unused
    grad = model.bert.embeddings.word_embeddings.weight.grad
    assert not grad.is_sparse and grad[inputs["input_ids"][0, 0]].abs().sum() > 0
    torch.optim.AdamW(model.parameters(), fused=True).step()  # fused AdamW refuses sparse gradients


def test_models_without_a_decoder_keep_a_dense_word_lookup(tiny_config):
    model = BertForSequenceClassification(tiny_config, speed=SpeedConfig(sparse_word_gradient=True))
    assert not model.bert.embeddings.sparse_word_gradient
    model.set_speed(SpeedConfig(sparse_word_gradient=True))
    assert not model.bert.embeddings.sparse_word_gradient


def test_masked_lm_speed_paths_give_the_plain_loss_and_gradients(tiny_config):
    torch.manual_seed(2)
    model = BertForMaskedLM(tiny_config)
    inputs, labels = _batch(tiny_config, (12, 3, 7))

    def loss_fn(m):
        return m(**inputs, labels=labels).loss

    plain = _loss_and_grads(_configure(model, False, False, False), loss_fn)
    _assert_same(plain, _loss_and_grads(_configure(model, True, True, True), loss_fn), "all speed paths")


def test_sequence_classification_speed_paths_give_the_plain_logits_loss_and_gradients(tiny_config):
    torch.manual_seed(3)
    model = BertForSequenceClassification(dataclasses.replace(tiny_config, num_labels=3))
    inputs, _ = _batch(tiny_config, (12, 3, 7, 1))
    labels = torch.tensor([0, 2, 1, 2])
    with torch.no_grad():
        plain_logits = _configure(model, False, False, False)(**inputs).logits
        fast_logits = _configure(model, True, True, True)(**inputs).logits
    torch.testing.assert_close(fast_logits, plain_logits, atol=1e-6, rtol=1e-5)

    def loss_fn(m):
        return m(**inputs, labels=labels).loss

    plain = _loss_and_grads(_configure(model, False, False, False), loss_fn)
    _assert_same(plain, _loss_and_grads(_configure(model, True, True, True), loss_fn), "all speed paths")


def test_left_padding_falls_back_to_the_padded_path_with_the_same_outputs(tiny_config):
    model = BertModel(tiny_config).eval()
    inputs, _ = _batch(tiny_config, (6, 4))
    flipped = {k: v.flip(1) for k, v in inputs.items()}  # pads first: [CLS] is not at position 0
    with torch.no_grad():
        fast = model(**flipped)
        plain = model.set_speed(SpeedConfig(unpadding=False))(**flipped)
    real = flipped["attention_mask"].bool()
    torch.testing.assert_close(fast.last_hidden_state[real], plain.last_hidden_state[real])


def test_speedups_are_on_by_default_through_the_ordinary_forward_call(tiny_config, monkeypatch):
    """A padded batch with input_ids, token_type_ids, attention_mask and labels, as transformers
    takes it: attention runs on packed tokens, the first layer sees only real tokens, the last
    layer's feed-forward only the labelled positions plus [CLS], the decoder only the labelled ones."""
    torch.manual_seed(4)
    model = BertForPreTraining(tiny_config)
    inputs, labels = _batch(tiny_config, (16, 5, 11, 2))
    attention_calls = []
    original = ops.packed_attention

    def counting_attention(qkv, lengths, num_heads, dropout=None):
        attention_calls.append(list(lengths))
        return original(qkv, lengths, num_heads, dropout)

    monkeypatch.setattr(ops, "packed_attention", counting_attention)
    rows_seen = {}

    def record(name):
        return lambda module, args: rows_seen.__setitem__(name, args[0].shape[0])

    model.bert.encoder.layer[0].intermediate.register_forward_pre_hook(record("first"))
    model.bert.encoder.layer[-1].intermediate.register_forward_pre_hook(record("last"))
    model.cls.predictions.register_forward_pre_hook(record("decoder"))
    out = model(**inputs, labels=labels, next_sentence_label=torch.tensor([0, 1, 0, 1]))
    out.loss.backward()

    real_tokens = int(inputs["attention_mask"].sum())
    labelled = int((labels != -100).sum())
    labelled_cls = int((labels[:, 0] != -100).sum())
    assert attention_calls == [[16, 5, 11, 2]] * tiny_config.num_hidden_layers
    assert rows_seen["first"] == real_tokens < inputs["input_ids"].numel()
    assert rows_seen["last"] == labelled + 4 - labelled_cls
    assert rows_seen["decoder"] == labelled == out.masked_logits.shape[0]


@pytest.mark.parametrize("speed, kernel", [
    (SpeedConfig(), "auto"), (SpeedConfig(packed_attention=True), "packed"),
    (SpeedConfig(packed_attention=False), "sdpa"), (SpeedConfig(unpadding=False, packed_attention=True), "sdpa"),
])
def test_attention_kernel_and_dropout_are_picked_from_the_speed_config_at_construction(tiny_config, speed, kernel):
    model = BertForPreTraining(tiny_config, speed=dataclasses.replace(speed, fast_dropout=False))
    attentions = [layer.attention.self for layer in model.bert.encoder.layer]
    assert all(a.attend is ops.ATTENTION_KERNELS[kernel] for a in attentions)
    assert all(m.drop is ops.torch_dropout for m in model.modules() if isinstance(m, BertDropout))
    model.set_speed(SpeedConfig(unpadding=False))
    assert all(a.attend is ops.sdpa_attention for a in attentions)
    assert all(m.drop is ops.fast_dropout for m in model.modules() if isinstance(m, BertDropout))
    assert model.speed == model.bert.speed == SpeedConfig(unpadding=False)


def test_plain_path_is_what_switching_off_gives(tiny_config, monkeypatch):
    model = _configure(BertForPreTraining(tiny_config), False, True, True)
    monkeypatch.setattr(ops, "packed_attention", lambda *a, **k: pytest.fail("packed path used"))
    inputs, labels = _batch(tiny_config, (8, 3))
    assert model(**inputs, labels=labels).masked_logits.shape[0] == int((labels != -100).sum())


# ----------------------------------------------------------------------------- torch.compile


def _compiled_step_matches_eager(model, inputs_list, loss_of, backend):
    eager = [_loss_and_grads(model, lambda m, b=b: loss_of(m, b)) for b in inputs_list]
    compiled = torch.compile(model, backend=backend)
    results = []
    for i, batch in enumerate(inputs_list):
        if i == 1:
            # Later batches have other lengths (other packed sizes, same padded width): the
            # packed sizes are marked dynamic from the start, so nothing is retraced.
            torch.compiler.set_stance("fail_on_recompile")
        try:
            model.zero_grad(set_to_none=True)
            loss = loss_of(compiled, batch)
            loss.backward()
        finally:
            torch.compiler.set_stance("default")
        results.append((loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()
                                        if p.grad is not None}))
    for i, (reference, got) in enumerate(zip(eager, results)):
        torch.testing.assert_close(got[0], reference[0], atol=1e-5, rtol=1e-5, msg=f"batch {i} loss")
        for name, grad in reference[1].items():
            torch.testing.assert_close(got[1][name], grad, atol=1e-5, rtol=1e-4, msg=f"batch {i} {name}")


SLOW = pytest.mark.skipif(os.environ.get("ONEBERT_SLOW_TESTS") != "1",
                          reason="inductor compiles a training graph for ~1 min on 2 cores; ONEBERT_SLOW_TESTS=1 runs it")


@pytest.mark.parametrize("backend", ["aot_eager", pytest.param("inductor", marks=SLOW)])
def test_compiled_unpadded_training_step_matches_eager_without_recompiling(tiny_config, backend):
    """aot_eager checks what our code decides (graph breaks, dynamic packed sizes, autograd);
    inductor adds the generated kernels."""
    torch._dynamo.reset()
    torch.manual_seed(5)
    model = BertForPreTraining(tiny_config)
    batches = [_batch(tiny_config, lengths, seed=i) for i, lengths in enumerate([(16, 5, 11, 2), (16, 9, 3, 12),
                                                                                  (16, 1, 16, 7)])]
    nsp = torch.tensor([0, 1, 1, 0])

    def loss_of(m, batch):
        inputs, labels = batch
        return m(**inputs, labels=labels, next_sentence_label=nsp).loss

    _compiled_step_matches_eager(model, batches, loss_of, backend)


def test_compiled_unpadded_inference_matches_eager_without_recompiling(tiny_config):
    torch._dynamo.reset()
    torch.manual_seed(6)
    model = BertForSequenceClassification(tiny_config).eval()
    compiled = torch.compile(model)
    for i, lengths in enumerate([(16, 5, 11, 2), (16, 9, 3, 12), (16, 2, 2, 2)]):
        inputs, _ = _batch(tiny_config, lengths, seed=i)
        with torch.inference_mode():
            expected = model(**inputs).logits
            if i == 1:
                torch.compiler.set_stance("fail_on_recompile")
            try:
                got = compiled(**inputs).logits
            finally:
                torch.compiler.set_stance("default")
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


# ----------------------------------------------------------------------------- dropout


def test_fast_dropout_drops_at_the_configured_rate_and_keeps_the_expectation():
    torch.manual_seed(7)
    layer = BertDropout(0.1).train()
    x = torch.ones(1000, 1000)
    y = layer(x)
    kept = y != 0
    assert abs(kept.float().mean().item() - 0.9) < 0.002  # 1M draws: the standard error is 0.0003
    assert abs(y.mean().item() - 1.0) < 0.003
    torch.testing.assert_close(y[kept], torch.full_like(y[kept], 65536 / (65536 - 6554)))


def test_fast_dropout_backward_uses_the_forward_mask():
    torch.manual_seed(8)
    layer = BertDropout(0.3).train()
    x = torch.randn(64, 32, requires_grad=True)
    y = layer(x)
    (grad,) = torch.autograd.grad(y, x, torch.ones_like(y))
    torch.testing.assert_close(grad * x.detach(), y.detach())


def test_fast_dropout_is_reproducible_under_manual_seed_and_off_in_eval():
    layer = BertDropout(0.5).train()
    x = torch.randn(100)
    torch.manual_seed(9)
    first = layer(x)
    torch.manual_seed(9)
    torch.testing.assert_close(layer(x), first)
    assert layer.eval()(x) is x


def test_switching_fast_dropout_off_gives_torch_dropout(tiny_config, monkeypatch):
    model = BertForPreTraining(dataclasses.replace(tiny_config, hidden_dropout_prob=0.1,
                                                   attention_probs_dropout_prob=0.1),
                               speed=SpeedConfig(fast_dropout=False))
    monkeypatch.setattr(ops, "dropout_keep_mask", lambda *a: pytest.fail("fast dropout used"))
    inputs, labels = _batch(tiny_config, (8, 3))
    model(**inputs, labels=labels).masked_logits.sum().backward()


def test_training_flops_counts_the_last_layer_only_where_a_head_reads_it(tiny_config):
    lengths, masked = [10, 6], 4
    full = training_flops(tiny_config, lengths, masked)
    assert training_flops(tiny_config, lengths, masked, last_layer_tokens=16) == pytest.approx(full)
    h, i = tiny_config.hidden_size, tiny_config.intermediate_size
    subset = training_flops(tiny_config, lengths, masked, last_layer_tokens=6)
    attention_rows = 3 * 4 * h * (10**2 + 6**2) * 10 / 16
    assert full - subset == pytest.approx(6 * (2 * h * h + 2 * h * i) * 10 + attention_rows)
    assert inference_flops(tiny_config, lengths, last_layer_tokens=2) < inference_flops(tiny_config, lengths)
