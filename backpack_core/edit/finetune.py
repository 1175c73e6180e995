"""Learn an edit from a few canonical examples: sense finetuning (Hewitt et al., "Model Editing
with Canonical Examples", 2024), against full finetuning and LoRA, in one harness.

    examples = read_examples("capitals-test.jsonl", "good")   # {"prefix", "suffix"} a line
    result = sense_finetune(model, tokenizer, examples, "good", background, budget=0.01)
    result.edit_set            # add_sense edits + provenance: review, evaluate, share
    result.strength, result.general_increase   # chosen strength, its measured degradation

Losses (one JSON object a line; `suffix` is what follows `prefix`, usually with its space):
- good: raise the suffix's probability, L = -log p(suffix | prefix);
- bad: lower it, L = -log(1 - p(suffix | prefix));
- balance: even two suffixes, {"prefix", "suffix1", "suffix2"}, L = (log p1 - log p2)^2.

Sense selection (the importance score). For an example with loss L, the score of sense l of
token w is the gradient norm || dL / dC(w)_l ||_2, where C(w)_l is the sense vector itself (one
vector per token id, context-free, so the gradient sums over w's occurrences in the example).
Candidates are the tokens of the example's prefix: a sense of a suffix token can only act after
that token, inside the answer (how to spell it out, not when to give it), while the prefix words
(the country, the occupation, the subject) are what an out-of-distribution text shares. Each
example contributes its `senses_per_example` highest-scoring (token, sense) pairs; the
selection is their union.

Optimisation. Only the selected vectors move, as additive deltas C(w)_l + delta_(w,l), from zero,
with Adam on  L_examples + kl_weight * KL(p_base || p_edited)  where the KL is averaged over
the next-token distributions of background windows (a fixed cycle through `background.train`).
The deltas enter through an `Intervention` (the weights are never touched), so the learned
edit is exactly an edit set of `add_sense` edits.

Strength. Every method yields a direction in its own parameter space (sense deltas; all weights;
LoRA's merged B A), applied at strength s: x + s delta. The chosen strength is the largest of
`strengths` whose measured increase of the mean next-token loss on held-out background text
(`background.heldout`, never trained on) is at most `budget` nats; 0 (no edit) if none is.

Evaluation (`evaluate_items`, the same for every method). Items are JSONL lines {"prefix",
"suffix1", "suffix2"} (or {"prefix", "suffix"}); lp = log p(suffix | prefix), summed over the
suffix's tokens. A good item succeeds when lp(suffix1) > lp(suffix2) (suffix1 the wanted
continuation), or, without suffix2, when every suffix token is the argmax; a bad item when
lp(suffix1) < lp(suffix2) (suffix1 the unwanted one), or when the suffix is not the greedy
continuation; a balance item when |lp1 - lp2| < log 2 (the two within a factor of 2).
Targeted loss: the mean next-token loss on the items' prefix tokens (the text around the
edited words, not the suffix the edit is meant to change).

Transfer (`transfer_logits`): another model with the same tokenizer gets the edit's effect as
logits_other + (logits_edited_backpack - logits_backpack).
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from backpack_core.common.files import parse_json, read_bounded
from backpack_core.common.limits import MAX_DATA_FILE_BYTES
from backpack_core.edit.specs import AddSense, EditSet
from backpack_core.model.backpack import Backpack, Intervention, next_token_loss
from backpack_core.model.fingerprint import weights_fingerprint
from backpack_core.model.vocab import WordError, single_token_id, token_text

if TYPE_CHECKING:  # pragma: no cover
    pass

LOSSES = ("good", "bad", "balance")
METHODS = ("senses", "full", "lora")
DEFAULT_STRENGTHS = (0.125, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0, 16.0, 24.0, 32.0)
BALANCE_TOLERANCE = math.log(2.0)  # a balance item succeeds within a factor of 2
MAX_EXAMPLES = 200  # canonical examples are a few; this bounds one optimisation batch
MAX_EVAL_ITEMS = 5_000
MAX_SUFFIX_TOKENS = 32


class ExampleError(ValueError):
    """An examples or evaluation file is malformed; the message names the line."""


# ----------------------------------------------------------------------------------------------
# Examples and evaluation items
# ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Example:
    """One canonical example or evaluation item: `prefix`, then `suffix1` (and `suffix2` for a
    pair). For a good/bad example `suffix1` is its "suffix"."""

    prefix: str
    suffix1: str
    suffix2: str | None = None

    def to_dict(self) -> dict[str, str]:
        if self.suffix2 is None:
            return {"prefix": self.prefix, "suffix": self.suffix1}
        return {"prefix": self.prefix, "suffix1": self.suffix1, "suffix2": self.suffix2}


def check_loss(loss: str) -> str:
    if loss not in LOSSES:
        raise ValueError(f"unknown loss {loss!r}; choose one of {', '.join(LOSSES)}")
    return loss


def _example_from(data: Any, where: str, loss: str, evaluation: bool) -> Example:
    if not isinstance(data, dict):
        raise ExampleError(f"{where}: expected a JSON object like {{\"prefix\": ..., \"suffix\": ...}}, "
                           f"got {type(data).__name__}")
    pair = loss == "balance" or (evaluation and "suffix1" in data)
    accepted = ("prefix", "suffix1", "suffix2") if pair else ("prefix", "suffix")
    if evaluation and loss != "balance":
        accepted = ("prefix", "suffix", "suffix1", "suffix2")
    needed = ("prefix", "suffix1", "suffix2") if pair else ("prefix", "suffix")
    missing = [k for k in needed if k not in data]
    if missing:
        hint = (" (the balance loss evens two suffixes: give suffix1 and suffix2)"
                if loss == "balance" else "")
        raise ExampleError(f"{where}: missing {missing[0]!r}{hint}")
    unknown = [k for k in data if k not in accepted]
    if unknown:
        raise ExampleError(f"{where}: unknown field {unknown[0]!r}; a {loss} "
                           f"{'evaluation item' if evaluation else 'example'} has "
                           f"{', '.join(accepted)}")
    if pair and "suffix" in data:
        raise ExampleError(f"{where}: give either 'suffix' or 'suffix1' and 'suffix2', not both")
    for key in needed:
        value = data[key]
        if not isinstance(value, str):
            raise ExampleError(f"{where}: {key!r} must be a string, got {type(value).__name__}")
        if key != "prefix" and not value.strip():
            raise ExampleError(f"{where}: {key!r} is empty; give the continuation to score "
                               "(usually with its leading space, \" Paris\")")
    if not data["prefix"].strip():
        raise ExampleError(f"{where}: 'prefix' is empty; the model needs a context to continue")
    if pair:
        if data["suffix1"] == data["suffix2"]:
            raise ExampleError(f"{where}: 'suffix1' and 'suffix2' are the same text")
        return Example(data["prefix"], data["suffix1"], data["suffix2"])
    return Example(data["prefix"], data["suffix"])


def parse_examples(text: str, name: str, loss: str, evaluation: bool = False) -> list[Example]:
    """JSONL text -> examples (or evaluation items); ExampleError names `name:line`."""
    check_loss(loss)
    limit = MAX_EVAL_ITEMS if evaluation else MAX_EXAMPLES
    what = "evaluation items" if evaluation else "examples"
    out = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            data = parse_json(line)  # nesting bounded (limits.MAX_JSON_DEPTH)
        except json.JSONDecodeError as err:
            raise ExampleError(f"{name}:{lineno}: not JSON ({err.msg} at column {err.colno}); "
                               "one object a line, e.g. {\"prefix\": \"The capital of France is\", "
                               "\"suffix\": \" Paris\"}") from None
        out.append(_example_from(data, f"{name}:{lineno}", loss, evaluation))
        if len(out) > limit:
            raise ExampleError(f"{name}: more than {limit} {what}; give fewer")
    if not out:
        raise ExampleError(f"{name}: no {what} (one JSON object a line)")
    return out


def read_examples(path: str | os.PathLike, loss: str, evaluation: bool = False) -> list[Example]:
    """A JSONL file of examples (or, with evaluation=True, of evaluation items)."""
    try:  # bounded: /dev/zero or a huge file is refused, not read until MemoryError
        raw = read_bounded(path, MAX_DATA_FILE_BYTES, "an examples file", "MAX_DATA_FILE_BYTES",
                           ExampleError)
    except OSError as err:
        raise ExampleError(f"cannot read {str(path)!r}: {err.strerror or err}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ExampleError(f"{path}: not UTF-8 text") from None
    return parse_examples(text, str(path), loss, evaluation)


def examples_sha256(examples: Sequence[Example]) -> str:
    """sha256 of the examples as canonical JSON lines (what was learned from)."""
    text = "\n".join(json.dumps(e.to_dict(), sort_keys=True, ensure_ascii=False) for e in examples)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


# ----------------------------------------------------------------------------------------------
# Scoring suffixes
# ----------------------------------------------------------------------------------------------

Logits = Callable[[torch.Tensor], torch.Tensor]  # input ids (b, s) -> logits (b, s, V)


@dataclass
class Batch:
    """Prefix + suffix sequences, right-padded (causal: padding never affects earlier positions).

    ids (n, s); suffix_mask (n, s): True where the token at position i + 1 is a suffix token,
    i.e. where logits[i] predict the suffix; prefix_mask (n, s): True where logits[i] predict a
    prefix token; targets (n, s): the next token (0 where unused)."""

    ids: torch.Tensor
    targets: torch.Tensor
    suffix_mask: torch.Tensor
    prefix_mask: torch.Tensor


def encode_pairs(tokenizer, pairs: Sequence[tuple[str, str]], n_positions: int,
                 device: torch.device | str = "cpu") -> Batch:
    """(prefix, suffix) texts -> one right-padded Batch. The prefix and the suffix are encoded
    separately, so the suffix's tokens are exactly those of `suffix`."""
    rows = []
    for prefix, suffix in pairs:
        p, s = tokenizer.encode(prefix), tokenizer.encode(suffix)
        if len(s) > MAX_SUFFIX_TOKENS:
            raise ExampleError(f"the suffix {suffix[:40]!r} is {len(s)} tokens; at most "
                               f"{MAX_SUFFIX_TOKENS}")
        if len(p) + len(s) > n_positions:
            raise ExampleError(f"the example {prefix[:40]!r}... is {len(p) + len(s)} tokens; the "
                               f"model reads at most {n_positions}")
        rows.append((p, s))
    width = max(len(p) + len(s) for p, s in rows)
    n = len(rows)
    ids = torch.zeros(n, width, dtype=torch.long)
    targets = torch.zeros(n, width, dtype=torch.long)
    suffix_mask = torch.zeros(n, width, dtype=torch.bool)
    prefix_mask = torch.zeros(n, width, dtype=torch.bool)
    for r, (p, s) in enumerate(rows):
        seq = p + s
        ids[r, : len(seq)] = torch.tensor(seq)
        targets[r, : len(seq) - 1] = torch.tensor(seq[1:])
        prefix_mask[r, : len(p) - 1] = True
        suffix_mask[r, len(p) - 1: len(seq) - 1] = True
    return Batch(ids.to(device), targets.to(device), suffix_mask.to(device), prefix_mask.to(device))


