"""The Backpack language model (Hewitt et al., ACL 2023), in plain PyTorch.

Read top to bottom, this file follows the three steps of the computation:

1. senses:            C(x) = SenseNetwork(E[x])                      (batch, k, seq, d)
                      context-free: one set of k vectors per word type.
2. contextualization: alpha = softmax(q . k / sqrt(d/k) + causal mask)  (batch, k, seq, seq)
                      q, k come from a causal GPT-2 (the contextualizer) over the text.
3. output:            o_i = sum_l sum_j alpha[l, i, j] C(x_j)_l;   logits_i = E o_i.

The same class also builds the Transformer "twin" (`model_kind="transformer"`): the same
contextualizer with GPT-2's output head, logits_i = E LN(h_i), for like-for-like baselines.

Names used everywhere (code, JSON, CLI, app): `senses` (batch, k, seq, d), `contextualization`
(batch, k, query, source), `hidden_states` (batch, seq, d, contextualizer output after ln_f).

Edits hook in through an `Intervention` (see `backpack_core.edit.specs`): it may rewrite the senses
and the contextualization before the weighted sum; the weights are never touched.
An exported edited model (`backpack_core.edit.export`) carries its edits as `EditOverrides`:
per-token sense rows and contextualization scales, applied in the same two places first.

This module imports no transformers code, so command-line lookups start fast;
`backpack_core.model.hf` wraps `Backpack` as a transformers `PreTrainedModel` for `generate()`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from backpack_core.model.config import ModelConfig

try:  # optional, GPU only
    from flash_attn import flash_attn_func
except ImportError:  # pragma: no cover - depends on the machine
    flash_attn_func = None


# ----------------------------------------------------------------------------------------------
# Building blocks of the contextualizer (GPT-2) and the sense network
# ----------------------------------------------------------------------------------------------

def _normal_(tensor: torch.Tensor, std: float) -> None:
    """N(0, std) init; nothing on the meta device (a model built there to load weights into).
    torch's meta `normal_` imports torch._dynamo on first use: seconds of start-up for nothing."""
    if not tensor.is_meta:
        nn.init.normal_(tensor, mean=0.0, std=std)


def embedding(n: int, d: int) -> nn.Embedding:
    """nn.Embedding; built on the meta device without its own N(0, 1) init (see `_normal_`)."""
    if torch.get_default_device().type == "meta":
        return nn.Embedding(n, d, _weight=torch.empty(n, d))
    return nn.Embedding(n, d)


def activation(name: str):
    if name == "gelu_new":
        return lambda x: F.gelu(x, approximate="tanh")
    return F.gelu


class MLP(nn.Module):
    """d_in -> d_hidden -> d_out with GELU; GPT-2's MLP when d_out == d_in."""

    def __init__(self, d_in: int, d_hidden: int, d_out: int, config: ModelConfig):
        super().__init__()
        self.c_fc = nn.Linear(d_in, d_hidden)
        self.c_proj = nn.Linear(d_hidden, d_out)
        self.act = activation(config.activation_function)
        self.dropout = nn.Dropout(config.resid_pdrop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(self.act(self.c_fc(x))))


def attention(q, k, v, allowed: torch.Tensor | None, scale: float, dropout_p: float):
    """Softmax attention. q (b, h, s, hd); k, v (b, h, t, hd); allowed (b, 1, s, t) bool or None.

    `allowed=None` means plain causal attention with the query block at the end of the keys.
    flash-attn runs when installed and the tensors are CUDA fp16/bf16 without a padding mask;
    otherwise torch SDPA. Both compute the same function.
    """
    if (allowed is None and flash_attn_func is not None and q.is_cuda
            and q.dtype in (torch.float16, torch.bfloat16)):
        # flash-attn wants (b, s, h, hd) and aligns the causal mask bottom-right, as we need.
        out = flash_attn_func(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                              dropout_p=dropout_p, softmax_scale=scale, causal=True)
        return out.transpose(1, 2)
    if allowed is None and q.shape[2] != k.shape[2]:
        # Cached decoding without padding: the new queries see every cached key.
        allowed = causal_allowed(k.shape[2] - q.shape[2], q.shape[2], None, q.device)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, dropout_p=dropout_p,
                                          is_causal=allowed is None, scale=scale)


