"""Where a run's weights start: random (the default), word2vec embeddings, or a trained model.

- `word2vec_embeddings`: the tied embedding matrix E (vocab, d) from a skip-gram word2vec trained
  on the train split's own token ids (gensim, one worker, fixed seed and hash: deterministic),
  cached next to the shards. Sense vectors C(x) = SenseNet(E[x]) and the output projection both
  read E, so tokens used alike start near each other (`train.init_embeddings = "word2vec"`).
- `warm_start`: the weights of a trained model directory (`train.init_from`), with a fresh
  optimizer; the run's own warm-up (`train.warmup_steps`) then ramps the learning rate again.
"""

from __future__ import annotations

import hashlib
import json
import zlib
from pathlib import Path

import numpy as np
import torch

from backpack_core.common.files import atomic_write
from backpack_core.model.backpack import Backpack
from backpack_core.model.loading import CheckpointError

W2V_CACHE_VERSION = 1
W2V_SENTENCE = 1000  # tokens per gensim "sentence" (gensim caps sentences at 10,000 words)


def _crc_hash(text: str) -> int:
    """gensim's per-word seed hash; Python's hash() is salted per process, crc32 is not."""
    return zlib.crc32(text.encode("utf-8"))


def token_sentences(tokens: np.ndarray, eos_token_id: int, max_tokens: int) -> list[list[str]]:
    """The first max_tokens train tokens as gensim sentences: split at EOS (document ends), then
    into pieces of W2V_SENTENCE tokens; each token id written as a string."""
    ids = np.asarray(tokens[:max_tokens] if max_tokens else tokens, dtype=np.int64)
    ends = np.flatnonzero(ids == eos_token_id)
    sentences, start = [], 0
    for end in [*ends.tolist(), len(ids)]:
        doc = ids[start:end]
        for i in range(0, len(doc), W2V_SENTENCE):
            piece = doc[i:i + W2V_SENTENCE]
            if len(piece) > 1:
                sentences.append([str(t) for t in piece.tolist()])
        start = end + 1
    return sentences


def word2vec_embeddings(tokens: np.ndarray, vocab_size: int, dim: int, eos_token_id: int, *,
                        std: float, epochs: int, window: int, max_tokens: int, seed: int,
                        cache_dir: Path | None = None, identity: str = "") -> torch.Tensor:
    """(vocab_size, dim) float32: skip-gram vectors of the token ids, centred (the mean vector
    removed), each row scaled to norm std * sqrt(dim), the expected norm of a N(0, std) row.
    Ids the word2vec never saw keep N(0, std) rows (seeded). Cached in cache_dir under a name
    that hashes every argument and `identity` (say, the shards' tokenizer and size)."""
    key = json.dumps({"v": W2V_CACHE_VERSION, "vocab": vocab_size, "dim": dim, "eos": eos_token_id,
                      "std": std, "epochs": epochs, "window": window, "max_tokens": max_tokens,
                      "seed": seed, "tokens": int(len(tokens)), "identity": identity}, sort_keys=True)
    cache = (cache_dir / f"init-word2vec-{hashlib.sha256(key.encode()).hexdigest()[:16]}.npy"
             if cache_dir is not None else None)
    if cache is not None and cache.is_file():
        return torch.from_numpy(np.load(cache))
    from gensim.models import Word2Vec

    sentences = token_sentences(tokens, eos_token_id, max_tokens)
    w2v = Word2Vec(sentences=sentences, vector_size=dim, window=window, min_count=1, sg=1,
                   workers=1, epochs=epochs, seed=seed, hashfxn=_crc_hash)
    rng = np.random.default_rng(seed)
    out = rng.normal(0.0, std, size=(vocab_size, dim)).astype(np.float32)
    ids = np.array([int(k) for k in w2v.wv.index_to_key], dtype=np.int64)
    vecs = w2v.wv.vectors.astype(np.float64)
    vecs -= vecs.mean(0, keepdims=True)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True).clip(min=1e-12)
    out[ids] = (vecs * std * np.sqrt(dim)).astype(np.float32)
    if cache is not None:
        def write(tmp: Path) -> None:
            with tmp.open("wb") as fh:
                np.save(fh, out)
        atomic_write(cache, write)
    return torch.from_numpy(out)


def warm_start(model: Backpack, model_dir: str | Path, tokenizer_sha256: str | None) -> None:
    """Copy a trained model's weights (model_dir: a shipped model or a run directory) into
    `model`. The architecture and the tokenizer must be the same; CheckpointError says what
    differs otherwise."""
    from backpack_core.model.loading import load_backpack

    source, tok = load_backpack(model_dir, device="cpu")
    mine, theirs = model.config.to_dict(), source.config.to_dict()
    differ = [f"{k}: {theirs.get(k)!r} vs {mine[k]!r}" for k in mine
              if k not in ("architectures", "torch_dtype") and theirs.get(k) != mine[k]]
    if differ:
        raise CheckpointError(f"train.init_from={model_dir} has another shape than this run: "
                              + "; ".join(differ))
    from backpack_core.training.prepare import tokenizer_sha256 as sha_of

    if tokenizer_sha256 is not None and sha_of(tok) != tokenizer_sha256:
        raise CheckpointError(f"train.init_from={model_dir} was trained with another tokenizer "
                              "than data.dir's shards; warm-start only from a model of the same "
                              "tokenizer (or prepare the shards with its tokenizer.json)")
    model.load_state_dict(source.state_dict())
