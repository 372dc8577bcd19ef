"""Training: one loop (`trainer.py`) shared by pretraining and fine-tuning, and the pieces it is built from.

trainer.py      the Trainer: set-up, then the loop that fits on one screen
task.py         the TrainingTask interface a job implements (what the loop asks of it)
config.py       TrainConfig, the trainer's options
step.py         one optimizer step: micro-batches, loss normalisers, accumulation, clipping, bad steps
meter.py        the metrics of a logging interval: statistics, throughput, MFU
budget.py       when training ends: --max-steps, the --max-time budget, Ctrl-C / SIGTERM
optim.py        AdamW with BERT's parameter groups; warm-up + decay schedule that a time budget can re-fit
distributed.py  torchrun / DDP set-up and the few collectives the loop needs
checkpoint.py   atomic checkpoints with a checksummed manifest, exact resume, keep-last-K
metrics_log.py  JSON-lines metrics file and the console progress bar
prefetch.py     batches built ahead in a background thread, resume-exact
pretraining.py  the pretraining task (MLM + NSP) that plugs into the loop, and `pretrain()` that builds and runs it

Device, precision, autocast and peak FLOP/s live in onebert/runtime.py (shared with inference).
Nothing here is imported by `import onebert`; these modules import torch.
"""