def fused_mix(queries: torch.Tensor, keys: torch.Tensor, senses: torch.Tensor) -> torch.Tensor:
    """Steps 2 + 3 without the weights: sum_l softmax(q_l k_l^T / sqrt(d/k) + causal) C_l.

    queries, keys (b, k, s, d/k), senses (b, k, s, d) -> (b, s, d). The same function as
    `SenseWeightNetwork` (mask_value None, no padding, no cache) followed by `Backpack.mix`.
    On CPU without gradients: `blocked_mix`; otherwise `flash_mix`."""
    needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in (queries, keys, senses))
    if queries.device.type == "cpu" and not needs_grad:
        return blocked_mix(queries, keys, senses)
    return flash_mix(queries, keys, senses)


def flash_mix(queries: torch.Tensor, keys: torch.Tensor, senses: torch.Tensor) -> torch.Tensor:
    """`fused_mix` as one SDPA call. Queries are d/k wide but values d: on CPU, SDPA then falls
    back to its math kernel, which materialises the (b, k, s, s) weights (and more).
    Zero-padding queries and keys to width d leaves every q . k unchanged (the scale stays
    1/sqrt(d/k)) and lets the fused CPU kernel run: 2-3x faster at 1024 tokens, but each
    q . k then costs as much as a weighted sum of values. On CUDA the kernels take the widths
    as they are."""
    hd, d = queries.shape[-1], senses.shape[-1]
    if queries.device.type == "cpu" and hd != d:
        queries, keys = F.pad(queries, (0, d - hd)), F.pad(keys, (0, d - hd))
    mixed = F.scaled_dot_product_attention(queries, keys, senses, is_causal=True,
                                           scale=1.0 / math.sqrt(hd))
    return mixed.sum(1)  # (b, k, s, d) -> (b, s, d)


def score_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype of sense-weight scores and softmax: float32, or the input's if wider (float64
    models keep ~1e-13 rather than float32's ~1e-5)."""
    return torch.promote_types(dtype, torch.float32)


MIX_ROWS = 64  # query rows per block of `blocked_mix` (the fastest of 16-256 at 256 and 1024)


def blocked_mix(queries: torch.Tensor, keys: torch.Tensor, senses: torch.Tensor,
                rows: int = MIX_ROWS) -> torch.Tensor:
    """`fused_mix` by blocks of `rows` queries, for inference: each block's weights
    (b, k, rows, end) over the keys up to its end only (causal), q . k at the narrow width
    d/k, softmax in float32, then the weighted sum of the senses. The weights of one block
    stay in cache. On CPU at 1024 tokens the mixing takes ~24 ms against `flash_mix`'s ~38,
    the whole forward 1.1x less (bench/bench_long.py). No gradients through the in-place mask:
    inference only."""
    b, k, s, hd = queries.shape
    # q . k in float32 at least (float64 stays float64): in bf16 the scores would be rounded as
    # in the sense-weight network's bug of issue 12
    dtype = score_dtype(queries.dtype)
    queries = queries.to(dtype) * (1.0 / math.sqrt(hd))
    keys_t = keys.to(dtype).transpose(-1, -2)  # (b, k, hd, s)
    future = torch.ones(rows, rows, dtype=torch.bool, device=queries.device).triu_(1)
    mixed = senses.new_empty(b, s, senses.shape[-1])
    for start in range(0, s, rows):
        end = min(start + rows, s)
        scores = queries[:, :, start:end] @ keys_t[..., :end]  # (b, k, rows, end), >= float32
        scores[..., start:].masked_fill_(future[:end - start, :end - start], float("-inf"))
        alpha = scores.softmax(-1).to(senses.dtype)
        mixed[:, start:end] = (alpha @ senses[:, :, :end]).sum(1)  # (b, rows, d)
    return mixed


LOSS_CHUNK = 4096  # tokens per float32 piece of a half-precision loss (4096 x 50k: 0.8 GB)


def _piece_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.float(), targets, ignore_index=-100, reduction="sum")


