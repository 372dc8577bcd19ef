"""The BERT model: architecture (`bert`), speed helpers (`ops`), configs (`config`), HuggingFace-layout
weights (`weights`) and FLOP counts (`flops`).

The public names are re-exported here and load lazily, as in `onebert/__init__.py`: reading a
preset (`onebert.model.config`) must not pay for torch, so this package imports nothing up front.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from onebert.lazy import lazy_exports

_EXPORTS = {
    "BertModel": "onebert.model.bert",
    "BertForPreTraining": "onebert.model.bert",
    "BertForMaskedLM": "onebert.model.bert",
    "BertForSequenceClassification": "onebert.model.bert",
    "BertForTokenClassification": "onebert.model.bert",
    "BertForQuestionAnswering": "onebert.model.bert",
    "BertPreTrainedModel": "onebert.model.bert",
    "ModelOutput": "onebert.model.bert",
    "MODEL_CLASSES": "onebert.model.bert",
    "BertDropout": "onebert.model.ops",
    "BertConfig": "onebert.model.config",
    "PRESETS": "onebert.model.config",
    "SpeedConfig": "onebert.model.config",
    "IGNORE_INDEX": "onebert.model.config",
    "training_flops": "onebert.model.flops",
    "inference_flops": "onebert.model.flops",
}

__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:
    from onebert.model.bert import (MODEL_CLASSES, BertForMaskedLM, BertForPreTraining, BertForQuestionAnswering,
                                    BertForSequenceClassification, BertForTokenClassification, BertModel,
                                    BertPreTrainedModel, ModelOutput)
    from onebert.model.config import IGNORE_INDEX, PRESETS, BertConfig, SpeedConfig
    from onebert.model.flops import inference_flops, training_flops
    from onebert.model.ops import BertDropout


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
