"""Fill in [MASK] with a pretrained (masked-LM) model: `onebert.pipeline("fill-mask", model=DIR)` and `onebert demo`.

The answers have transformers' FillMaskPipeline shape: for each [MASK] the top_k tokens as
{"score", "token", "token_str", "sequence"}; a text with one mask gives that list, with several a list per
mask (whose sequences keep the special tokens, as there).
"""

from __future__ import annotations

import os
from typing import Any, Sequence

from onebert.errors import OneBertError


def load_masked_lm(directory: str | os.PathLike, device: str = "auto"):
    """(model, tokenizer, device) of a BertForPreTraining / BertForMaskedLM directory (e.g. pretrain's final/)."""
    from onebert import runtime
    from onebert.infer.predictor import load_tokenizer, resolve_model_dir
    import json

    from onebert.model import BertForMaskedLM, BertForPreTraining
    from onebert.model.config import BertConfig

    directory = resolve_model_dir(directory)
    config = BertConfig.load(directory)
    tokenizer = load_tokenizer(directory, config)
    # The class the directory was saved from, so that none of its weights is reported unused.
    architectures = json.loads((directory / "config.json").read_text(encoding="utf-8")).get("architectures") or []
    model_class = BertForMaskedLM if "BertForMaskedLM" in architectures else BertForPreTraining
    model = model_class.from_pretrained(directory)
    missing = [name for name in model.load_report.initialised + model.load_report.reinitialised
               if name.startswith("cls.")]
    if missing:
        raise OneBertError(f"{directory}: no masked-LM head ({', '.join(missing[:3])} missing); fill-mask needs a "
                           "pretraining output (BertForPreTraining or BertForMaskedLM)")
    torch_device = runtime.resolve_device(device)
    return model.to(torch_device).eval(), tokenizer, torch_device


def fill_mask(model, tokenizer, texts: Sequence[str], top_k: int = 5, batch_size: int = 32,
              device: Any = "cpu") -> list[Any]:
    """One answer per text (see the module docstring); a text without [MASK] is a one-line error."""
    import torch

    results: list[Any] = []
    for start in range(0, len(texts), batch_size):
        chunk = list(texts[start:start + batch_size])
        batch = tokenizer(chunk, return_tensors="pt", padding=True)
        inputs = {k: batch[k].to(device) for k in ("input_ids", "token_type_ids", "attention_mask")}
        with torch.inference_mode():
            logits = model(**inputs).prediction_logits.float()
        for row, text in enumerate(chunk):
            ids = inputs["input_ids"][row]
            positions = (ids == tokenizer.mask_token_id).nonzero().squeeze(-1).tolist()
            if not positions:
                raise OneBertError(f"input {start + row}: no [MASK] in {text[:60]!r}")
            kept = [int(i) for i, m in zip(ids.tolist(), inputs["attention_mask"][row].tolist()) if m]
            single = len(positions) == 1
            answers = []
            for position in positions:
                top = logits[row, position].softmax(-1).topk(min(top_k, logits.shape[-1]))
                row_answers = []
                for score, token in zip(top.values.tolist(), top.indices.tolist()):
                    filled = list(kept)
                    filled[position] = token
                    row_answers.append({"score": score, "token": token,
                                        "token_str": tokenizer.decode([token], skip_special_tokens=False),
                                        "sequence": tokenizer.decode(filled, skip_special_tokens=single)})
                answers.append(row_answers)
            results.append(answers[0] if single else answers)
    return results


class FillMaskPipeline:
    """`onebert.pipeline("fill-mask", model=DIR)`: call on a text or a list of texts with [MASK] in them."""

    task = "fill-mask"

    def __init__(self, directory: str | os.PathLike, device: str = "auto", batch_size: int = 32, top_k: int = 5):
        from onebert.infer.conventions import check_top_k

        check_top_k(top_k, allow_none=False)
        self.model, self.tokenizer, self.device = load_masked_lm(directory, device)
        self.batch_size, self.top_k = batch_size, top_k

    def __call__(self, inputs: str | Sequence[str], top_k: int | None = None, batch_size: int | None = None) -> Any:
        from onebert.infer.conventions import check_top_k

        top_k = self.top_k if top_k is None else top_k
        check_top_k(top_k, allow_none=False)
        single = isinstance(inputs, str)
        texts = [inputs] if single else list(inputs)
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                from onebert.tasks.base import kind_of

                raise OneBertError(f"input {i}: expected a text with [MASK], got {kind_of(text)}")
        out = fill_mask(self.model, self.tokenizer, texts, top_k=top_k, batch_size=batch_size or self.batch_size,
                        device=self.device)
        return out[0] if single else out


__all__ = ["FillMaskPipeline", "fill_mask", "load_masked_lm"]