def next_token_loss(logits: torch.Tensor, labels: torch.Tensor, reduction: str = "mean"
                    ) -> torch.Tensor:
    """Cross-entropy of predicting labels[:, i + 1] from logits[:, i]; label -100 is ignored.

    logits (b, s, V), labels (b, s). The labels are shifted (the last position gets -100)
    rather than the logits sliced, so the logits are not copied. float32 logits go in whole;
    half-precision ones (autocast on a GPU) in pieces of LOSS_CHUNK tokens, each upcast and
    recomputed in the backward pass (checkpointed), so float32 logits over the whole batch and
    vocabulary never exist at once. reduction "mean" (over the counted labels) or "none":
    (b, s) losses, the last column 0.
    """
    b, s, _ = logits.shape
    targets = F.pad(labels[:, 1:], (0, 1), value=-100).flatten()
    flat = logits.flatten(0, 1)
    if reduction == "none":
        if flat.dtype == torch.float32:
            return F.cross_entropy(flat, targets, ignore_index=-100, reduction="none").view(b, s)
        return torch.cat([F.cross_entropy(x.float(), t, ignore_index=-100, reduction="none")
                          for x, t in zip(flat.split(LOSS_CHUNK), targets.split(LOSS_CHUNK))]
                         ).view(b, s)
    if reduction != "mean":
        raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")
    if flat.dtype == torch.float32:
        return F.cross_entropy(flat, targets, ignore_index=-100)
    from torch.utils.checkpoint import checkpoint

    total = sum(checkpoint(_piece_loss, x, t, use_reentrant=False)
                for x, t in zip(flat.split(LOSS_CHUNK), targets.split(LOSS_CHUNK)))
    return total / (targets != -100).sum()


def causal_allowed(past_len: int, seq_len: int, key_valid: torch.Tensor | None,
                   device: torch.device) -> torch.Tensor:
    """Boolean (b or 1, 1, seq, past + seq) mask: query i (at past_len + i) may see key j.

    A key is visible if it is not in the future and not padding. Every query always sees
    itself, so no row is empty (a padded query then attends only to itself, and no real
    query ever attends to padding).
    """
    total = past_len + seq_len
    query_at = torch.arange(past_len, total, device=device)[:, None]  # (s, 1)
    key_at = torch.arange(total, device=device)[None, :]  # (1, t)
    allowed = key_at <= query_at
    if key_valid is not None:
        allowed = (allowed & key_valid[:, None, :]) | (key_at == query_at)  # (b, s, t)
    else:
        allowed = allowed[None]
    return allowed[:, None]  # (b or 1, 1, s, t)


class CausalSelfAttention(nn.Module):
    def __init__(self, config: ModelConfig, layer_idx: int):
        super().__init__()
        self.n_head = config.n_head
        self.head_dim = config.n_embd // config.n_head
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd)  # fused q, k, v
        self.c_proj = nn.Linear(config.n_embd, config.n_embd)
        self.scale = 1.0 / math.sqrt(self.head_dim)
        if config.scale_attn_by_inverse_layer_idx:
            self.scale /= layer_idx + 1
        self.attn_pdrop = config.attn_pdrop
        self.resid_dropout = nn.Dropout(config.resid_pdrop)

    def forward(self, x, allowed, past_kv=None):
        """x (b, s, d) -> (b, s, d); past_kv: cached (k, v), each (b, h, t_past, hd)."""
        q, k, v = rearrange(self.c_attn(x), "b s (three h hd) -> three b h s hd",
                            three=3, h=self.n_head)
        if past_kv is not None:
            k = torch.cat([past_kv[0], k], dim=2)
            v = torch.cat([past_kv[1], v], dim=2)
        dropout_p = self.attn_pdrop if self.training else 0.0
        y = attention(q, k, v, allowed, self.scale, dropout_p)
        y = rearrange(y, "b h s hd -> b s (h hd)")
        return self.resid_dropout(self.c_proj(y)), (k, v)


class Block(nn.Module):
    """Pre-norm transformer block (GPT-2)."""

    def __init__(self, config: ModelConfig, layer_idx: int):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.attn = CausalSelfAttention(config, layer_idx)
        self.ln_2 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.mlp = MLP(config.n_embd, config.mlp_width, config.n_embd, config)

    def forward(self, x, allowed, past_kv=None):
        attn_out, kv = self.attn(self.ln_1(x), allowed, past_kv)
        x = x + attn_out
        x = x + self.mlp(self.ln_2(x))
        return x, kv


