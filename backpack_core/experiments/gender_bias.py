"""Gender bias in career nouns (the paper's section on mitigating gender bias).

Career-noun prompts; the bias ratio mean(max(p(he)/p(she), p(she)/p(he))), which is
mean(exp |logit_he - logit_she|) (the softmax normaliser cancels); the sense index whose
projection onto E_he - E_she is largest over career nouns; a down-weighting factor for it fit
on training prompts; and the baseline of projecting the he-she direction out of the career
tokens' input embedding.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from backpack_core.common.progress import progress_bar
from backpack_core.edit.specs import EditSet, ScaleContextualization
from backpack_core.experiments.words import model_device
from backpack_core.model.vocab import WordError, resolve_word, single_token_id, token_text

if TYPE_CHECKING:  # pragma: no cover
    from backpack_core.model.backpack import Backpack
    from backpack_core.model.tokenizer import Tokenizer


# factors tried when fitting the down-weighting of the he/she sense
DEFAULT_FACTORS = (0.0, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)


# ----------------------------------------------------------------------------------------------
# Gender bias
# ----------------------------------------------------------------------------------------------

@dataclass
class CareerPrompt:
    """One prompt: `template` with `career` in it; `career_positions` are the token positions of
    the career's piece(s) (the prompt is tokenized in parts, so they are exact)."""

    template: str
    career: str
    text: str
    token_ids: list[int]
    career_positions: list[int]

    @property
    def career_ids(self) -> list[int]:
        return [self.token_ids[p] for p in self.career_positions]


def career_prompts(tokenizer: Tokenizer, templates: Iterable[str], careers: Iterable[str]
                   ) -> list[CareerPrompt]:
    """Fill each template ("The{} said that": '{}' takes " nurse", with its space) with each
    career noun (given without the space)."""
    out = []
    for template in templates:
        if template.count("{}") != 1:
            raise ValueError(f"template {template!r} must hold exactly one '{{}}' for the career")
        prefix, suffix = template.split("{}")
        for career in careers:
            word = " " + career.strip()
            pre, mid, post = tokenizer.encode(prefix), tokenizer.encode(word), tokenizer.encode(suffix)
            out.append(CareerPrompt(template, career.strip(), prefix + word + suffix,
                                    pre + mid + post, list(range(len(pre), len(pre) + len(mid)))))
    return out


def gender_direction(model: Backpack, tokenizer: Tokenizer, he: str = " he", she: str = " she"
                     ) -> tuple[torch.Tensor, int, int]:
    """(E_he - E_she (d,), he id, she id): the logit-difference direction in output space."""
    he_id = single_token_id(tokenizer, he, model.config.vocab_size, role="pronoun")
    she_id = single_token_id(tokenizer, she, model.config.vocab_size, role="pronoun")
    with torch.inference_mode():
        E = model.wte.weight.float()
        return (E[he_id] - E[she_id]).cpu(), he_id, she_id


@torch.inference_mode()
def sense_separation(model: Backpack, career_token_ids: Sequence[Sequence[int]],
                     direction: torch.Tensor) -> torch.Tensor:
    """(k,) for each sense index l: mean over careers of |direction . C(x)_l|, averaged over a
    career's pieces: how strongly sense l of career nouns pushes he against she."""
    d = direction.to(model_device(model), torch.float32)
    per_career = []
    for ids in career_token_ids:
        senses = model.sense_vectors(torch.tensor(list(ids), device=model_device(model))).float()
        per_career.append((senses @ d).abs().mean(0))  # (pieces, k) -> (k,)
    return torch.stack(per_career).mean(0).cpu()


def bias_ratio(gaps: torch.Tensor) -> float:
    """mean over prompts of max(p(he)/p(she), p(she)/p(he)) = mean exp(|logit_he - logit_she|)."""
    return float(gaps.double().abs().exp().mean())


def downweight_edits(prompt: CareerPrompt, sense: int | Sequence[int], factor: float) -> EditSet:
    """Scale the contextualization weight of `sense` on the career's piece(s) of this prompt."""
    return EditSet([ScaleContextualization(token_id, sense, factor, positions=[p])
                    for p, token_id in zip(prompt.career_positions, prompt.career_ids)])


