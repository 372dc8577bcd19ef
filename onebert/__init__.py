"""onebert: a fast, from-scratch BERT toolkit.

The top-level names load lazily, so `import onebert` (and `onebert --help`) does not pay for torch.
"""

from __future__ import annotations

from onebert.lazy import lazy_exports

__version__ = "0.1.0"

_EXPORTS = {
    "BertConfig": "onebert.model.config",
    "PRESETS": "onebert.model.config",
    "SpeedConfig": "onebert.model.config",
    "OneBertError": "onebert.errors",
    "BertModel": "onebert.model.bert",
    "BertForPreTraining": "onebert.model.bert",
    "BertForMaskedLM": "onebert.model.bert",
    "BertForSequenceClassification": "onebert.model.bert",
    "BertForTokenClassification": "onebert.model.bert",
    "BertForQuestionAnswering": "onebert.model.bert",
    "ModelOutput": "onebert.model.bert",
    "Tokenizer": "onebert.tokenizer",
    "pipeline": "onebert.infer.pipeline",
    "Embedder": "onebert.infer.embedder",
}

__all__ = sorted(_EXPORTS) + ["__version__"]

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