class Contextualizer(nn.Module):
    """A GPT-2 without its token embedding (shared, owned by `Backpack`) and without a head."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.wpe = embedding(config.n_positions, config.n_embd)
        self.drop = nn.Dropout(config.embd_pdrop)
        self.h = nn.ModuleList([Block(config, i) for i in range(config.n_layer)])
        self.ln_f = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)

    def forward(self, token_embeddings, positions, allowed, cache=None):
        """token_embeddings (b, s, d), positions (b, s) -> hidden_states (b, s, d), after ln_f."""
        x = self.drop(token_embeddings + self.wpe(positions))
        for i, block in enumerate(self.h):
            x, kv = block(x, allowed, cache.layers[i] if cache is not None else None)
            if cache is not None:
                cache.layers[i] = kv
        return self.ln_f(x)


class SenseNetwork(nn.Module):
    """C(x) = SenseNet(E[x]): k sense vectors per token, from its embedding alone (no position).

    Published layout: LN, one transformer block without attention ("no-mix"), then a final MLP
    d -> sense_intermediate_scale * d -> k * d.
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        d = config.n_embd
        self.num_senses = config.num_senses
        self.dropout = nn.Dropout(config.embd_pdrop)
        self.ln = nn.LayerNorm(d, eps=config.layer_norm_epsilon)
        self.block = nn.Module()  # the no-mix block: ln_1, mlp, ln_2
        self.block.ln_1 = nn.LayerNorm(d, eps=config.layer_norm_epsilon)
        self.block.mlp = MLP(d, 4 * d, d, config)
        self.block.ln_2 = nn.LayerNorm(d, eps=config.layer_norm_epsilon)
        self.final_mlp = MLP(d, config.sense_intermediate_scale * d, config.num_senses * d, config)

    def forward(self, token_embeddings: torch.Tensor) -> torch.Tensor:
        """token_embeddings (..., d) -> senses (..., k, d)."""
        residual = self.dropout(token_embeddings)
        h = self.ln(residual)
        residual = h + residual
        h = self.block.ln_1(residual)
        residual = self.block.mlp(h) + residual
        h = self.block.ln_2(residual)
        return rearrange(self.final_mlp(h), "... (k d) -> ... k d", k=self.num_senses)


class SenseWeightNetwork(nn.Module):
    """alpha[l, i, j] = softmax_j(q_l(h_i) . k_l(h_j) / sqrt(d/k) + mask): k "heads" of size d/k."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.num_senses = config.num_senses
        self.head_dim = config.n_embd // config.num_senses
        self.mask_value = config.sense_mask_value
        self.c_attn = nn.Linear(config.n_embd, 2 * config.n_embd)  # queries then keys

    def project(self, hidden_states):
        """hidden_states (b, s, d) -> queries, keys, each (b, k, s, d/k), in `score_dtype`.

        Computed in float32 for a bfloat16 model: rounding q and k to bf16 moves q . k (up to
        ~4000 on the shipped model) by tens, the weights by up to 0.46 on PTB (0.32 without
        that rounding; docs/API.md, "Precision"). Under autocast the matmul stays autocast's."""
        dtype = score_dtype(hidden_states.dtype)
        if hidden_states.dtype == dtype:  # float32 / float64: the module itself, so that hooks
            projected = self.c_attn(hidden_states)  # and adapters on it (LoRA) take part
        else:
            w = self.c_attn
            projected = F.linear(hidden_states.to(dtype), w.weight.to(dtype), w.bias.to(dtype))
        return rearrange(projected, "b s (two k hd) -> two b k s hd", two=2, k=self.num_senses)

    def forward(self, queries, keys, allowed):
        """queries (b, k, s, hd), keys (b, k, t, hd), allowed (b|1, 1, s, t) -> (b, k, s, t)."""
        # Scores and softmax in float32 (float64 for a float64 model), autocast or not: in
        # bfloat16 the unscaled scores of a trained model (~2600 on the shipped one) sit 16 apart
        # and the weights move by ~0.5.
        dtype = score_dtype(queries.dtype)
        with torch.autocast(queries.device.type, enabled=False):
            scores = torch.einsum("b k i h, b k j h -> b k i j", queries.to(dtype), keys.to(dtype))
        scores = scores / math.sqrt(self.head_dim)
        if self.mask_value is None:
            scores = scores.masked_fill(~allowed, float("-inf"))
        else:  # published: additive mask, not -inf
            scores = scores + (~allowed).to(scores.dtype) * self.mask_value
        return scores.softmax(dim=-1).to(queries.dtype)


