"""An edit set measured over a dataset: its blast radius, its side effects on the loss, and its
success on target prompts, for a sweep of strengths, from one pass of the model.

    corpus = read_corpus("ptb", tokenizer, max_tokens=20_000)
    result = evaluate_edits(model, tokenizer, edits, corpus, prompts=read_prompts("p.jsonl"),
                            strengths=[0, 0.5, 1, 2])
    result.blast_radius          # corpus offsets whose prediction the edit set changes
    result.sweep[i].loss_change  # {"all", "inside", "outside"} per strength

Why it is cheap (reference doc, "Consequences"): logits_i = E o_i with
o_i = sum_l sum_j alpha[l, i, j] C(x_j)_l, alpha does not depend on the senses and the senses do
not depend on context. The model runs ONCE per window, with its contextualization
`alpha` (b, k, s, s) and `senses` (b, k, s, d) kept while the window is evaluated under every
strength. An edit changes the terms alpha[l, i, j] C(x_j)_l of a few source columns J (the
occurrences of its word, or the sources whose weights it rewrites), so under the edit

    o'_i = o_i + sum_l sum_{j in J} (alpha'[l, i, j] C'(x_j)_l - alpha[l, i, j] C(x_j)_l)

and logits'_i = logits_i + E (o'_i - o_i), computed only at the positions i of the blast radius.
Memory is bounded by one batch of windows: nothing of a window outlives its evaluation but
per-position sums and the radius offsets.

Blast radius (definition). Position i (a query position of a window; reported as its corpus
offset, window start + i) is in the blast radius of an edit set when the edit set changes at
least one term of its weighted sum: some sense l and source j <= i of its own window with
alpha'[l, i, j] C'(x_j)_l != alpha[l, i, j] C(x_j)_l, read off the cached weights as
  (alpha' != alpha and C(x_j)_l != 0)  or  (C' != C and (alpha' != 0 or alpha != 0)).
Outside it every term is unchanged, so o_i, the logits and the loss are exactly unchanged
(`EditEvaluation` reports that change, 0.0, as `loss_change["outside"]`; the tests check it
against full forward passes). Per kind this is:
- sense edits (ablate_sense, scale_sense, replace_sense, knowledge_edit): positions i whose
  window holds the word at some j <= i (at the listed `positions` only, if given; these are
  positions inside each window), where an edited sense of it has nonzero weight
  alpha[l, i, j]; an edit that leaves the vector as it is (factor 1) has no radius;
- scale_contextualization: the same positions (its word's occurrences at j <= i), for the listed
  senses; with `renormalize` every row of those senses is divided by its sum, which changes
  the low bits of most rows (also those without the word): the radius is then nearly every
  position;
- replace_contextualization: query positions with a causal entry whose weight it changes.
Windows are independent contexts (`Corpus.windows`), so a word never reaches past its window.
Precision: the radius is read off the weights alpha as the model computes them, in its dtype:
float32 by default, where a weight below ~7e-46 (half the smallest subnormal) underflows to
exactly 0. Such a term cannot change, so its position can fall outside the radius although
j <= i (rightly for the float32 logits, which do not move there); and a tiny weight scaled by
1 + s (f - 1) may round back to itself, so the radius can differ by strength (on the tiny test
model with sharp weights: 90 positions at strength 0.001, 93 at 1, 115 in float64). A float64
model has its radius in float64 (underflow below ~2.5e-324), a bfloat16 one in bfloat16 (~5e-41).
"inside" is a mean over the radius, so it depends on this too; "all" does not.

Loss. Next-token NLL (nats) at every position that has a next token inside its window (the
last position of a window predicts nothing that is scored, as in `model.evaluation.perplexity`).
"all" averages over every scored position, "inside" / "outside" over the scored positions
inside / outside the blast radius of that strength.

Strength. Strength s scales what each edit changes: every edit, in order, moves the quantity it
edits linearly from its value before (s = 0: a no-op) to its value after (s = 1: the edit set
as given), and beyond for s > 1:  x_s = x + s (edit(x) - x).  For sense edits x is the sense
vector: scale_sense by f is a scaling by 1 + s (f - 1), ablate_sense a scaling by 1 - s,
knowledge_edit moves s times the logit. For contextualization edits x is the weight alpha,
clamped at 0 (a weight is never negative): scale_contextualization by f scales by
max(0, 1 + s (f - 1)). Strength 1 is always evaluated: the reported blast radius is its own.

Target prompts (JSONL, one {"prompt", "target", "foil"?} a line; target and foil single tokens):
a prompt succeeds when the next-token log-probability of `target` after the prompt is higher
than that of `foil`, or, without a foil, when no real token of the vocabulary has a higher
logit than `target` (it is the argmax).
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from backpack_core.common.files import parse_json, read_prefix
from backpack_core.common.limits import check_batch_windows
from backpack_core.edit.specs import CompiledEdits, EditSet, as_edit_set
from backpack_core.model.backpack import Backpack, Intervention, next_token_loss
from backpack_core.model.vocab import WordError, single_token_id

if TYPE_CHECKING:  # pragma: no cover
    from backpack_core.common.corpus import Corpus
    from backpack_core.model.tokenizer import Tokenizer

DEFAULT_STRENGTHS = (0.0, 0.5, 1.0, 2.0)
MAX_STRENGTHS = 50
MAX_ABS_STRENGTH = 1e6  # past it float32 logits overflow (NaN losses) for some edits
MAX_PROMPTS = 10_000
MAX_PROMPTS_BYTES = 10_000_000  # a prompts file (JSONL), checked before reading it


class PromptError(ValueError):
    """A prompts file (JSONL) is malformed; the message names the line and what is accepted."""


# ----------------------------------------------------------------------------------------------
# Strength
# ----------------------------------------------------------------------------------------------

class ScaledEdits(Intervention):
    """A compiled edit set at strength `strength`: each edit, in order, moves what it edits by
    `strength` times its change, x + strength (edit(x) - x); contextualization weights are
    clamped at 0. Strength 0 returns its inputs, strength 1 is the edit set itself."""

    def __init__(self, compiled: CompiledEdits, strength: float):
        check_strength(strength)
        self.compiled, self.strength = compiled, float(strength)
        active = self.strength != 0.0
        self.sense_ops = compiled.sense_ops if active else []
        self.contextualization_ops = compiled.contextualization_ops if active else []

    def _blend(self, old: torch.Tensor, new: torch.Tensor, floor: float | None) -> torch.Tensor:
        if self.strength == 1.0:
            return new
        out = old + self.strength * (new - old)
        return out.clamp_min(floor) if floor is not None else out

    def on_senses(self, senses, token_ids, positions):
        for op in self.sense_ops:
            senses = self._blend(senses, op(senses, token_ids, positions), None)
        return senses

    def sense_sites(self, token_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """(b, s) bool: tokens whose senses may change (as `CompiledEdits.sense_sites`)."""
        if not self.sense_ops:
            return torch.zeros_like(token_ids, dtype=torch.bool)
        return self.compiled.sense_sites(token_ids, positions)

    def on_contextualization(self, contextualization, source_ids, source_positions,
                             query_positions):
        for op in self.contextualization_ops:
            new = op(contextualization, source_ids, source_positions, query_positions)
            contextualization = self._blend(contextualization, new, 0.0)
        return contextualization

    def __repr__(self) -> str:
        return f"ScaledEdits({self.compiled!r}, strength={self.strength:g})"


def check_strength(strength: float) -> None:
    """ValueError unless strength is a finite number in [-MAX_ABS_STRENGTH, MAX_ABS_STRENGTH]."""
    if not math.isfinite(strength):
        raise ValueError(f"a strength must be a finite number, got {strength}")
    if abs(strength) > MAX_ABS_STRENGTH:
        raise ValueError(f"strength {strength:g} is too large: give strengths between "
                         f"{-MAX_ABS_STRENGTH:g} and {MAX_ABS_STRENGTH:g} (past that the logits "
                         "overflow)")


def at_strength(edits: Any, strength: float, model: Backpack, tokenizer: Tokenizer | None
                ) -> ScaledEdits:
    """An edit set (anything `as_edit_set` reads, or CompiledEdits) at `strength`."""
    compiled = edits if isinstance(edits, CompiledEdits) else as_edit_set(edits).compile(model, tokenizer)
    return ScaledEdits(compiled, strength)


def parse_strengths(text: str | Sequence[float] | None) -> list[float]:
    """"0, 0.5, 1, 2" (or a list of numbers) -> sorted distinct finite strengths; 1 is added.
    ValueError says what is accepted."""
    if text is None:
        values = list(DEFAULT_STRENGTHS)
    elif isinstance(text, str):
        values = []
        for piece in text.replace(";", ",").split(","):
            if not piece.strip():
                continue
            try:
                values.append(float(piece))
            except ValueError:
                raise ValueError(f"strength {piece.strip()!r} is not a number; give numbers separated "
                                 "by commas, e.g. 0,0.5,1,2") from None
        if not values:
            raise ValueError("no strengths given; give numbers separated by commas, e.g. 0,0.5,1,2")
    else:
        values = [float(v) for v in text]
    for v in values:
        check_strength(v)
    values = sorted({v + 0.0 for v in values} | {1.0})  # + 0.0: -0.0 is 0.0
    if len(values) > MAX_STRENGTHS:
        raise ValueError(f"{len(values)} strengths is more than the {MAX_STRENGTHS} accepted")
    return values


# ----------------------------------------------------------------------------------------------
# Target prompts
# ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class TargetPrompt:
    prompt: str
    target: str | int
    foil: str | int | None = None


def read_prompts(source: str | os.PathLike | bytes, name: str | None = None) -> list[TargetPrompt]:
    """Target prompts from a JSONL file (a path) or its content (bytes): one object a line,
    {"prompt": text, "target": word, "foil": word (optional)}; blank lines are skipped.
    PromptError names the file, the line and what is wrong."""
    if isinstance(source, bytes):
        raw, name = source, name or "the prompts file"
        size = len(raw)
    else:
        name = name or str(source)
        try:
            size = Path(source).stat().st_size
            raw = read_prefix(source, MAX_PROMPTS_BYTES) if size <= MAX_PROMPTS_BYTES else b""
            size = max(size, len(raw))  # a device (/dev/zero) reports no size: what was read
        except OSError as err:
            raise PromptError(f"cannot read the prompts file {name!r}: {err.strerror or err}") from None
    if size > MAX_PROMPTS_BYTES:
        raise PromptError(f"{name} has {size:,} bytes, more than the limit of {MAX_PROMPTS_BYTES:,} "
                          f"bytes for a prompts file")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise PromptError(f"{name} is not UTF-8 text (byte {raw[err.start]:#04x} at offset "
                          f"{err.start})") from None
    prompts = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        where = f"{name}, line {lineno}"
        try:
            item = parse_json(line)
        except json.JSONDecodeError as err:
            raise PromptError(f"{where}: not valid JSON ({err.msg} at column {err.colno}); each line "
                              "must be an object like {\"prompt\": \"It happened last\", \"target\": "
                              "\" week\", \"foil\": \" year\"}") from None
        if not isinstance(item, dict):
            raise PromptError(f"{where}: a line must be a JSON object with \"prompt\" and \"target\", "
                              f"got {type(item).__name__}")
        unknown = [k for k in item if k not in ("prompt", "target", "foil")]
        if unknown:
            raise PromptError(f"{where}: unknown field {unknown[0]!r}; accepted: prompt, target, foil")
        for key in ("prompt", "target"):
            if key not in item:
                raise PromptError(f"{where}: lacks \"{key}\" (each line needs prompt and target)")
        if not isinstance(item["prompt"], str) or not item["prompt"]:
            raise PromptError(f"{where}: \"prompt\" must be a non-empty string")
        for key in ("target", "foil"):
            value = item.get(key)
            if value is None and key == "foil":
                continue
            if isinstance(value, bool) or not isinstance(value, (str, int)) or value == "":
                raise PromptError(f"{where}: \"{key}\" must be a word (one token, e.g. \" week\") or "
                                  f"a token id, got {value!r}")
        prompts.append(TargetPrompt(item["prompt"], item["target"], item.get("foil")))
        if len(prompts) > MAX_PROMPTS:
            raise PromptError(f"{name} holds more than {MAX_PROMPTS} prompts")
    if not prompts:
        raise PromptError(f"{name} holds no prompts (one JSON object a line)")
    return prompts


@dataclass
class PromptScore:
    """One prompt under one strength."""

    target_logprob: float
    foil_logprob: float | None
    target_rank: int  # real tokens with a higher logit than the target (0: it is the argmax)
    success: bool


@dataclass
class PromptResult:
    prompt: str
    target: str
    foil: str | None
    before: PromptScore  # without the edits
    by_strength: list[PromptScore]  # in the order of EditEvaluation.strengths


def _score(logits: torch.Tensor, target_id: int, foil_id: int | None, n_real: int) -> PromptScore:
    logits = logits.float()
    logp = logits.log_softmax(-1)
    rank = int((logits[:n_real] > logits[target_id]).sum())
    foil_lp = float(logp[foil_id]) if foil_id is not None else None
    success = float(logp[target_id]) > foil_lp if foil_id is not None else rank == 0
    return PromptScore(float(logp[target_id]), foil_lp, rank, bool(success))


def check_prompts(model: Backpack, tokenizer: Tokenizer | None, prompts: Sequence[TargetPrompt]
                  ) -> list[tuple[list[int], int, int | None]]:
    """(prompt token ids, target id, foil id) of each prompt, or PromptError naming the prompt
    (a target or foil that is not one token, an empty prompt, one longer than the context).
    Cheap: `evaluate_edits` calls it before its pass over the corpus."""
    vocab, n_max = model.config.vocab_size, model.config.n_positions
    out = []
    for i, p in enumerate(prompts):
        try:
            target_id = single_token_id(tokenizer, p.target, vocab, role="target")
            foil_id = single_token_id(tokenizer, p.foil, vocab, role="foil") if p.foil is not None else None
            if tokenizer is None:
                raise ValueError("a prompt needs a tokenizer")
            ids = tokenizer.encode(p.prompt)
            if not ids or len(ids) > n_max:
                raise ValueError(f"the prompt is {len(ids)} tokens long; give 1 to {n_max}")
        except (WordError, ValueError) as err:
            shown = p.prompt if len(p.prompt) <= 40 else p.prompt[:39] + "…"
            raise PromptError(f"prompt {i + 1} ({shown!r}): {err}") from None
        out.append((ids, target_id, foil_id))
    return out


def score_prompts(model: Backpack, tokenizer: Tokenizer, compiled: CompiledEdits,
                  prompts: Sequence[TargetPrompt], strengths: Sequence[float]) -> list[PromptResult]:
    """Each prompt read once (a `ContextSession`), then re-evaluated under every strength."""
    from backpack_core.interpret.session import ContextSession
    from backpack_core.model.vocab import token_text

    vocab = model.config.vocab_size
    n_real = min(len(tokenizer), vocab)
    scaled = [ScaledEdits(compiled, s) for s in strengths]
    results = []
    for p, (ids, target_id, foil_id) in zip(prompts, check_prompts(model, tokenizer, prompts)):
        session = ContextSession(model, tokenizer, ids)
        before = _score(session.logits(None, -1), target_id, foil_id, n_real)
        by_strength = [_score(session.logits(iv, -1), target_id, foil_id, n_real) for iv in scaled]
        results.append(PromptResult(
            prompt=p.prompt, target=token_text(tokenizer, target_id),
            foil=token_text(tokenizer, foil_id) if foil_id is not None else None,
            before=before, by_strength=by_strength))
    return results


# ----------------------------------------------------------------------------------------------
# The corpus pass
# ----------------------------------------------------------------------------------------------

@dataclass
class StrengthResult:
    strength: float
    radius: int  # positions in the blast radius (scored or not)
    scored_inside: int  # scored positions inside it
    loss_after: dict[str, float | None]  # mean NLL after: all / inside / outside
    loss_change: dict[str, float | None]  # after - before, same keys
    success_rate: float | None = None  # over the prompts (None without prompts)


@dataclass
class EditEvaluation:
    edits: dict[str, Any]
    descriptions: list[str]
    corpus: dict[str, Any]  # name, tokens, sha256, seq_len, windows
    strengths: list[float]
    blast_radius: list[int]  # corpus offsets (strength 1), ascending
    scored: int  # positions with a next token in their window
    loss_before: float  # mean NLL over the scored positions, without the edits
    sweep: list[StrengthResult]
    prompts: list[PromptResult] = field(default_factory=list)
    success_before: float | None = None
    timing: dict[str, float] = field(default_factory=dict)
    words: list[dict[str, Any]] = field(default_factory=list)  # `word_counts`: each edited word

    @property
    def absent_words(self) -> list[dict[str, Any]]:
        """The edited words that never occur in the corpus (their edits change nothing there)."""
        return [w for w in self.words if w["count"] == 0]

    def at(self, strength: float) -> StrengthResult:
        return next(r for r in self.sweep if r.strength == strength)

    def to_dict(self, positions: bool = True) -> dict[str, Any]:
        one = self.at(1.0)
        return {
            "edits": self.edits, "descriptions": self.descriptions, "corpus": self.corpus,
            "strengths": self.strengths,
            "blast_radius": {"count": len(self.blast_radius),
                             "fraction": len(self.blast_radius) / max(1, self.corpus["tokens"]),
                             "scored_inside": one.scored_inside,
                             "positions": self.blast_radius if positions else None},
            "scored": self.scored, "loss_before": self.loss_before,
            "loss_change": one.loss_change,
            "success_before": self.success_before, "success_after": one.success_rate,
            "sweep": [asdict(r) for r in self.sweep],
            "prompts": [asdict(p) for p in self.prompts],
            "timing": self.timing, "words": self.words,
        }


class _Sums:
    """Running NLL sums of one strength."""

    def __init__(self):
        self.radius = self.inside = 0
        self.delta_inside = 0.0  # sum of (after - before) NLL over scored positions inside
        self.before_inside = 0.0


def _window_changes(intervention: ScaledEdits, contextualization: torch.Tensor,
                    senses: torch.Tensor, ids: torch.Tensor, positions: torch.Tensor
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """The blast radius (b, s) bool of a batch of windows and the change of the weighted sum
    (b, s, d) under `intervention` (meaningful inside the radius only).

    contextualization (b, k, s, s), senses (b, k, s, d), ids and positions (b, s)."""
    b, k, s, _ = contextualization.shape
    edited = contextualization
    if intervention.contextualization_ops:
        edited = intervention.on_contextualization(contextualization, ids, positions, positions)
    columns = intervention.sense_sites(ids, positions)  # (b, s): sources whose senses change
    if edited is not contextualization:
        columns = columns | (edited != contextualization).any(dim=2).any(dim=1)
    touched = columns.any(0).nonzero().squeeze(1)  # (u,) source columns changed in some window
    if touched.numel() == 0:
        nothing = torch.zeros(b, s, dtype=torch.bool, device=ids.device)
        return nothing, senses.new_zeros(b, s, senses.shape[-1])
    old = senses[:, :, touched]  # (b, k, u, d)
    new = intervention.on_senses(old, ids[:, touched], positions[:, touched])  # pointwise edits
    a_old, a_new = contextualization[..., touched], edited[..., touched]  # (b, k, s, u)
    sense_changed = (new != old).any(-1)[:, :, None, :]  # (b, k, 1, u)
    sense_nonzero = (old != 0).any(-1)[:, :, None, :]
    term_changed = (((a_new != a_old) & sense_nonzero)
                    | (sense_changed & ((a_new != 0) | (a_old != 0))))  # (b, k, s, u)
    radius = term_changed.any(-1).any(1)  # (b, s)
    # o' - o over the touched columns: "b k i u, b k u d -> b i d"
    delta = Backpack.mix(a_new, new) - Backpack.mix(a_old, old)
    return radius, delta


@torch.inference_mode()
def word_counts(edit_set: EditSet, tokenizer: Tokenizer | None, corpus: Corpus,
                vocab_size: int | None = None) -> list[dict[str, Any]]:
    """How often each edited word occurs in `corpus`: [{"word", "token_id", "count", "other"}],
    one per distinct word; "other" is the other-case form ({"word", "count"}) when that is one
    token that occurs (' united' for ' United' in the lower-cased Penn Treebank), else None."""
    from backpack_core.model.vocab import token_text

    ids = corpus.token_ids
    out, seen = [], set()
    for edit in edit_set:
        word = getattr(edit, "word", None)
        if word is None:
            continue
        try:
            token_id = single_token_id(tokenizer, word, vocab_size)
        except WordError:
            continue
        if token_id in seen:
            continue
        seen.add(token_id)
        text = token_text(tokenizer, token_id) if tokenizer is not None else str(token_id)
        other = None
        bare = text.lstrip()
        flipped = text[: len(text) - len(bare)] + (
            bare.lower() if bare != bare.lower() else bare[:1].upper() + bare[1:])
        if flipped != text and tokenizer is not None:
            try:
                other_id = single_token_id(tokenizer, flipped, vocab_size)
                n = int((ids == other_id).sum())
                other = {"word": flipped, "count": n} if n else None
            except WordError:
                pass
        out.append({"word": text, "token_id": token_id, "count": int((ids == token_id).sum()),
                    "other": other})
    return out


@torch.no_grad()
def evaluate_edits(model: Backpack, tokenizer: Tokenizer | None, edits: Any, corpus: Corpus,
                   prompts: Sequence[TargetPrompt] | None = None,
                   strengths: Sequence[float] | str | None = None, seq_len: int | None = None,
                   batch_size: int = 8, progress: bool | Callable[[int, int], None] = True
                   ) -> EditEvaluation:
    """Evaluate `edits` (an EditSet, its JSON dict or text, a pathlib.Path...) over `corpus`
    (`backpack_core.common.corpus.Corpus`) and on target `prompts`, at each of `strengths`
    (default 0, 0.5, 1, 2; strength 1 is always added). The model runs once per window of
    `seq_len` tokens (default: its context), `batch_size` windows at a time; every strength
    is evaluated from the cached contextualization and senses. See the module docstring for
    the definitions. `progress`: True (a bar on stderr), False, or a callback (done, total)
    called after each batch."""
    if not model.config.is_backpack:
        raise ValueError("this model is a Transformer twin: it has no senses to edit")
    edit_set: EditSet = as_edit_set(edits)
    compiled = edit_set.compile(model, tokenizer)
    strengths = parse_strengths(strengths)
    n_positions = model.config.n_positions
    seq_len = n_positions if seq_len is None else seq_len
    if not 2 <= seq_len <= n_positions:
        raise ValueError(f"seq_len must be in 2..{n_positions} (the model's context), got {seq_len}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    check_batch_windows(batch_size)
    if len(corpus) < 2:
        raise ValueError(f"the corpus {corpus.name!r} has {len(corpus)} token(s); at least 2 are needed")
    if prompts:
        check_prompts(model, tokenizer, prompts)  # before the long pass, not after it
    device = model.wte.weight.device
    scaled = [ScaledEdits(compiled, s) for s in strengths]
    sums = [_Sums() for _ in strengths]
    radius_offsets: list[torch.Tensor] = []
    one = strengths.index(1.0)
    total_before, scored = 0.0, 0
    forward_s = reevaluate_s = 0.0
    total = corpus.n_batches(seq_len, batch_size)
    from backpack_core.common.progress import track

    batches = track(corpus.windows(seq_len, batch_size), "evaluating edits", total, progress)
    for batch, starts in batches:
        t0 = time.perf_counter()
        ids = batch.to(device)
        b, s = ids.shape
        out = model(ids, output_contextualization=True, output_senses=True)
        alpha, senses = out.contextualization, out.senses  # (b, k, s, s), (b, k, s, d)
        targets = ids[:, 1:]  # (b, s-1): position i predicts token i + 1
        nll = next_token_loss(out.logits, ids, reduction="none")[:, :-1]  # (b, s-1)
        total_before += float(nll.sum())
        scored += nll.numel()
        positions = torch.arange(s, device=device).expand(b, s)
        t1 = time.perf_counter()
        for j, iv in enumerate(scaled):
            radius, delta = _window_changes(iv, alpha, senses, ids, positions)
            rows, cols = radius.nonzero(as_tuple=True)  # (r,)
            sums[j].radius += rows.numel()
            if j == one:
                radius_offsets.append((starts.to(device)[rows] + cols).cpu())
            keep = cols < s - 1  # scored positions inside
            rows, cols = rows[keep], cols[keep]
            if rows.numel() == 0:
                continue
            logits = out.logits[rows, cols].float() + model.output_logits(delta[rows, cols]).float()
            after = torch.nn.functional.cross_entropy(logits, targets[rows, cols], reduction="none")
            before = nll[rows, cols]
            sums[j].inside += rows.numel()
            sums[j].delta_inside += float((after - before).sum())
            sums[j].before_inside += float(before.sum())
        t2 = time.perf_counter()
        forward_s += t1 - t0
        reevaluate_s += t2 - t1
    if scored == 0:
        raise ValueError(f"the corpus {corpus.name!r} has no window of 2 or more tokens to score")

    t3 = time.perf_counter()
    prompt_results = (score_prompts(model, tokenizer, compiled, prompts, strengths)
                      if prompts else [])
    prompts_s = time.perf_counter() - t3

    def mean(total: float, n: int) -> float | None:
        return total / n if n else None

    loss_before = total_before / scored
    sweep = []
    for j, strength in enumerate(strengths):
        acc = sums[j]
        outside = scored - acc.inside
        before_out = total_before - acc.before_inside
        change = {"all": acc.delta_inside / scored, "inside": mean(acc.delta_inside, acc.inside),
                  "outside": 0.0 if outside else None}  # exact: no term of theirs changed
        after = {"all": loss_before + change["all"],
                 "inside": mean(acc.before_inside + acc.delta_inside, acc.inside),
                 "outside": mean(before_out, outside)}
        rate = (sum(p.by_strength[j].success for p in prompt_results) / len(prompt_results)
                if prompt_results else None)
        sweep.append(StrengthResult(strength, acc.radius, acc.inside, after, change, rate))
    offsets = torch.cat(radius_offsets).sort().values.tolist() if radius_offsets else []
    return EditEvaluation(
        edits=edit_set.to_dict(), descriptions=edit_set.describe(),
        corpus={"name": corpus.name, "tokens": len(corpus), "sha256": corpus.sha256,
                "seq_len": seq_len, "windows": corpus.n_windows(seq_len)},
        strengths=strengths, blast_radius=offsets, scored=scored, loss_before=loss_before,
        sweep=sweep, prompts=prompt_results,
        success_before=(sum(p.before.success for p in prompt_results) / len(prompt_results)
                        if prompt_results else None),
        timing={"forward_s": forward_s, "reevaluate_s": reevaluate_s, "prompts_s": prompts_s},
        words=word_counts(edit_set, tokenizer, corpus, model.config.vocab_size))


def naive_losses(model: Backpack, tokenizer: Tokenizer | None, edits: Any, corpus: Corpus,
                 strength: float, seq_len: int | None = None, batch_size: int = 8
                 ) -> torch.Tensor:
    """Reference: per-position next-token NLL (n_scored,) in corpus order under the edit set at
    `strength`, from full forward passes (the model rerun with the intervention). What the
    cached evaluation must reproduce; used by the tests and bench/bench_edit_sweep.py."""
    iv = at_strength(edits, strength, model, tokenizer)
    seq_len = min(seq_len or model.config.n_positions, model.config.n_positions)
    device = model.wte.weight.device
    out: list[torch.Tensor] = []
    with torch.inference_mode():
        for batch, _ in corpus.windows(seq_len, batch_size):
            ids = batch.to(device)
            logits = model(ids, intervention=iv).logits  # (b, s, V)
            out.append(next_token_loss(logits, ids, reduction="none")[:, :-1].flatten().cpu())
    return torch.cat(out)


__all__ = ["DEFAULT_STRENGTHS", "EditEvaluation", "PromptError", "PromptResult", "PromptScore",
           "ScaledEdits", "StrengthResult", "TargetPrompt", "at_strength", "check_prompts", "evaluate_edits",
           "naive_losses", "parse_strengths", "read_prompts", "score_prompts"]