class _PromptSessions:
    """One `ContextSession` per prompt: each factor then costs a weighted sum per prompt."""

    def __init__(self, model: Backpack, tokenizer: Tokenizer, prompts: list[CareerPrompt],
                 he_id: int, she_id: int, progress: bool | None = None):
        from backpack_core.interpret.session import ContextSession

        self.prompts, self.he_id, self.she_id = prompts, he_id, she_id
        self.sessions = [ContextSession(model, tokenizer, p.token_ids)
                         for p in progress_bar(prompts, "prompts", enabled=progress)]

    def gaps(self, sense: int | Sequence[int] | None = None, factor: float = 1.0) -> torch.Tensor:
        """(prompts,) logit_he - logit_she at the last position, with the career's `sense`
        contextualization scaled by `factor` (none: unedited)."""
        out = []
        for prompt, session in zip(self.prompts, self.sessions):
            edits = None if sense is None else downweight_edits(prompt, sense, factor)
            logits = session.logits(edits, positions=-1)
            out.append(logits[self.he_id] - logits[self.she_id])
        return torch.stack(out).float().cpu()

    def career_contributions(self) -> torch.Tensor:
        """(prompts, k): the part of logit_he - logit_she (unedited) that the career token(s)'
        senses contribute, per sense: sum over the career positions j of
        alpha[l, i, j] * ((E_he - E_she) . C(x_j)_l), from the exact attribution."""
        out = []
        for prompt, session in zip(self.prompts, self.sessions):
            he = session.attribution(self.he_id, -1).contributions  # (k, n)
            she = session.attribution(self.she_id, -1).contributions
            out.append((he - she)[:, prompt.career_positions].sum(1))
        return torch.stack(out).float()


@torch.inference_mode()
def last_position_gaps(model: Backpack, prompts: Sequence[CareerPrompt], he_id: int, she_id: int
                       ) -> torch.Tensor:
    """(prompts,) logit_he - logit_she after each prompt, by plain forward passes (any model:
    a Backpack or its Transformer twin), prompts of equal length batched together."""
    gaps = torch.empty(len(prompts))
    by_length: dict[int, list[int]] = {}
    for i, p in enumerate(prompts):
        by_length.setdefault(len(p.token_ids), []).append(i)
    for rows in by_length.values():
        x = torch.tensor([prompts[i].token_ids for i in rows], device=model_device(model))
        logits = model(x).logits[:, -1].float()
        gaps[rows] = (logits[:, he_id] - logits[:, she_id]).cpu()
    return gaps


def project_out_embedding(model: Backpack, token_ids: Iterable[int], direction: torch.Tensor
                          ) -> Backpack:
    """A copy of `model` whose embedding rows `token_ids` have `direction` projected out:
    E_x <- E_x - (E_x . u) u, u = direction / |direction|. The row feeds the contextualizer and
    (in a Backpack) the sense network. E is tied to the output layer, so those words' own logits
    change too, but not the logits of other words (p(he)/p(she) after a prompt is unaffected
    except through the prompt's representation). The original model is not touched."""
    edited = copy.deepcopy(model)
    u = direction.to(model_device(model), torch.float32)
    u = u / u.norm().clamp_min(1e-12)
    ids = torch.tensor(sorted(set(int(i) for i in token_ids)), device=model_device(model))
    with torch.no_grad():
        rows = edited.wte.weight[ids].float()
        rows = rows - (rows @ u)[:, None] * u
        edited.wte.weight[ids] = rows.to(edited.wte.weight.dtype)
    return edited