# ----------------------------------------------------------------------------------------------
# Edits and the generation cache
# ----------------------------------------------------------------------------------------------

class Intervention:
    """Where edits enter the forward pass. The base class changes nothing.

    `backpack_core.edit.specs` compiles an edit set into one of these. Both methods must return new
    tensors (never write into their arguments) so the model's weights stay untouched.
    `on_senses` must treat each token on its own (by its id and position): generation edits a
    token's senses once, when it enters the cache.
    """

    def on_senses(self, senses, token_ids, positions):
        """senses (b, k, s, d) of tokens token_ids (b, s) at text positions (b, s).

        Positions count real tokens from 0; padding has position -1 (here and in
        `on_contextualization`), and padding sources must never be given weight."""
        return senses

    def on_contextualization(self, contextualization, source_ids, source_positions,
                             query_positions):
        """contextualization (b, k, s, t); source ids/positions (b, t); query positions (b, s)."""
        return contextualization


class EditOverrides(nn.Module, Intervention):
    """Edits a model carries with it (an exported edited model, `backpack_core.edit.export`):
    tables over token ids that the forward pass applies to every occurrence of a token, before
    any intervention it is handed. Sizes come from `config.edit_overrides`; the values are
    persistent buffers, saved in model.safetensors as `edit_overrides.*`.

    sense_token_ids (n,) int64, sorted   tokens whose senses change
    senses (n, k, d)                      their replacement sense vectors
    sense_mask (n, k) bool                which of those rows replace the computed ones
    scale_token_ids (m,) int64, sorted   tokens whose contextualization weights are scaled
    scales (m, k)                         alpha[l, i, j] *= scales[token of j, l]
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        n = config.edit_overrides["sense_tokens"]
        m = config.edit_overrides["contextualization_tokens"]
        k, d = config.num_senses, config.n_embd
        self.register_buffer("sense_token_ids", torch.zeros(n, dtype=torch.long))
        self.register_buffer("senses", torch.zeros(n, k, d))
        self.register_buffer("sense_mask", torch.zeros(n, k, dtype=torch.bool))
        self.register_buffer("scale_token_ids", torch.zeros(m, dtype=torch.long))
        self.register_buffer("scales", torch.ones(m, k))

    @property
    def changes_contextualization(self) -> bool:
        return self.scale_token_ids.numel() > 0

    @staticmethod
    def _lookup(table_ids: torch.Tensor, token_ids: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """Row of each token in a sorted, non-empty id table: slot (...), hit (...) bool."""
        slot = torch.searchsorted(table_ids, token_ids).clamp_(max=table_ids.numel() - 1)
        return slot, table_ids[slot] == token_ids

    def replace_senses(self, senses: torch.Tensor, token_ids: torch.Tensor) -> torch.Tensor:
        """senses (..., k, d) of token_ids (...) -> the same with the carried rows in place."""
        if self.sense_token_ids.numel() == 0:
            return senses
        slot, hit = self._lookup(self.sense_token_ids, token_ids)
        replace = self.sense_mask[slot] & hit[..., None]  # (..., k)
        return torch.where(replace[..., None], self.senses[slot].to(senses.dtype), senses)

    def on_senses(self, senses, token_ids, positions):
        """senses (b, k, s, d), token_ids (b, s) -> (b, k, s, d); positions play no part."""
        replaced = self.replace_senses(rearrange(senses, "b k s d -> b s k d"), token_ids)
        return rearrange(replaced, "b s k d -> b k s d")

    def on_contextualization(self, contextualization, source_ids, source_positions,
                             query_positions):
        """contextualization (b, k, s, t) -> the same, column j of sense l times
        scales[token of j, l]; source_ids (b, t). Positions play no part."""
        if not self.changes_contextualization:
            return contextualization
        slot, hit = self._lookup(self.scale_token_ids, source_ids)
        factors = torch.where(hit[..., None], self.scales[slot], 1.0)  # (b, t, k)
        return contextualization * rearrange(factors.to(contextualization.dtype),
                                             "b t k -> b k 1 t")


class BackpackCache:
    """What a new token needs from its prefix: per-layer keys and values of the contextualizer,
    sense-weight keys, sense vectors (computed once per prefix token), token ids and positions.
    """

    def __init__(self, n_layer: int):
        self.layers: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * n_layer
        self.sense_keys = None  # (b, k, t, d/k)
        self.senses = None  # (b, k, t, d)
        self.token_ids = None  # (b, t)
        self.positions = None  # (b, t)
        self.key_valid = None  # (b, t) bool: not padding
        self.has_padding = False  # some key_valid is False: a call without a mask still needs it

    def get_seq_length(self, layer_idx: int = 0) -> int:
        """Tokens seen so far (padding included). `key_valid` is kept for both model kinds; the
        sense fields stay None for the Transformer twin."""
        return 0 if self.key_valid is None else self.key_valid.shape[1]

    def extend(self, name: str, new: torch.Tensor, dim: int) -> torch.Tensor:
        old = getattr(self, name)
        full = new if old is None else torch.cat([old, new], dim=dim)
        setattr(self, name, full)
        return full

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        """Select batch rows (beam search). Fields still None (the twin has no senses) stay None."""
        self.layers = [None if kv is None else tuple(t.index_select(0, beam_idx) for t in kv)
                       for kv in self.layers]
        for name in ("sense_keys", "senses", "token_ids", "positions", "key_valid"):
            value = getattr(self, name)
            if value is not None:
                setattr(self, name, value.index_select(0, beam_idx.to(value.device)))


@dataclass
class BackpackOutput:
    logits: torch.Tensor  # (b, s, vocab)
    loss: torch.Tensor | None = None
    contextualization: torch.Tensor | None = None  # (b, k, s, t)
    senses: torch.Tensor | None = None  # (b, k, t, d)
    hidden_states: torch.Tensor | None = None  # (b, s, d)
    past_key_values: BackpackCache | None = None


# ----------------------------------------------------------------------------------------------
# The model
# ----------------------------------------------------------------------------------------------

class Backpack(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        # Compute each distinct token's senses once per batch and gather them back. The same
        # function; faster on CPU, slower on GPU (reference doc), so off unless asked for.
        self.dedup_senses = False
        self.sense_dropout = max(config.embd_pdrop, config.resid_pdrop)  # dropouts in C(x)
        self.wte = embedding(config.vocab_size, config.n_embd)  # E: input, senses and output
        self.contextualizer = Contextualizer(config)
        if config.is_backpack:
            self.sense_network = SenseNetwork(config)
            self.sense_weight_network = SenseWeightNetwork(config)
        # the edits an exported edited model carries (None for an unedited model)
        self.edit_overrides = (EditOverrides(config) if config.is_backpack
                               and config.edit_overrides is not None else None)
        self.apply(self._init_weights)
        for name, p in self.named_parameters():  # GPT-2: scale residual projections
            if name.endswith("c_proj.weight") and name.startswith("contextualizer"):
                _normal_(p, std=0.02 / math.sqrt(2 * config.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            _normal_(module.weight, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)
        if isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)

    # -- the three steps, usable on their own (inspection, sense bank, fast re-evaluation) --

    def sense_vectors(self, token_ids: torch.Tensor) -> torch.Tensor:
        """Step 1. token_ids (...) -> senses (..., k, d). Context-free; with the sense rows the
        model carries, if it is an exported edited model."""
        senses = self.sense_network(self.wte(token_ids))
        if self.edit_overrides is not None:
            senses = self.edit_overrides.replace_senses(senses, token_ids)
        return senses

    def output_logits(self, mixed: torch.Tensor) -> torch.Tensor:
        """Step 3's projection. mixed (..., d) -> logits (..., vocab); tied to E, no bias."""
        return F.linear(mixed, self.wte.weight)

    @staticmethod
    def mix(contextualization: torch.Tensor, senses: torch.Tensor) -> torch.Tensor:
        """Step 3's weighted sum: o_i = sum_l sum_j alpha[l,i,j] C(x_j)_l.

        contextualization (b, k, i, j), senses (b, k, j, d) -> (b, i, d). One batched matmul
        over the flattened (sense, source) axis, with no (b, k, i, d) intermediate.
        """
        alpha = rearrange(contextualization, "b k i j -> b i (k j)")
        return alpha @ rearrange(senses, "b k j d -> b (k j) d")

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        past_key_values: BackpackCache | None = None,
        use_cache: bool = False,
        output_contextualization: bool = False,
        output_senses: bool = False,
        output_hidden_states: bool = False,
        intervention: Intervention | None = None,
    ) -> BackpackOutput:
        """input_ids (b, s) -> BackpackOutput.

        attention_mask (b, past + s): 1 for tokens, 0 for padding (padding never receives
        weight); left out with a cache, the cache's own record of its padding is used (new
        tokens count as real). labels (b, s): next-token loss with the usual shift; -100 is ignored.
        With use_cache, the returned `past_key_values` continues the sequence on the next call.
        """
        cfg = self.config
        b, s = input_ids.shape
        cache = past_key_values
        if use_cache and cache is None:
            cache = BackpackCache(cfg.n_layer)
        past_len = cache.get_seq_length() if cache is not None else 0
        if attention_mask is None and cache is not None and cache.has_padding:
            # the prefix was padded: its padding must stay invisible and positions must keep
            # counting real tokens, so continue with the mask the cache remembers
            attention_mask = torch.cat([cache.key_valid, cache.key_valid.new_ones(b, s)], 1)

        # Positions and masks. Positions count real tokens, so left padding works.
        padded = attention_mask is not None and not bool(attention_mask.all())
        if attention_mask is None:
            positions = torch.arange(past_len, past_len + s, device=input_ids.device).expand(b, s)
            key_valid_new = torch.ones(b, s, dtype=torch.bool, device=input_ids.device)
        else:
            if attention_mask.shape != (b, past_len + s):
                raise ValueError(f"attention_mask has shape {tuple(attention_mask.shape)}; "
                                 f"expected (batch, cached + new) = {(b, past_len + s)}")
            positions = (attention_mask.long().cumsum(-1) - 1)[:, past_len:]  # padding: -1
            key_valid_new = attention_mask[:, past_len:].bool()
            positions = positions.masked_fill(~key_valid_new, -1)
        # Plain integers when there is no mask: no GPU sync, no torch.compile graph break.
        longest = past_len + s if attention_mask is None else int(positions.max()) + 1
        if longest > cfg.n_positions:
            raise ValueError(f"sequence of {longest} tokens is longer than the model's context "
                             f"of {cfg.n_positions} (n_positions); shorten it")
        key_valid = key_valid_new if cache is None else cache.extend("key_valid", key_valid_new, 1)
        if cache is not None:
            cache.has_padding = cache.has_padding or padded
        # None means plain causal attention (fast path: flash-attn, or SDPA's is_causal)
        allowed = causal_allowed(past_len, s, key_valid, input_ids.device) if padded else None

        token_embeddings = self.wte(input_ids)
        # padding reads position 0's embedding; it is never attended to
        hidden_states = self.contextualizer(token_embeddings, positions.clamp(min=0), allowed, cache)

        contextualization = senses = None
        if not cfg.is_backpack:  # the Transformer twin
            logits = self.output_logits(hidden_states)
        else:
            # 1. senses of the new tokens (context-free), joined to the cached prefix's
            if self.dedup_senses and self.training and self.sense_dropout > 0:
                raise ValueError(
                    f"dedup_senses is exact only without dropout: in training mode with sense-"
                    f"network dropout {self.sense_dropout} all occurrences of a token would "
                    f"share one dropout mask; set dedup_senses = False (or the dropouts to 0)")
            if self.dedup_senses:  # once per distinct token: exact, and cheaper on CPU
                unique_ids, inverse = torch.unique(input_ids, return_inverse=True)
                senses_new = self.sense_network(self.wte(unique_ids))[inverse]  # (b, s, k, d)
            else:
                senses_new = self.sense_network(token_embeddings)  # (b, s, k, d)
            senses_new = rearrange(senses_new, "b s k d -> b k s d")
            if self.training and cfg.sense_pdrop > 0:  # sense dropout: whole sense vectors
                p = cfg.sense_pdrop
                keep = torch.rand(senses_new.shape[:3], device=senses_new.device) >= p  # (b, k, s)
                senses_new = senses_new * (keep.unsqueeze(-1).to(senses_new.dtype) / (1 - p))
            if self.edit_overrides is not None:  # the edits the model carries, then the caller's
                senses_new = self.edit_overrides.on_senses(senses_new, input_ids, positions)
            if intervention is not None:
                senses_new = intervention.on_senses(senses_new, input_ids, positions)
            queries, keys_new = self.sense_weight_network.project(hidden_states)
            if cache is not None:
                senses = cache.extend("senses", senses_new, 2)
                keys = cache.extend("sense_keys", keys_new, 2)
                source_ids = cache.extend("token_ids", input_ids, 1)
                source_positions = cache.extend("positions", positions, 1)
            else:
                senses, keys, source_ids, source_positions = senses_new, keys_new, input_ids, positions
            fused = (allowed is None and cache is None and intervention is None
                     and not output_contextualization and cfg.sense_mask_value is None
                     and not (self.edit_overrides is not None
                              and self.edit_overrides.changes_contextualization))
            if fused:  # nobody needs the weights: 2 + 3 without keeping them
                logits = self.output_logits(fused_mix(queries, keys, senses))
            else:
                # 2. contextualization weights
                if allowed is None:
                    allowed = causal_allowed(past_len, s, None, input_ids.device)
                contextualization = self.sense_weight_network(queries, keys, allowed).to(senses.dtype)
                if self.edit_overrides is not None:
                    contextualization = self.edit_overrides.on_contextualization(
                        contextualization, source_ids, source_positions, positions)
                if intervention is not None:
                    contextualization = intervention.on_contextualization(
                        contextualization, source_ids, source_positions, positions)
                # 3. weighted sum of senses, projected onto the output embeddings
                logits = self.output_logits(self.mix(contextualization, senses))

        loss = next_token_loss(logits, labels) if labels is not None else None
        return BackpackOutput(
            logits=logits,
            loss=loss,
            contextualization=contextualization if output_contextualization else None,
            senses=senses if output_senses else None,
            hidden_states=hidden_states if output_hidden_states else None,
            past_key_values=cache if use_cache else None,
        )