def suffix_logprobs(logits: torch.Tensor, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """logits (n, s, V) -> (log p(suffix | prefix) (n,), suffix is the greedy continuation (n,))."""
    logp = torch.log_softmax(logits.float(), -1)
    token_lp = logp.gather(-1, batch.targets[..., None])[..., 0]  # (n, s)
    lp = (token_lp * batch.suffix_mask).sum(-1)
    hit = (logp.argmax(-1) == batch.targets) | ~batch.suffix_mask
    return lp, hit.all(-1)


def examples_loss(logits_fn: Logits, batches: tuple[Batch, Batch | None], loss: str) -> torch.Tensor:
    """The canonical examples' loss (a scalar), as defined in the module docstring."""
    first, second = batches
    lp1, _ = suffix_logprobs(logits_fn(first.ids), first)
    if loss == "good":
        return -lp1.mean()
    if loss == "bad":  # -log(1 - p), with p = exp(lp) < 1
        return -torch.log(-torch.expm1(lp1.clamp(max=-1e-6))).mean()
    lp2, _ = suffix_logprobs(logits_fn(second.ids), second)
    return ((lp1 - lp2) ** 2).mean()


def example_batches(tokenizer, examples: Sequence[Example], n_positions: int, device
                    ) -> tuple[Batch, Batch | None]:
    first = encode_pairs(tokenizer, [(e.prefix, e.suffix1) for e in examples], n_positions, device)
    if any(e.suffix2 is None for e in examples):
        return first, None
    return first, encode_pairs(tokenizer, [(e.prefix, e.suffix2) for e in examples], n_positions,
                               device)


# ----------------------------------------------------------------------------------------------
# Sense deltas: the trainable form of an add_sense edit set
# ----------------------------------------------------------------------------------------------

class SenseDeltas(Intervention):
    """Additive deltas on chosen (token, sense) vectors: C(w)_l + strength * delta[w, l].

    token_ids (n,) distinct; mask (n, k) bool: the selected senses of each; delta (n, k, d), a
    leaf tensor (trainable), zero outside the mask in effect (it is multiplied by the mask)."""

    def __init__(self, token_ids: Sequence[int], mask: torch.Tensor, d: int, vocab_size: int,
                 device=None, strength: float = 1.0):
        device = device or mask.device
        self.token_ids = torch.tensor(list(token_ids), dtype=torch.long, device=device)
        self.mask = mask.to(device)
        n, k = self.mask.shape
        self.delta = torch.zeros(n, k, d, device=device, requires_grad=True)
        self.lookup = torch.full((vocab_size,), -1, dtype=torch.long, device=device)
        self.lookup[self.token_ids] = torch.arange(n, device=device)
        self.strength = float(strength)

    def masked_delta(self) -> torch.Tensor:
        """(n, k, d): the delta, zero at unselected senses."""
        return self.delta * self.mask[..., None]

    def on_senses(self, senses, token_ids, positions):
        """senses (b, k, s, d) -> senses + strength * delta of each selected token."""
        index = self.lookup[token_ids]  # (b, s): row of delta, -1 if not selected
        if not bool((index >= 0).any()):
            return senses
        table = torch.cat([self.masked_delta(), self.masked_delta().new_zeros(1, *self.delta.shape[1:])])
        added = table[index]  # (b, s, k, d); -1 picks the zero row
        return senses + self.strength * added.permute(0, 2, 1, 3).to(senses.dtype)

    def at(self, strength: float) -> SenseDeltas:
        """The same deltas (shared, not copied) at another strength."""
        other = copy.copy(self)
        other.strength = float(strength)
        return other


def _float32_list(values: torch.Tensor) -> list:
    """float32 tensor -> nested lists of the shortest decimals that read back as the same
    float32 (JSON stays short, and the edit set gives bit-identical senses)."""
    import numpy as np

    array = values.detach().to("cpu", torch.float32).numpy()
    return [[float(str(np.float32(v))) for v in row] for row in array]


def _word_of(tokenizer, token_id: int, vocab_size: int) -> str | int:
    """The token's text if it reads back as this one token, else its id."""
    try:
        text = token_text(tokenizer, token_id)
        if single_token_id(tokenizer, text, vocab_size) == token_id:
            return text
    except (WordError, ValueError):
        pass
    return token_id


def deltas_to_edit_set(deltas: SenseDeltas, tokenizer, vocab_size: int, strength: float = 1.0,
                       note: str | None = None, **meta) -> EditSet:
    """One add_sense edit per selected token, its rows the selected senses' deltas x strength."""
    edits = []
    table = deltas.masked_delta().detach() * strength
    for row, token_id in enumerate(deltas.token_ids.tolist()):
        senses = deltas.mask[row].nonzero().flatten().tolist()
        if not senses:
            continue
        edits.append(AddSense(_word_of(tokenizer, token_id, vocab_size), senses,
                              _float32_list(table[row, senses]), note=note))
    return EditSet(edits, **meta)


# ----------------------------------------------------------------------------------------------
# Sense selection
# ----------------------------------------------------------------------------------------------

@dataclass
class SenseChoice:
    """A selected (token, sense): its importance score in the example that chose it."""

    token_id: int
    token: str
    sense: int
    score: float
    example: int


def sense_importance(model: Backpack, tokenizer, example: Example, loss: str
                     ) -> list[tuple[int, int, float]]:
    """(token id, sense, ||dL/dC(token)_sense||) for every sense of every distinct token of one
    example's prefix, highest score first."""
    device = model.wte.weight.device
    batches = example_batches(tokenizer, [example], model.config.n_positions, device)
    prefix_length = int(batches[0].suffix_mask[0].nonzero().min()) + 1
    candidates = sorted(set(batches[0].ids[0, :prefix_length].tolist()))
    k = model.config.num_senses
    probe = SenseDeltas(candidates, torch.ones(len(candidates), k, dtype=torch.bool, device=device),
                        model.config.n_embd, model.config.vocab_size, device)
    value = examples_loss(lambda x: model(x, intervention=probe).logits, batches, loss)
    (grad,) = torch.autograd.grad(value, probe.delta)  # (n, k, d) = dL/dC(w)_l
    norms = grad.norm(dim=-1)  # (n, k)
    scored = [(candidates[i], l, float(norms[i, l])) for i in range(len(candidates)) for l in range(k)]
    return sorted(scored, key=lambda t: (-t[2], t[0], t[1]))


def select_senses(model: Backpack, tokenizer, examples: Sequence[Example], loss: str,
                  per_example: int) -> list[SenseChoice]:
    """The union over examples of each example's `per_example` top (token, sense) pairs."""
    if per_example < 1:
        raise ValueError(f"senses per example must be >= 1, got {per_example}")
    chosen: dict[tuple[int, int], SenseChoice] = {}
    for i, example in enumerate(examples):
        for token_id, sense, score in sense_importance(model, tokenizer, example, loss)[:per_example]:
            if (token_id, sense) not in chosen or chosen[(token_id, sense)].score < score:
                chosen[(token_id, sense)] = SenseChoice(token_id, token_text(tokenizer, token_id),
                                                        sense, score, i)
    return sorted(chosen.values(), key=lambda c: (-c.score, c.token_id, c.sense))


# ----------------------------------------------------------------------------------------------
# Background text and the penalty
# ----------------------------------------------------------------------------------------------

@dataclass
class Background:
    """Background text as windows: `train` (n, s) for the KL penalty, `heldout` (m, s) for
    measuring the general loss; `name` says where they came from."""

    train: torch.Tensor
    heldout: torch.Tensor
    name: str = "background"

    @classmethod
    def split(cls, token_ids: torch.Tensor, seq_len: int, heldout_windows: int,
              train_windows: int, name: str = "background") -> Background:
        """A token stream -> non-overlapping windows: the first `train_windows` for the penalty,
        the last `heldout_windows` held out (they never overlap)."""
        n = token_ids.numel() // seq_len
        if n < 2:
            raise ValueError(f"the background text {name!r} has {token_ids.numel()} tokens; it needs "
                             f"at least two windows of {seq_len}")
        heldout = min(heldout_windows, n // 2)
        train = min(train_windows, n - heldout)
        windows = token_ids[: n * seq_len].view(n, seq_len)
        return cls(windows[:train].clone(), windows[n - heldout:].clone(), name)


@torch.no_grad()
def mean_loss(logits_fn: Logits, windows: torch.Tensor, batch_size: int = 8) -> float:
    """Mean next-token loss (nats) over windows (n, s): every position with a next token."""
    total, count = 0.0, 0
    for start in range(0, windows.shape[0], batch_size):
        ids = windows[start: start + batch_size]
        losses = next_token_loss(logits_fn(ids), ids, reduction="none")[:, :-1]
        total += float(losses.double().sum())
        count += losses.numel()
    return total / count


def kl_to_base(logits: torch.Tensor, base_logits: torch.Tensor) -> torch.Tensor:
    """Mean over positions of KL(p_base || p): logits (b, s, V)."""
    base = torch.log_softmax(base_logits.float(), -1)
    return F.kl_div(torch.log_softmax(logits.float(), -1), base, log_target=True,
                    reduction="none").sum(-1).mean()


# ----------------------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------------------

@dataclass
class TrainConfig:
    """How a method is trained (the same for all three unless a field says otherwise)."""

    steps: int = 60
    lr: float = 1e-2  # Adam; sense deltas
    full_lr: float = 1e-4  # full finetuning
    lora_lr: float = 1e-3
    lora_rank: int = 4
    kl_weight: float = 1.0
    background_batch: int = 4
    senses_per_example: int = 10
    strengths: tuple[float, ...] = DEFAULT_STRENGTHS
    seed: int = 0

    def check(self) -> None:
        if self.steps < 1 or self.steps > 10_000:
            raise ValueError(f"steps must be in 1..10000, got {self.steps}")
        for name in ("lr", "full_lr", "lora_lr"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a positive number, got {value}")
        if not (math.isfinite(self.kl_weight) and self.kl_weight >= 0):
            raise ValueError(f"the KL weight must be >= 0, got {self.kl_weight}")
        if self.lora_rank < 1 or self.background_batch < 1 or self.senses_per_example < 1:
            raise ValueError("lora rank, background batch and senses per example must be >= 1")
        if not self.strengths or any(not (math.isfinite(s) and s > 0) for s in self.strengths):
            raise ValueError(f"strengths must be positive numbers, got {list(self.strengths)}")


def _optimise(params: list[torch.Tensor], lr: float, forward: Logits, base: Logits,
              batches, loss: str, background: torch.Tensor, config: TrainConfig,
              progress: Callable[[int, int], None] | None = None) -> list[float]:
    """Adam on `params` for config.steps steps of examples loss + kl_weight * KL on a cycle of
    background windows. Returns the objective at each step."""
    optimiser = torch.optim.Adam(params, lr=lr)
    history = []
    b = config.background_batch
    for step in range(config.steps):
        objective = examples_loss(forward, batches, loss)
        if config.kl_weight > 0 and background.shape[0]:
            start = (step * b) % background.shape[0]
            window = background[start: start + b]
            with torch.no_grad():
                base_logits = base(window)
            objective = objective + config.kl_weight * kl_to_base(forward(window), base_logits)
        grads = torch.autograd.grad(objective, params)  # only these: no .grad on the model
        for p, g in zip(params, grads):
            p.grad = g
        optimiser.step()
        history.append(objective.item())
        if progress is not None:
            progress(step + 1, config.steps)
    return history


def train_sense_deltas(model: Backpack, tokenizer, examples: Sequence[Example], loss: str,
                       choices: Sequence[SenseChoice], background: Background,
                       config: TrainConfig, progress=None) -> tuple[SenseDeltas, list[float]]:
    """Optimise deltas of the chosen (token, sense) vectors only; the model is not changed."""
    device = model.wte.weight.device
    token_ids = sorted({c.token_id for c in choices})
    row = {t: i for i, t in enumerate(token_ids)}
    mask = torch.zeros(len(token_ids), model.config.num_senses, dtype=torch.bool, device=device)
    for c in choices:
        mask[row[c.token_id], c.sense] = True
    deltas = SenseDeltas(token_ids, mask, model.config.n_embd, model.config.vocab_size, device)
    batches = example_batches(tokenizer, examples, model.config.n_positions, device)
    torch.manual_seed(config.seed)
    history = _optimise([deltas.delta], config.lr,
                        lambda x: model(x, intervention=deltas).logits,
                        lambda x: model(x, intervention=Intervention()).logits,
                        batches, loss, background.train.to(device), config, progress)
    return deltas, history


def _frozen_copy(model: Backpack) -> Backpack:
    clone = copy.deepcopy(model).eval()
    for p in clone.parameters():
        p.requires_grad_(False)
    return clone


def train_full(model: Backpack, tokenizer, examples, loss, background: Background,
               config: TrainConfig, progress=None) -> tuple[dict[str, torch.Tensor], list[float]]:
    """Full finetuning of a copy: returns the weight change {name: delta} and the objective."""
    device = model.wte.weight.device
    tuned = copy.deepcopy(model).eval()  # eval: no dropout, as in the other methods
    for p in tuned.parameters():
        p.requires_grad_(True)
    batches = example_batches(tokenizer, examples, model.config.n_positions, device)
    torch.manual_seed(config.seed)
    history = _optimise([p for p in tuned.parameters()], config.full_lr,
                        lambda x: tuned(x, intervention=Intervention()).logits,
                        lambda x: model(x, intervention=Intervention()).logits,
                        batches, loss, background.train.to(device), config, progress)
    base = dict(model.named_parameters())
    return {n: (p.detach() - base[n].detach()) for n, p in tuned.named_parameters()}, history


def linear_module_names(model: torch.nn.Module) -> list[str]:
    """Names of every nn.Linear in the model: LoRA's targets."""
    return [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]


def train_lora(model: Backpack, tokenizer, examples, loss, background: Background,
               config: TrainConfig, progress=None) -> tuple[dict[str, torch.Tensor], list[float]]:
    """LoRA (peft) on every linear layer of a copy (rank config.lora_rank, alpha = 2 x rank, no
    dropout): returns the merged weight change {weight name: scaling * B A} and the objective.

    peft's `inject_adapter_in_model` wraps the plain torch module the harness holds. (peft's
    `get_peft_model` also wraps `model.hf.BackpackLM`, the same linear layers: forward, backward
    and `merge_and_unload` work; the Backpack inside is what the other methods run.)"""
    try:
        from peft import LoraConfig, inject_adapter_in_model
    except ImportError as err:
        raise ImportError("the LoRA baseline needs peft: pip install 'peft>=0.13,<1'") from err
    device = model.wte.weight.device
    targets = linear_module_names(model)
    lora_config = LoraConfig(r=config.lora_rank, lora_alpha=2 * config.lora_rank, lora_dropout=0.0,
                             target_modules=targets, bias="none")
    torch.manual_seed(config.seed)
    wrapped = inject_adapter_in_model(lora_config, _frozen_copy(model)).eval()
    params = [p for n, p in wrapped.named_parameters() if "lora_" in n]
    for p in params:
        p.requires_grad_(True)
    batches = example_batches(tokenizer, examples, model.config.n_positions, device)
    history = _optimise(params, config.lora_lr,
                        lambda x: wrapped(x, intervention=Intervention()).logits,
                        lambda x: model(x, intervention=Intervention()).logits,
                        batches, loss, background.train.to(device), config, progress)
    change = {}
    for name in targets:
        module = wrapped.get_submodule(name)
        with torch.no_grad():
            change[f"{name}.weight"] = module.get_delta_weight("default").detach().clone()
    return change, history


class WeightDelta:
    """A copy of the model whose weights are base + strength * delta (full FT, merged LoRA)."""

    def __init__(self, model: Backpack, change: dict[str, torch.Tensor]):
        self.base = model
        self.copy = _frozen_copy(model)
        self.change = change
        self.strength = None

    def logits_at(self, strength: float) -> Logits:
        if self.strength != strength:
            params = dict(self.copy.named_parameters())
            base = dict(self.base.named_parameters())
            with torch.no_grad():
                for name, delta in self.change.items():
                    params[name].copy_(base[name] + strength * delta)
            self.strength = strength
        return lambda x: self.copy(x, intervention=Intervention()).logits


# ----------------------------------------------------------------------------------------------
# Evaluation, strength, transfer
# ----------------------------------------------------------------------------------------------

def transfer_logits(other_logits: torch.Tensor, backpack_logits: torch.Tensor,
                    edited_logits: torch.Tensor) -> torch.Tensor:
    """The edit's effect on another model with the same tokenizer: logits_other +
    (logits_edited_backpack - logits_backpack), all (..., V) over the same tokens."""
    if not (other_logits.shape == backpack_logits.shape == edited_logits.shape):
        raise ValueError(f"logits must have one shape; got {tuple(other_logits.shape)}, "
                         f"{tuple(backpack_logits.shape)}, {tuple(edited_logits.shape)}")
    return other_logits + (edited_logits - backpack_logits)


def transfer_fn(other: Logits, backpack: Logits, edited: Logits) -> Logits:
    return lambda x: transfer_logits(other(x), backpack(x), edited(x))


@dataclass
class Scores:
    """How a model does on evaluation items: success rate, mean margin (good: lp1 - lp2, bad:
    lp2 - lp1, balance: -|lp1 - lp2|; NaN for single-suffix items) and the targeted loss."""

    success: float
    margin: float
    targeted_loss: float
    n: int


@torch.no_grad()
def evaluate_items(logits_fn: Logits, tokenizer, items: Sequence[Example], loss: str,
                   n_positions: int, device="cpu", batch_size: int = 32) -> Scores:
    """Success rate, margin and targeted loss of `items` (module docstring)."""
    successes, margins, prefix_nll, prefix_count = [], [], 0.0, 0
    for start in range(0, len(items), batch_size):
        chunk = items[start: start + batch_size]
        first = encode_pairs(tokenizer, [(e.prefix, e.suffix1) for e in chunk], n_positions, device)
        logits = logits_fn(first.ids)
        lp1, greedy1 = suffix_logprobs(logits, first)
        nll = -torch.log_softmax(logits.float(), -1).gather(-1, first.targets[..., None])[..., 0]
        prefix_nll += float((nll * first.prefix_mask).sum())
        prefix_count += int(first.prefix_mask.sum())
        pairs = [e for e in chunk if e.suffix2 is not None]
        lp2 = torch.full_like(lp1, float("nan"))
        if pairs:
            idx = [i for i, e in enumerate(chunk) if e.suffix2 is not None]
            second = encode_pairs(tokenizer, [(e.prefix, e.suffix2) for e in pairs], n_positions, device)
            lp2[idx] = suffix_logprobs(logits_fn(second.ids), second)[0]
        for i, e in enumerate(chunk):
            a, b = float(lp1[i]), float(lp2[i])
            if e.suffix2 is None:
                ok = bool(greedy1[i]) if loss == "good" else not bool(greedy1[i])
                margin = float("nan")
            elif loss == "good":
                ok, margin = a > b, a - b
            elif loss == "bad":
                ok, margin = a < b, b - a
            else:
                ok, margin = abs(a - b) < BALANCE_TOLERANCE, -abs(a - b)
            successes.append(ok)
            margins.append(margin)
    finite = [m for m in margins if not math.isnan(m)]
    return Scores(sum(successes) / len(successes), sum(finite) / len(finite) if finite else float("nan"),
                  prefix_nll / max(prefix_count, 1), len(successes))


@dataclass
class StrengthPoint:
    strength: float
    general_increase: float


def choose_strength(general_loss_at: Callable[[float], float], base_loss: float, budget: float,
                    strengths: Sequence[float]) -> tuple[float, float, list[StrengthPoint]]:
    """The largest strength whose measured general loss increase is <= budget (0.0, increase
    0.0, if none is), and every point measured."""
    if not (math.isfinite(budget) and budget >= 0):
        raise ValueError(f"the budget must be a number of nats >= 0, got {budget}")
    sweep = [StrengthPoint(float(s), general_loss_at(float(s)) - base_loss)
             for s in sorted(set(strengths))]
    within = [p for p in sweep if p.general_increase <= budget]
    if not within:
        return 0.0, 0.0, sweep
    best = max(within, key=lambda p: p.strength)
    return best.strength, best.general_increase, sweep


# ----------------------------------------------------------------------------------------------
# The results
# ----------------------------------------------------------------------------------------------

@dataclass
class MethodResult:
    """One method at its chosen strength, measured against the unedited model."""

    method: str
    strength: float
    general_increase: float
    targeted_increase: float | None
    before: Scores | None
    after: Scores | None
    trained_parameters: int
    sweep: list[StrengthPoint]
    history: list[float] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["history"] = [self.history[0], self.history[-1]] if self.history else []
        return out


@dataclass
class SenseFinetuneResult:
    """Sense finetuning: the edit set (at the chosen strength), the chosen senses, the
    measurements, and the trained deltas (at strength 1) for sweeps."""

    edit_set: EditSet
    choices: list[SenseChoice]
    result: MethodResult
    deltas: SenseDeltas
    base_general_loss: float

    def to_dict(self) -> dict[str, Any]:
        return {"edit_set": self.edit_set.to_dict(), "choices": [asdict(c) for c in self.choices],
                "result": self.result.to_dict(), "base_general_loss": self.base_general_loss}


def _with_scores(method: str, strength: float, increase: float, sweep, history, n_params,
                 logits_fn: Logits | None, base_scores: Scores | None, tokenizer, items, loss,
                 n_positions, device) -> MethodResult:
    after = targeted = None
    if items is not None and logits_fn is not None:
        after = evaluate_items(logits_fn, tokenizer, items, loss, n_positions, device)
        targeted = after.targeted_loss - base_scores.targeted_loss
    return MethodResult(method, strength, increase, targeted, base_scores, after, n_params, sweep,
                        history)


def sense_finetune(model: Backpack, tokenizer, examples: Sequence[Example], loss: str,
                   background: Background, budget: float, config: TrainConfig | None = None,
                   items: Sequence[Example] | None = None, progress=None) -> SenseFinetuneResult:
    """Select senses by importance, train their deltas, choose the strength within `budget`;
    the edit set carries provenance. With `items`, success and targeted loss are measured too."""
    config = config or TrainConfig()
    config.check()
    check_loss(loss)
    if not model.config.is_backpack:
        raise ValueError("sense finetuning needs a Backpack; this model is a Transformer twin")
    device = model.wte.weight.device
    choices = select_senses(model, tokenizer, examples, loss, config.senses_per_example)
    deltas, history = train_sense_deltas(model, tokenizer, examples, loss, choices, background,
                                         config, progress)
    heldout = background.heldout.to(device)
    base_general = mean_loss(lambda x: model(x, intervention=Intervention()).logits, heldout)
    strength, increase, sweep = choose_strength(
        lambda s: mean_loss(lambda x: model(x, intervention=deltas.at(s)).logits, heldout),
        base_general, budget, config.strengths)
    base_scores = (evaluate_items(lambda x: model(x, intervention=Intervention()).logits, tokenizer,
                                  items, loss, model.config.n_positions, device)
                   if items is not None else None)
    result = _with_scores("senses", strength, increase, sweep, history, int(deltas.mask.sum()) *
                          model.config.n_embd,
                          (lambda x: model(x, intervention=deltas.at(strength)).logits),
                          base_scores, tokenizer, items, loss, model.config.n_positions, device)
    digest = examples_sha256(examples)
    provenance = {
        "method": "sense finetuning (Hewitt et al. 2024)", "loss": loss,
        "examples_sha256": digest, "examples": len(examples),
        "base_model": weights_fingerprint(model),  # as an edit pack records it
        "budget_nats": budget, "strength": strength,
        "general_loss_increase_nats": increase, "background": background.name,
        "background_heldout_tokens": int(background.heldout.numel()),
        "senses_per_example": config.senses_per_example, "steps": config.steps, "lr": config.lr,
        "kl_weight": config.kl_weight, "seed": config.seed,
        "importance": "||dL/dC(w)_l||_2 per (token, sense), top senses_per_example per example",
    }
    edit_set = deltas_to_edit_set(deltas, tokenizer, model.config.vocab_size, strength,
                                  note=f"learned: sense finetuning on examples {digest[:12]}",
                                  name=f"sense finetuning ({len(examples)} {loss} examples)",
                                  description=f"learned from {len(examples)} canonical examples at "
                                              f"strength {strength:g}, general loss +{increase:.4f} "
                                              f"nats (budget {budget:g})",
                                  provenance=provenance)
    return SenseFinetuneResult(edit_set, choices, result, deltas, base_general)


def weight_finetune(model: Backpack, tokenizer, examples: Sequence[Example], loss: str,
                    background: Background, budget: float, method: str,
                    config: TrainConfig | None = None, items: Sequence[Example] | None = None,
                    progress=None) -> MethodResult:
    """The baselines ("full" or "lora") in the same harness: train, choose the strength within
    `budget` on held-out background text, measure."""
    config = config or TrainConfig()
    config.check()
    check_loss(loss)
    device = model.wte.weight.device
    if method == "full":
        change, history = train_full(model, tokenizer, examples, loss, background, config, progress)
        n_params = sum(p.numel() for p in model.parameters())
    elif method == "lora":
        change, history = train_lora(model, tokenizer, examples, loss, background, config, progress)
        n_params = sum(config.lora_rank * (d.shape[0] + d.shape[1]) for d in change.values())
    else:
        raise ValueError(f"unknown method {method!r}; choose full or lora")
    tuned = WeightDelta(model, change)
    heldout = background.heldout.to(device)
    base_fn = lambda x: model(x, intervention=Intervention()).logits  # noqa: E731
    base_general = mean_loss(base_fn, heldout)
    strength, increase, sweep = choose_strength(lambda s: mean_loss(tuned.logits_at(s), heldout),
                                                base_general, budget, config.strengths)
    base_scores = (evaluate_items(base_fn, tokenizer, items, loss, model.config.n_positions, device)
                   if items is not None else None)
    return _with_scores(method, strength, increase, sweep, history, n_params,
                        tuned.logits_at(strength), base_scores, tokenizer, items, loss,
                        model.config.n_positions, device)


def transfer_result(twin: Backpack, model: Backpack, deltas: SenseDeltas, tokenizer,
                    background: Background, budget: float, loss: str,
                    strengths: Sequence[float], items: Sequence[Example] | None = None
                    ) -> MethodResult:
    """The sense-finetuned edit carried to `twin` (same tokenizer) by `transfer_logits`, its
    strength chosen by the same rule on the twin's own general loss."""
    if twin.config.vocab_size != model.config.vocab_size:
        raise ValueError(f"the other model has {twin.config.vocab_size} tokens, the Backpack "
                         f"{model.config.vocab_size}: transfer needs the same tokenizer")
    device = model.wte.weight.device
    plain = lambda m: (lambda x: m(x).logits)  # noqa: E731
    backpack = lambda x: model(x, intervention=Intervention()).logits  # noqa: E731
    at = lambda s: transfer_fn(plain(twin), backpack,  # noqa: E731
                               lambda x: model(x, intervention=deltas.at(s)).logits)
    heldout = background.heldout.to(device)
    base_general = mean_loss(plain(twin), heldout)
    strength, increase, sweep = choose_strength(lambda s: mean_loss(at(s), heldout), base_general,
                                                budget, strengths)
    base_scores = (evaluate_items(plain(twin), tokenizer, items, loss, model.config.n_positions,
                                  device) if items is not None else None)
    return _with_scores("transfer to twin", strength, increase, sweep, [], 0, at(strength),
                        base_scores, tokenizer, items, loss, model.config.n_positions, device)


@dataclass
class Comparison:
    """Sense finetuning and the baselines on the same examples, background, budget and items."""

    sense: SenseFinetuneResult
    rows: list[MethodResult]

    def to_dict(self) -> dict[str, Any]:
        return {"sense_finetuning": self.sense.to_dict(), "rows": [r.to_dict() for r in self.rows]}


def compare_methods(model: Backpack, tokenizer, examples: Sequence[Example], loss: str,
                    background: Background, budget: float, items: Sequence[Example] | None,
                    config: TrainConfig | None = None, baselines: Sequence[str] = ("full", "lora"),
                    twin: Backpack | None = None, progress=None) -> Comparison:
    """Sense finetuning, then each baseline and (with `twin`) the transfer of the sense edit to
    the twin, all measured the same way at the same budget."""
    config = config or TrainConfig()
    for method in baselines:
        if method not in ("full", "lora"):
            raise ValueError(f"unknown baseline {method!r}; choose from full, lora")
    sense = sense_finetune(model, tokenizer, examples, loss, background, budget, config, items,
                           progress)
    rows = [sense.result]
    for method in baselines:
        rows.append(weight_finetune(model, tokenizer, examples, loss, background, budget, method,
                                    config, items, progress))
    if twin is not None:
        rows.append(transfer_result(twin, model, sense.deltas, tokenizer, background, budget, loss,
                                    config.strengths, items))
    return Comparison(sense, rows)


__all__ = ["BALANCE_TOLERANCE", "Background", "Comparison", "DEFAULT_STRENGTHS", "Example",
           "ExampleError", "compare_methods",
           "LOSSES", "METHODS", "MethodResult", "Scores", "SenseChoice", "SenseDeltas",
           "SenseFinetuneResult", "TrainConfig", "WeightDelta", "choose_strength",
           "deltas_to_edit_set", "encode_pairs", "evaluate_items", "examples_loss",
           "examples_sha256", "linear_module_names", "mean_loss", "parse_examples",
           "read_examples", "select_senses", "sense_finetune", "sense_importance",
           "suffix_logprobs", "train_full", "train_lora", "train_sense_deltas", "transfer_logits",
           "transfer_result", "weight_finetune"]
