"""Causal analysis of one prediction, the Backpack way: activation patching between a clean and
a corrupted prompt, split exactly into *what was said* (the sense vectors) and *how it was
weighted* (the contextualization weights).

Two prompts of the same token length n, clean x and corrupted x' (primed: the corrupted run);
the prediction after the last token (query i = n - 1); a target word t and a foil f. With
u = E_t - E_f (d,), the logit difference at i is exactly linear in alpha * C per (sense l,
source j) (reference doc, step 3):

    LD(alpha, C) = sum_l sum_j alpha[l, i, j] (u . C(x_j)_l)           "l j, l j ->"

and every effect is normalised so that the clean run scores 1 and the corrupted one 0:

    effect = (LD - LD') / (LD_clean - LD')

1. Sense patching: no transformer pass beyond the two runs. Per (sense l, source j), with
   a = alpha[:, i, :] and s = u . C (both (k, n)):
   - `senses`:      the clean sense vector C(x_j)_l into the corrupted run, its weight kept:
                    a'[l, j] (s - s')[l, j] / (LD_clean - LD')
   - `weights`:     the clean weight alpha[l, i, j] in, the corrupted sense kept:
                    (a - a')[l, j] s'[l, j] / (LD_clean - LD')
   - `interaction`: (a - a')[l, j] (s - s')[l, j] / (LD_clean - LD')
   The three tables sum to exactly 1. Patching every sense and every weight gives the clean
   logits, nothing the corrupted ones, over the whole vocabulary (`PatchPair.patched_logits`).
   A patched weight is not renormalised (as in the paper's edits). Senses are context-free, so
   where the two prompts hold the same token the sense effect is exactly 0.
2. Contextualizer patching (classic activation patching). Per (layer L, position p): the clean
   residual stream at the input of block L (L = n_layer: the contextualizer's output before
   ln_f) replaces the corrupted one at p. Only what depends on it is recomputed: blocks L.. for
   positions p.. (earlier positions cannot see p, so their keys and values are the corrupted
   run's), then ln_f, the sense-weight projection and the final row of weights alpha~[:, i, :].
   The sense vectors do not depend on the contextualizer: they stay the corrupted ones. The
   effect, sum_l sum_j (alpha~ - alpha')[l, i, j] s'[l, j] / (LD_clean - LD'), is split per
   sense l (`by_sense`, summing to it). Positions before the first changed token hold the same
   residual stream in both runs: their effect is exactly 0, not computed. The other cells of a
   layer run as one batch, over the positions from the first changed one on (the earlier ones'
   keys and values are the corrupted run's): per cell (n_layer - L) blocks over n - first
   positions; no sense network, no output layer (bench/bench_patch.py).

    pair = PatchPair(model, tokenizer, "The language of France is",
                     "The language of Germany is")           # the same number of tokens
    result = pair.analyse(target=" French", foil=" German")   # defaults: each prompt's top word
    result.senses, result.weights, result.interaction         # (k, n) each, summing to 1
    result.layers, result.by_sense                            # (n_layer + 1, n), (.., n, k)
    result.to_dict()                                          # the JSON of python -m analyses.patch
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from einops import einsum, rearrange

from backpack_core.common.limits import check_patch_tokens
from backpack_core.interpret.readouts import top_tokens
from backpack_core.model.backpack import causal_allowed
from backpack_core.model.vocab import single_token_id, token_text

if TYPE_CHECKING:  # pragma: no cover
    from backpack_core.model.backpack import Backpack
    from backpack_core.model.tokenizer import Tokenizer

METRIC = "logit difference (target - foil) after the last token, normalised: clean 1, corrupted 0"


# ----------------------------------------------------------------------------------------------
# One prompt's run, with what patching needs
# ----------------------------------------------------------------------------------------------

@dataclass
class PromptRun:
    """One prompt through the model, with the activations patching reads.

    residuals (n_layer + 1, n, d): the input of each block, then the contextualizer's output
    before ln_f; keys_values: per block, its attention keys and values (1, h, n, hd) each;
    sense_keys (1, k, n, d/k); senses (k, n, d); contextualization (k, n, n); logits (vocab,) of
    the last position."""

    text: str
    token_ids: list[int]
    tokens: list[str]
    residuals: torch.Tensor
    keys_values: list[tuple[torch.Tensor, torch.Tensor]]
    sense_keys: torch.Tensor
    senses: torch.Tensor
    contextualization: torch.Tensor
    logits: torch.Tensor

    @property
    def row(self) -> torch.Tensor:
        """(k, n): the weights of the last query, alpha[:, n - 1, :]."""
        return self.contextualization[:, -1, :]


def _tokens(tokenizer: Tokenizer | None, ids: list[int]) -> list[str]:
    return [token_text(tokenizer, i) if tokenizer is not None else f"<{i}>" for i in ids]


def run_prompt(model: Backpack, tokenizer: Tokenizer | None, text: str, ids: list[int]
               ) -> PromptRun:
    """The forward pass of `Backpack.forward`, step by step, keeping each block's input (call
    it under torch.inference_mode; the model in eval mode)."""
    ctx, swn = model.contextualizer, model.sense_weight_network
    n = len(ids)
    device = model.wte.weight.device
    token_ids = torch.tensor(ids, device=device)[None]  # (1, n)
    positions = torch.arange(n, device=device)[None]
    x = ctx.drop(model.wte(token_ids) + ctx.wpe(positions))  # (1, n, d)
    residuals, keys_values = [x[0]], []
    for block in ctx.h:
        x, kv = block(x, None)
        residuals.append(x[0])
        keys_values.append(kv)
    queries, keys = swn.project(ctx.ln_f(x))  # (1, k, n, d/k) each
    contextualization = swn(queries, keys, causal_allowed(0, n, None, device))[0]  # (k, n, n)
    senses = rearrange(model.sense_vectors(token_ids)[0], "n k d -> k n d")
    logits = model.output_logits(einsum(contextualization[:, -1], senses, "k j, k j d -> d"))
    return PromptRun(text, ids, _tokens(tokenizer, ids), torch.stack(residuals),
                     keys_values, keys, senses, contextualization, logits)


# ----------------------------------------------------------------------------------------------
# The result
# ----------------------------------------------------------------------------------------------

@dataclass
class Patching:
    """Effects on the normalised logit difference (clean 1, corrupted 0) at the last position.

    senses, weights, interaction (k, n): sense patching per (sense l, source j); they sum to 1.
    layers (n_layer + 1, n): contextualizer patching per (layer L, position p); by_sense
    (n_layer + 1, n, k): the same split per sense l, summing to `layers`. Row L of `layers` is
    the input of block L; row n_layer the contextualizer's output (before ln_f)."""

    clean: PromptRun
    corrupted: PromptRun
    target: str
    target_id: int
    foil: str
    foil_id: int
    logit_diff_clean: float
    logit_diff_corrupted: float
    senses: torch.Tensor
    weights: torch.Tensor
    interaction: torch.Tensor
    layers: torch.Tensor | None
    by_sense: torch.Tensor | None
    top_clean: list
    top_corrupted: list

    @property
    def n(self) -> int:
        return len(self.clean.token_ids)

    def _prompt(self, run: PromptRun, diff: float, top: list) -> dict[str, Any]:
        return {"text": run.text, "tokens": run.tokens, "token_ids": run.token_ids,
                "logit_diff": diff, "top": [t.to_dict() for t in top]}

    def sense_rows(self) -> list[dict[str, Any]]:
        """One row per (source position, sense): the three sense-patching effects."""
        rows = []
        for j in range(self.n):
            for l in range(self.senses.shape[0]):
                rows.append({"position": j, "clean_token": self.clean.tokens[j],
                             "corrupted_token": self.corrupted.tokens[j], "sense": l,
                             "senses": float(self.senses[l, j]), "weights": float(self.weights[l, j]),
                             "interaction": float(self.interaction[l, j])})
        return rows

    def layer_rows(self) -> list[dict[str, Any]]:
        """One row per (layer, position): the contextualizer-patching effect and its split."""
        if self.layers is None:
            return []
        return [{"layer": layer, "position": p, "clean_token": self.clean.tokens[p],
                 "corrupted_token": self.corrupted.tokens[p], "effect": float(self.layers[layer, p]),
                 "by_sense": [float(v) for v in self.by_sense[layer, p]]}
                for layer in range(self.layers.shape[0]) for p in range(self.n)]

    def to_dict(self) -> dict[str, Any]:
        return {
            "metric": METRIC, "position": self.n - 1,
            "target": {"token": self.target, "token_id": self.target_id},
            "foil": {"token": self.foil, "token_id": self.foil_id},
            "clean": self._prompt(self.clean, self.logit_diff_clean, self.top_clean),
            "corrupted": self._prompt(self.corrupted, self.logit_diff_corrupted, self.top_corrupted),
            "senses": {"totals": {"senses": float(self.senses.sum()),
                                  "weights": float(self.weights.sum()),
                                  "interaction": float(self.interaction.sum())},
                       "rows": self.sense_rows()},
            "contextualizer": None if self.layers is None else {
                "layers": self.layers.shape[0],
                "layer_meaning": "row L: the input of block L; the last row: the contextualizer's "
                                 "output before ln_f",
                "rows": self.layer_rows()},
        }


