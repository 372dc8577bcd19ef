"""Inference: a fine-tuned model from inputs to outputs, one code path for evaluate, predict, the
pipeline, embed and serve.

predictor.py  Predictor (load a fine-tuned directory) and the length-sorted batched `forward` that every
              inference path runs (validation during fine-tuning too)
embedder.py   Embedder: sentence vectors, sentence-transformers' `encode` API, on predictor's batching
pipeline.py   `onebert.pipeline`: a model as a Python function, called as transformers' `pipeline()`
conventions.py  transformers' pipeline output shapes built from onebert's task predictions
fill_mask.py  [MASK] filling with a pretraining output (the fill-mask pipeline, `onebert demo`)
export.py     ONNX / TorchScript / HuggingFace export and its checks

This package may import onebert.model, onebert.tasks, onebert.runtime; never onebert.train (training
imports inference for validation, not the other way round).
"""
