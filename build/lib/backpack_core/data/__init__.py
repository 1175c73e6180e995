"""Training data: text -> token shards (`prepare`), shards -> deterministic batches (`loader`).

    python -m backpack_core.data.prepare --input data/corpus/train.jsonl \
        --val-input data/corpus/val.jsonl --tokenizer gpt2 --out data/shards/corpus

A shard directory holds `train.bin` and `val.bin` (flat token ids, uint16 or uint32, EOS after
every document), the tokenizer (`tokenizer.json`) and `manifest.json` describing all of it.
"""

from .loader import DataError, ShardSet, TrainBatches, eval_windows, read_manifest

__all__ = ["DataError", "ShardSet", "TrainBatches", "eval_windows", "read_manifest"]