# ----------------------------------------------------------------------------------------------
# The pair of prompts
# ----------------------------------------------------------------------------------------------

def _token_list(tokens: list[str], limit: int = 24) -> str:
    shown = ", ".join(repr(t) for t in tokens[:limit])
    return f"[{shown}{', ...' if len(tokens) > limit else ''}]"


class PatchPair:
    """A clean and a corrupted prompt of the same token length, each run once; then any patch of
    senses, weights or contextualizer activations is evaluated from these two runs.

    A prompt is a text, or a sequence of token ids (then `tokenizer` may be None; words are
    then token ids too). Everything runs without autograd in the model's dtype (float32 by
    default: exact)."""

    def __init__(self, model: Backpack, tokenizer: Tokenizer | None,
                 clean: str | Sequence[int], corrupted: str | Sequence[int]):
        if not model.config.is_backpack:
            raise ValueError("patching senses needs a Backpack (this model is a Transformer twin: "
                             "it has no senses)")
        if model.training:
            raise ValueError("the model is in training mode (dropout on): call model.eval() first")
        self.model, self.tokenizer = model, tokenizer
        ids, texts = {}, {}
        for name, text in (("clean", clean), ("corrupted", corrupted)):
            if isinstance(text, str):
                if not text.strip():
                    raise ValueError(f"the {name} prompt is empty: give a text")
                if tokenizer is None:
                    raise ValueError("a text needs a tokenizer; give token ids instead")
                ids[name] = tokenizer.encode(text)
            else:
                ids[name] = [int(i) for i in text]
                bad = [i for i in ids[name] if not 0 <= i < model.config.vocab_size]
                if bad:
                    raise ValueError(f"token id {bad[0]} of the {name} prompt is outside the "
                                     f"model's vocabulary (0..{model.config.vocab_size - 1})")
                text = tokenizer.decode(ids[name]) if tokenizer is not None else ""
            texts[name] = text
            if not ids[name]:
                raise ValueError(f"the {name} prompt is empty: give a text")
            if len(ids[name]) > model.config.n_positions:
                raise ValueError(f"the {name} prompt is {len(ids[name])} tokens long; the model "
                                 f"reads at most {model.config.n_positions}")
        a, b = ids["clean"], ids["corrupted"]
        if len(a) != len(b):
            show = lambda i: _token_list(_tokens(tokenizer, i))  # noqa: E731
            raise ValueError(f"the clean and corrupted prompts must have the same number of tokens "
                             f"to be patched position by position: clean has {len(a)} {show(a)}, "
                             f"corrupted has {len(b)} {show(b)}")
        if a == b:
            raise ValueError("the clean and corrupted prompts are the same tokens: there is "
                             "nothing to patch; change a word of the corrupted one")
        check_patch_tokens(len(a))
        with torch.inference_mode():
            self.clean = run_prompt(model, tokenizer, texts["clean"], a)
            self.corrupted = run_prompt(model, tokenizer, texts["corrupted"], b)
            same = torch.tensor([x == y for x, y in zip(a, b)], device=self.clean.senses.device)
            # context-free senses: equal tokens have equal senses (exact zeros, not rounding)
            self.clean.senses = torch.where(same[None, :, None], self.corrupted.senses,
                                            self.clean.senses)
        self.n = len(a)
        self.changed = [j for j in range(self.n) if a[j] != b[j]]  # positions whose token differs

    # -- patched logits over the whole vocabulary (what the tests compare with forward passes) --

    def _mask(self, mask: torch.Tensor | bool | None) -> torch.Tensor:
        """None / False: nothing; True: everything; else a (k, n) bool tensor."""
        k = self.model.config.num_senses
        device = self.clean.senses.device
        if mask is None or mask is False:
            return torch.zeros(k, self.n, dtype=torch.bool, device=device)
        if mask is True:
            return torch.ones(k, self.n, dtype=torch.bool, device=device)
        mask = torch.as_tensor(mask, dtype=torch.bool, device=device)
        if mask.shape != (k, self.n):
            raise ValueError(f"a patch mask is (senses, positions) = {(k, self.n)}, got "
                             f"{tuple(mask.shape)}")
        return mask

    def _logits(self, row: torch.Tensor, senses: torch.Tensor | bool | None) -> torch.Tensor:
        """row (k, n) of last-query weights, senses mask -> logits (vocab,)."""
        patched = self._mask(senses)[..., None]
        mixed = torch.where(patched, self.clean.senses, self.corrupted.senses)  # (k, n, d)
        return self.model.output_logits(einsum(row, mixed, "k j, k j d -> d"))

    def patched_logits(self, senses: torch.Tensor | bool | None = None,
                       weights: torch.Tensor | bool | None = None) -> torch.Tensor:
        """Logits (vocab,) after the last token of the corrupted prompt, with the clean sense
        vectors C(x_j)_l where `senses` (k, n) is True and the clean weights alpha[l, n-1, j]
        where `weights` is True. True patches all, None nothing. No transformer pass."""
        with torch.inference_mode():
            row = torch.where(self._mask(weights), self.clean.row, self.corrupted.row)
            return self._logits(row, senses)

    def contextualizer_row(self, layer: int, positions: list[int]) -> torch.Tensor:
        """(k, n): the last query's weights alpha~[:, n-1, :] of the corrupted run with the clean
        residual stream at the input of block `layer` (n_layer: before ln_f) at `positions`."""
        n_layer = self.model.config.n_layer
        if not 0 <= layer <= n_layer:
            raise ValueError(f"layer {layer} is outside 0..{n_layer} (0..{n_layer - 1}: the input "
                             f"of a block; {n_layer}: the contextualizer's output)")
        positions = sorted(set(positions))
        if any(not 0 <= p < self.n for p in positions):
            raise ValueError(f"positions {positions} are outside the prompt (0..{self.n - 1})")
        if not positions:
            return self.corrupted.row
        return self.contextualizer_rows(layer, [positions])[0]

    def contextualizer_rows(self, layer: int, patches: list[list[int]]) -> torch.Tensor:
        """(b, k, n): `contextualizer_row` for b patches at once (each a non-empty list of
        positions), one batch. Positions before the first patched one cannot change: their
        keys and values at every block are the corrupted run's, and only the later positions
        are recomputed, from block `layer` on."""
        ctx, swn = self.model.contextualizer, self.model.sense_weight_network
        b, start = len(patches), min(min(ps) for ps in patches)
        with torch.inference_mode():
            x = self.corrupted.residuals[layer, start:][None].repeat(b, 1, 1)  # (b, n - start, d)
            for r, ps in enumerate(patches):
                x[r, [p - start for p in ps]] = self.clean.residuals[layer, ps]
            for index in range(layer, self.model.config.n_layer):
                k, v = self.corrupted.keys_values[index]  # (1, h, n, hd)
                past = ((k[:, :, :start].expand(b, -1, -1, -1), v[:, :, :start].expand(b, -1, -1, -1))
                        if start else None)
                x, _ = ctx.h[index](x, None, past)
            queries, keys_new = swn.project(ctx.ln_f(x))  # (b, k, n - start, d/k)
            keys = torch.cat([self.corrupted.sense_keys[:, :, :start].expand(b, -1, -1, -1),
                              keys_new], dim=2)  # (b, k, n, d/k)
            allowed = causal_allowed(self.n - 1, 1, None, x.device)  # the last query sees all
            return swn(queries[:, :, -1:], keys, allowed)[:, :, 0]  # (b, k, n)

    def contextualizer_logits(self, layer: int, positions: list[int],
                              senses: torch.Tensor | bool | None = None) -> torch.Tensor:
        """Logits (vocab,) after the last token, the contextualizer patched as in
        `contextualizer_row`; the sense vectors the corrupted ones (or the clean ones where
        `senses` (k, n) is True)."""
        with torch.inference_mode():
            return self._logits(self.contextualizer_row(layer, positions), senses)

    # -- the analysis --

    def choose_words(self, target: str | int | None, foil: str | int | None) -> tuple[int, int]:
        """Token ids of the target and the foil; by default each prompt's most probable word."""
        vocab = self.model.config.vocab_size
        n_real = min(len(self.tokenizer), vocab) if self.tokenizer is not None else vocab
        ids = []
        for word, run, role in ((target, self.clean, "target"), (foil, self.corrupted, "foil")):
            if word is None:
                ids.append(int(run.logits[:n_real].argmax()))
            else:
                ids.append(single_token_id(self.tokenizer, word, vocab, role=role))
        if ids[0] == ids[1]:
            word = _tokens(self.tokenizer, ids[:1])[0]
            raise ValueError(f"the target and the foil are the same token {word!r} (the default is "
                             "each prompt's most probable next word: both prompts predict it); give "
                             "a target and a foil that differ")
        return ids[0], ids[1]

    def analyse(self, target: str | int | None = None, foil: str | int | None = None,
                contextualizer: bool = True, top: int = 5) -> Patching:
        """Both decompositions at the last position (see the module docstring)."""
        target_id, foil_id = self.choose_words(target, foil)
        clean, corrupted = self.clean, self.corrupted
        with torch.inference_mode():
            u = self.model.wte.weight[target_id] - self.model.wte.weight[foil_id]  # (d,)
            s_clean, s_corr = clean.senses @ u, corrupted.senses @ u  # (k, n): u . C(x_j)_l
            a_clean, a_corr = clean.row, corrupted.row  # (k, n)
            ld_clean = float((a_clean * s_clean).double().sum())
            ld_corr = float((a_corr * s_corr).double().sum())
            scale = ld_clean - ld_corr
            if abs(scale) <= 1e-6 * max(1.0, abs(ld_clean), abs(ld_corr)):
                target_token, foil_token = _tokens(self.tokenizer, [target_id, foil_id])
                raise ValueError(
                    f"the logit difference {target_token!r} - {foil_token!r} is the same on both prompts "
                    f"({ld_clean:.6g}): there is nothing to explain; choose another target or foil")
            d_sense, d_weight = (s_clean - s_corr).double(), (a_clean - a_corr).double()
            senses = (a_corr.double() * d_sense / scale).float().cpu()
            weights = (d_weight * s_corr.double() / scale).float().cpu()
            interaction = (d_weight * d_sense / scale).float().cpu()
            layers = by_sense = None
            if contextualizer:
                # positions before the first changed token hold the same residual stream in
                # both runs: patching them changes nothing (their effect is exactly 0)
                n_layer, first = self.model.config.n_layer, self.changed[0]
                by_sense = torch.zeros(n_layer + 1, self.n, s_corr.shape[0], dtype=torch.float64)
                for layer in range(n_layer + 1):
                    rows = self.contextualizer_rows(layer, [[p] for p in range(first, self.n)])
                    change = rows.double() - a_corr.double()  # (n - first, k, n)
                    by_sense[layer, first:] = (change * s_corr.double()).sum(-1).cpu() / scale
                layers = by_sense.sum(-1).float()
                by_sense = by_sense.float()
        vocab = self.model.config.vocab_size
        n_real = min(len(self.tokenizer), vocab) if self.tokenizer is not None else vocab
        target_token, foil_token = _tokens(self.tokenizer, [target_id, foil_id])
        return Patching(
            clean=clean, corrupted=corrupted,
            target=target_token, target_id=target_id, foil=foil_token, foil_id=foil_id,
            logit_diff_clean=ld_clean, logit_diff_corrupted=ld_corr,
            senses=senses, weights=weights, interaction=interaction, layers=layers,
            by_sense=by_sense,
            top_clean=top_tokens(self.tokenizer, clean.logits, top, n_real),
            top_corrupted=top_tokens(self.tokenizer, corrupted.logits, top, n_real))


def patch_prompts(model: Backpack, tokenizer: Tokenizer | None, clean: str | Sequence[int],
                  corrupted: str | Sequence[int],
                  target: str | int | None = None, foil: str | int | None = None,
                  contextualizer: bool = True) -> Patching:
    """Sense and contextualizer patching of `clean` into `corrupted` (same token length) at the
    last position, on the logit difference `target` - `foil` (default: each prompt's top word)."""
    return PatchPair(model, tokenizer, clean, corrupted).analyse(target, foil, contextualizer)