@dataclass
class GenderBiasResult:
    sense: int
    sense_scores: list[float]  # (k,) sense_separation
    sense_chosen_by: str
    factor: float
    fit: list[dict[str, float]]  # [{"factor", "bias_ratio"}] on the training prompts
    train: dict[str, float]  # {"before", "after"}
    heldout: dict[str, float]  # {"before", "after", "projection_baseline"} (+ "twin_*")
    gap: dict[str, Any]  # held-out, unedited: mean gap and the career senses' share of it
    careers: list[str]
    skipped_careers: list[dict[str, Any]]
    prompts: dict[str, int]
    per_career: list[dict[str, Any]]  # held-out mean gap before / after per career

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def gender_bias(model: Backpack, tokenizer: Tokenizer, careers: Sequence[str],
                train_templates: Sequence[str], heldout_templates: Sequence[str],
                sense: int | None = None, factors: Sequence[float] = DEFAULT_FACTORS,
                pronouns: tuple[str, str] = (" he", " she"), twin: Backpack | None = None,
                single_token_only: bool = False, progress: bool | None = None) -> GenderBiasResult:
    """The paper's gender-bias experiment.

    1. sense index: the one whose sense vectors of the career nouns project most onto
       E_he - E_she (`sense_separation`), unless `sense` is given;
    2. factor: the scale of that sense's contextualization weight on the career token(s) that
       minimises the bias ratio over the training prompts (grid `factors`);
    3. report the bias ratio on held-out prompts before and after, and for the baseline that
       projects the he-she direction out of the career tokens' input embedding (in this model,
       and in `twin`, a Transformer trained the same way, if given);
    4. `gap`: how much of the mean held-out gap logit_he - logit_she the career token's senses
       contribute (exact attribution), per sense: what any edit of the career's senses can
       reach at most; the rest comes from the other words of the prompt.

    A career the vocabulary splits into pieces is edited on every piece (each at its position);
    `single_token_only` drops such careers instead."""
    if not careers or not train_templates or not heldout_templates:
        raise ValueError("need careers, training templates and held-out templates")
    direction, he_id, she_id = gender_direction(model, tokenizer, *pronouns)
    kept, skipped = [], []
    for career in dict.fromkeys(c.strip() for c in careers):
        resolved = resolve_word(tokenizer, " " + career, model.config.vocab_size)
        if single_token_only and not resolved.is_single:
            skipped.append({"career": career, "tokens": resolved.tokens})
        else:
            kept.append(career)
    if not kept:
        raise WordError("no career noun is left: every one is several tokens in this vocabulary")
    career_ids = [tokenizer.encode(" " + c) for c in kept]
    scores = sense_separation(model, career_ids, direction)
    k = model.config.num_senses
    if sense is None:
        sense, chosen_by = int(scores.argmax()), "largest mean |(E_he - E_she) . C(career)_l|"
    else:
        if not 0 <= sense < k:
            raise ValueError(f"sense {sense} is out of range: the model has {k} senses, 0..{k - 1}")
        chosen_by = "given"
    factors = sorted({float(f) for f in factors})
    if not factors or min(factors) < 0:
        raise ValueError("factors must be numbers >= 0")

    train = _PromptSessions(model, tokenizer, career_prompts(tokenizer, train_templates, kept),
                            he_id, she_id, progress)
    fit = [{"factor": f, "bias_ratio": bias_ratio(train.gaps(sense, f))}
           for f in progress_bar(factors, "fitting the factor", enabled=progress)]
    best = min(fit, key=lambda r: (r["bias_ratio"], abs(r["factor"] - 1.0)))
    factor = best["factor"]
    train_before = bias_ratio(train.gaps())

    heldout_prompts = career_prompts(tokenizer, heldout_templates, kept)
    heldout = _PromptSessions(model, tokenizer, heldout_prompts, he_id, she_id, progress)
    gaps_before, gaps_after = heldout.gaps(), heldout.gaps(sense, factor)
    all_career_ids = {i for ids in career_ids for i in ids}
    projected = project_out_embedding(model, all_career_ids, direction)
    report = {"before": bias_ratio(gaps_before), "after": bias_ratio(gaps_after),
              "projection_baseline": bias_ratio(
                  last_position_gaps(projected, heldout_prompts, he_id, she_id))}
    del projected
    if twin is not None:
        twin_dir = gender_direction(twin, tokenizer, *pronouns)[0]
        report["twin_before"] = bias_ratio(last_position_gaps(twin, heldout_prompts, he_id, she_id))
        twin_projected = project_out_embedding(twin, all_career_ids, twin_dir)
        report["twin_projection_baseline"] = bias_ratio(
            last_position_gaps(twin_projected, heldout_prompts, he_id, she_id))

    career_part = heldout.career_contributions()  # (prompts, k)
    gap = {"mean": float(gaps_before.mean()), "career": float(career_part.sum(1).mean()),
           "career_by_sense": career_part.mean(0).tolist()}
    per_career = []
    for career in kept:
        rows = [i for i, p in enumerate(heldout_prompts) if p.career == career]
        per_career.append({"career": career,
                           "tokens": [token_text(tokenizer, i) for i in heldout_prompts[rows[0]].career_ids],
                           "gap_before": float(gaps_before[rows].mean()),
                           "gap_after": float(gaps_after[rows].mean()),
                           "bias_ratio_before": bias_ratio(gaps_before[rows]),
                           "bias_ratio_after": bias_ratio(gaps_after[rows])})
    return GenderBiasResult(
        sense=sense, sense_scores=scores.tolist(), sense_chosen_by=chosen_by, factor=factor,
        fit=fit, train={"before": train_before, "after": best["bias_ratio"]}, heldout=report, gap=gap,
        careers=kept, skipped_careers=skipped,
        prompts={"train": len(train.prompts), "heldout": len(heldout_prompts)},
        per_career=per_career)
