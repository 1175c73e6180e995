"""Training Backpacks and their Transformer twins. Imports `common` and `model` only.

The command is `python -m backpack_core.train` (or torchrun ... -m backpack_core.train).

prepare      text -> token shards (`python -m backpack_core.training.prepare`)
loader       shards -> deterministic batches and validation windows
config       the run's configuration (TOML file + overrides), the model it implies, the batch plan
optim        AdamW with no weight decay on biases and norm weights
schedule     learning rate: warmup, then linear / cosine decay
checkpoint   our model format + train_state.pt, written atomically; resume
metrics      metrics.jsonl and the console line; tokens/s, MFU, memory
distributed  torchrun process groups, DDP / FSDP wrapping, the shared stop flag
trainer      the loop that joins them
"""
