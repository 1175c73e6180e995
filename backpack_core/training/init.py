"""Where a run's weights start: random (the default), word2vec embeddings, or a trained model.

- `word2vec_embeddings`: the tied embedding matrix E (vocab, d) from a skip-gram word2vec trained
  on the train split's own token ids (gensim, one worker, fixed seed and hash: deterministic),
  cached next to the shards. Sense vectors C(x) = SenseNet(E[x]) and the output projection both
  read E, so tokens used alike start near each other (`train.init_embeddings = "word2vec"`).
- `fit_senses_to_embeddings`: the sense network fitted, before step 0, so that every sense of
  every token starts at the token's own embedding: SenseNet(E[x])_l ~ E[x] for all l
  (`train.init_senses = "embeddings"`). With word2vec embeddings the senses then start with
  word2vec's geometry instead of a random map of it.
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
import torch.nn.functional as F
from einops import rearrange

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


def word2vec_cache_name(tokens: np.ndarray, vocab_size: int, dim: int, eos_token_id: int, *,
                        std: float, epochs: int, window: int, max_tokens: int, seed: int,
                        identity: str = "") -> str:
    """The file name under which `word2vec_embeddings` caches its result for these arguments."""
    key = json.dumps({"v": W2V_CACHE_VERSION, "vocab": vocab_size, "dim": dim, "eos": eos_token_id,
                      "std": std, "epochs": epochs, "window": window, "max_tokens": max_tokens,
                      "seed": seed, "tokens": int(len(tokens)), "identity": identity}, sort_keys=True)
    return f"init-word2vec-{hashlib.sha256(key.encode()).hexdigest()[:16]}.npy"


def word2vec_embeddings(tokens: np.ndarray, vocab_size: int, dim: int, eos_token_id: int, *,
                        std: float, epochs: int, window: int, max_tokens: int, seed: int,
                        cache_dir: Path | None = None, identity: str = "") -> torch.Tensor:
    """(vocab_size, dim) float32: skip-gram vectors of the token ids, centred (the mean vector
    removed), each row scaled to norm std * sqrt(dim), the expected norm of a N(0, std) row.
    Ids the word2vec never saw keep N(0, std) rows (seeded). Cached in cache_dir under a name
    that hashes every argument and `identity` (say, the shards' tokenizer and size)."""
    cache = (cache_dir / word2vec_cache_name(tokens, vocab_size, dim, eos_token_id, std=std,
                                             epochs=epochs, window=window, max_tokens=max_tokens,
                                             seed=seed, identity=identity)
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


def fit_senses_to_embeddings(model: Backpack, *, steps: int, lr: float, seed: int,
                             batch_rows: int = 1024, progress: bool = False) -> dict[str, float]:
    """Fit the sense network so that each of a token's k senses starts at its embedding.

    Regression with E held fixed: rows x of E (batch_rows at a time, a seeded draw), senses
    SenseNet(E[x]) (b, k, d) against E[x] repeated k times, mean squared error, Adam at `lr`
    for `steps` steps; dropout off during the fit. Only the sense network's weights change (the
    optimizer used here is thrown away). Returns the fit: the mean cosine of senses to their
    token's embedding, and the mean norm ratio |sense| / |E[x]|, over the whole vocabulary,
    before and after.
    """
    from backpack_core.common.progress import progress_bar

    net, table = model.sense_network, model.wte.weight.detach()  # table: E (vocab, d)

    def agreement() -> tuple[float, float]:
        with torch.no_grad():
            cos, ratio = [], []
            for rows in table.split(4096):
                senses = net(rows)  # (b, k, d)
                target = rearrange(rows, "b d -> b 1 d")
                cos.append(F.cosine_similarity(senses, target, dim=-1).flatten())
                ratio.append((senses.norm(dim=-1) / target.norm(dim=-1).clamp_min(1e-12)).flatten())
            return torch.cat(cos).mean().item(), torch.cat(ratio).mean().item()

    was_training = net.training
    net.eval()  # no dropout: the fit is of the function the forward pass computes
    cos_before, ratio_before = agreement()
    optimizer = torch.optim.Adam(net.parameters(), lr=lr)
    generator = torch.Generator(device="cpu").manual_seed(seed)
    vocab = table.shape[0]
    for _ in progress_bar(range(steps), desc="senses -> embeddings", enabled=progress):
        rows = table[torch.randint(vocab, (min(batch_rows, vocab),), generator=generator).to(table.device)]
        loss = F.mse_loss(net(rows), rearrange(rows, "b d -> b 1 d").expand(-1, net.num_senses, -1))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    net.train(was_training)
    cos_after, ratio_after = agreement()
    return {"cosine_before": cos_before, "cosine_after": cos_after,
            "norm_ratio_before": ratio_before, "norm_ratio_after": ratio_after}


def warm_start(model: Backpack, model_dir: str | Path, tokenizer_sha256: str | None) -> None:
    """Copy a trained model's weights (model_dir: a shipped model or a run directory) into
    `model`. The architecture and the tokenizer must be the same; CheckpointError says what
    differs otherwise."""
    from backpack_core.model.loading import load_backpack

    source, tok = load_backpack(model_dir, device="cpu")
    mine, theirs = model.config.to_dict(), source.config.to_dict()
    differ = [f"{k}: {theirs.get(k)!r} vs {mine[k]!r}" for k in mine
              if k not in ("architectures", "torch_dtype", "sense_pdrop") and theirs.get(k) != mine[k]]
    if differ:
        raise CheckpointError(f"train.init_from={model_dir} has another shape than this run: "
                              + "; ".join(differ))
    from backpack_core.training.prepare import tokenizer_sha256 as sha_of

    if tokenizer_sha256 is not None and sha_of(tok) != tokenizer_sha256:
        raise CheckpointError(f"train.init_from={model_dir} was trained with another tokenizer "
                              "than data.dir's shards; warm-start only from a model of the same "
                              "tokenizer (or prepare the shards with its tokenizer.json)")
    model.load_state_dict(source.state_dict())