# ----------------------------------------------------------------------------------------------
# Accounting
# ----------------------------------------------------------------------------------------------

def count_parameters(model: Backpack) -> dict[str, int]:
    """Parameters by part (the tied embedding counted once)."""
    parts = {"embeddings": model.wte.weight.numel(),
             "contextualizer": sum(p.numel() for p in model.contextualizer.parameters())}
    if model.config.is_backpack:
        parts["sense_network"] = sum(p.numel() for p in model.sense_network.parameters())
        parts["sense_weight_network"] = sum(
            p.numel() for p in model.sense_weight_network.parameters())
    parts["total"] = sum(parts.values())
    return parts


def flops_per_token(config: ModelConfig, seq_len: int) -> float:
    """Training FLOPs (forward + backward = 3x forward) per token, counting every part.

    Forward, per token: 2 FLOPs per weight of a matmul it passes through; attention scores and
    weighted values 2 * 2 * seq * d per layer (full, not causal-halved, as nanoGPT counts).
    Backpack adds the sense network (its weights, once per token), the sense-weight projection,
    the sense scores (2 * seq * d) and the mixing (2 * k * seq * d), and the output layer.
    The Transformer twin has contextualizer + output layer only.
    """
    d, L, V = config.n_embd, config.n_layer, config.vocab_size
    per_layer = 4 * d * d + 2 * d * config.mlp_width  # attention projections + MLP weights
    forward = 2 * L * per_layer + L * 4 * seq_len * d  # contextualizer
    forward += 2 * V * d  # output layer
    if config.is_backpack:
        k, scale = config.num_senses, config.sense_intermediate_scale
        forward += 2 * (2 * 4 * d * d + d * scale * d + scale * d * k * d)  # sense network
        forward += 2 * (2 * d * d)  # sense-weight projection
        forward += 2 * seq_len * d + 2 * k * seq_len * d  # sense scores + mixing
    return 3.0 * forward
