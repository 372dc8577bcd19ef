"""Inference: a fine-tuned model from inputs to outputs, one code path for evaluate, predict, the
pipeline, embed and serve."""
