"""Patching (backpack_core/interpret/patching.py) against full forward passes of the tiny model:
patching everything gives the clean logits, nothing the corrupted ones, any patch in between the
forward pass with the same activations replaced (an Intervention for senses and weights, a hook on
the block's input for the contextualizer), and every split sums to its total."""

from __future__ import annotations

import pytest
import torch

from backpack_core.interpret.patching import PatchPair, patch_prompts
from backpack_core.model.backpack import Intervention

CLEAN = "The MacBook is made by"
CORRUPTED = "The laptop is made by"
TOL = dict(rtol=1e-4, atol=1e-4)


@pytest.fixture(scope="module")
def pair(tiny_model, tiny_tokenizer):
    return PatchPair(tiny_model, tiny_tokenizer, CLEAN, CORRUPTED)


def forward_logits(model, ids, intervention=None):
    with torch.inference_mode():
        return model(torch.tensor(ids)[None], intervention=intervention).logits[0, -1]


class Patch(Intervention):
    """The corrupted run with the clean senses at (l, j) where `senses` is True and the clean
    weights alpha[l, n-1, j] where `weights` is True: what PatchPair computes without a pass."""

    def __init__(self, pair, senses, weights):
        self.pair, self.senses, self.weights = pair, senses, weights

    def on_senses(self, senses, token_ids, positions):  # (1, k, n, d)
        return torch.where(self.senses[None, :, :, None], self.pair.clean.senses[None], senses)

    def on_contextualization(self, contextualization, *args):  # (1, k, n, n)
        out = contextualization.clone()
        out[0, :, -1] = torch.where(self.weights, self.pair.clean.row, out[0, :, -1])
        return out


def test_the_runs_are_the_models_forward_passes(pair, tiny_model):
    for run in (pair.clean, pair.corrupted):
        with torch.inference_mode():
            out = tiny_model(torch.tensor(run.token_ids)[None], output_contextualization=True,
                             output_hidden_states=True)
        torch.testing.assert_close(run.logits, out.logits[0, -1], **TOL)
        torch.testing.assert_close(run.contextualization, out.contextualization[0], **TOL)
        ln_f = tiny_model.contextualizer.ln_f
        with torch.inference_mode():
            torch.testing.assert_close(ln_f(run.residuals[-1]), out.hidden_states[0], **TOL)


def test_sense_patching_everything_is_clean_and_nothing_is_corrupted(pair, tiny_model):
    clean = forward_logits(tiny_model, pair.clean.token_ids)
    corrupted = forward_logits(tiny_model, pair.corrupted.token_ids)
    torch.testing.assert_close(pair.patched_logits(senses=True, weights=True), clean, **TOL)
    torch.testing.assert_close(pair.patched_logits(), corrupted, **TOL)
    assert not torch.allclose(clean, corrupted, **TOL)  # the test would notice a mix-up


def test_any_sense_and_weight_patch_equals_the_forward_pass(pair, tiny_model):
    k, n = pair.clean.row.shape
    generator = torch.Generator().manual_seed(0)
    for _ in range(4):
        senses = torch.rand(k, n, generator=generator) < 0.5
        weights = torch.rand(k, n, generator=generator) < 0.5
        expected = forward_logits(tiny_model, pair.corrupted.token_ids, Patch(pair, senses, weights))
        torch.testing.assert_close(pair.patched_logits(senses, weights), expected, **TOL)


def test_the_sense_tables_are_the_patched_logit_differences(pair, tiny_model):
    result = pair.analyse(" Apple", " HP")
    total = result.senses + result.weights + result.interaction
    assert float(total.sum()) == pytest.approx(1.0, abs=1e-5)
    logits = pair.patched_logits(True, True)
    scale = result.logit_diff_clean - result.logit_diff_corrupted
    clean_ld = float(logits[result.target_id] - logits[result.foil_id])
    assert clean_ld == pytest.approx(result.logit_diff_clean, abs=1e-4)
    k, n = result.senses.shape
    for l, j in [(0, 1), (k - 1, 1), (1, n - 1)]:
        only = torch.zeros(k, n, dtype=torch.bool)
        only[l, j] = True
        for kind, mask in (("senses", dict(senses=only)), ("weights", dict(weights=only))):
            lg = pair.patched_logits(**mask)
            effect = (float(lg[result.target_id] - lg[result.foil_id]) - result.logit_diff_corrupted) / scale
            assert effect == pytest.approx(float(getattr(result, kind)[l, j]), abs=1e-4), (kind, l, j)
    # the prompts differ only at position 1: every other sense effect is exactly 0
    assert pair.changed == [1]
    assert float(result.senses[:, [0, 2, 3, 4]].abs().max()) == 0.0
    assert float(result.senses[:, 1].abs().max()) > 0


def block_input_hook(pair, layer, positions):
    """A full forward pass of the corrupted prompt with the clean residual stream at the input
    of block `layer` (or of ln_f) at `positions`: the reference for contextualizer patching."""
    ctx = pair.model.contextualizer
    module = ctx.h[layer] if layer < len(ctx.h) else ctx.ln_f

    def hook(_module, args):
        x = args[0].clone()
        x[0, positions] = pair.clean.residuals[layer, positions]
        return (x, *args[1:])

    return module.register_forward_pre_hook(hook)


def test_contextualizer_patch_equals_the_forward_pass_with_a_hook(pair, tiny_model):
    n_layer = tiny_model.config.n_layer
    for layer in range(n_layer + 1):
        for positions in ([0], [2], [pair.n - 1], [1, 3]):
            handle = block_input_hook(pair, layer, positions)
            try:
                expected = forward_logits(tiny_model, pair.corrupted.token_ids)
            finally:
                handle.remove()
            torch.testing.assert_close(pair.contextualizer_logits(layer, positions), expected, **TOL)


def test_contextualizer_patching_everything_is_clean_and_nothing_is_corrupted(pair, tiny_model):
    clean = forward_logits(tiny_model, pair.clean.token_ids)
    corrupted = forward_logits(tiny_model, pair.corrupted.token_ids)
    everything = list(range(pair.n))
    for layer in range(tiny_model.config.n_layer + 1):
        # the senses do not depend on the contextualizer: patch them too to get the clean run
        torch.testing.assert_close(pair.contextualizer_logits(layer, everything, senses=True),
                                   clean, **TOL)
        torch.testing.assert_close(pair.contextualizer_logits(layer, []), corrupted, **TOL)
        torch.testing.assert_close(pair.contextualizer_row(layer, everything), pair.clean.row, **TOL)


def test_contextualizer_grid_and_its_split_per_sense(pair, tiny_model):
    result = pair.analyse(" Apple", " HP")
    n_layer, k = tiny_model.config.n_layer, tiny_model.config.num_senses
    assert result.layers.shape == (n_layer + 1, pair.n)
    assert result.by_sense.shape == (n_layer + 1, pair.n, k)
    torch.testing.assert_close(result.by_sense.sum(-1), result.layers, rtol=0, atol=1e-6)
    scale = result.logit_diff_clean - result.logit_diff_corrupted
    for layer, p in [(0, 1), (1, 1), (n_layer, pair.n - 1), (0, 0)]:
        lg = pair.contextualizer_logits(layer, [p])
        effect = (float(lg[result.target_id] - lg[result.foil_id]) - result.logit_diff_corrupted) / scale
        assert effect == pytest.approx(float(result.layers[layer, p]), abs=1e-4)
    # position 0 holds the same token in both prompts and nothing before it: no effect anywhere
    assert float(result.layers[:, 0].abs().max()) < 1e-5
    # at layer 0 the changed token carries every difference the contextualizer sees
    assert float(result.layers[0, 1]) == pytest.approx(float(result.weights.sum()), abs=1e-4)


def test_json_rows(tiny_model, tiny_tokenizer):
    from backpack_core.common.cli import json_text
    from tests.conftest import strict_json

    data = patch_prompts(tiny_model, tiny_tokenizer, CLEAN, CORRUPTED, " Apple", " HP").to_dict()
    data = strict_json(json_text(data))
    k, n, layers = tiny_model.config.num_senses, 5, tiny_model.config.n_layer + 1
    assert len(data["senses"]["rows"]) == k * n and len(data["contextualizer"]["rows"]) == layers * n
    totals = data["senses"]["totals"]
    assert sum(totals.values()) == pytest.approx(1.0, abs=1e-5)
    row = data["senses"]["rows"][k + 2]
    assert (row["position"], row["sense"], row["clean_token"], row["corrupted_token"]) == \
        (1, 2, " MacBook", " laptop")


@pytest.mark.parametrize("clean, corrupted, target, foil, message", [
    ("The MacBook is made by", "The bank by the river is made by", None, None,
     "same number of tokens"),
    ("The MacBook is made by", "The MacBook is made by", None, None, "nothing to patch"),
    ("The MacBook is made by", "The laptop is made by", " Apple", " Apple", "same token"),
    ("The MacBook is made by", "The laptop is made by", " Applesauce", " HP", "one token is needed"),
    ("  ", "The laptop is made by", None, None, "empty"),
])
def test_bad_input_is_one_clear_error(tiny_model, tiny_tokenizer, clean, corrupted, target, foil,
                                      message):
    with pytest.raises(ValueError, match=message):
        patch_prompts(tiny_model, tiny_tokenizer, clean, corrupted, target, foil)


def test_token_ids_without_a_tokenizer_give_the_same_result(pair, tiny_model, tiny_tokenizer):
    by_text = pair.analyse(" Apple", " HP")
    by_ids = PatchPair(tiny_model, None, pair.clean.token_ids, pair.corrupted.token_ids).analyse(
        by_text.target_id, by_text.foil_id)
    for name in ("senses", "weights", "interaction", "layers", "by_sense"):
        torch.testing.assert_close(getattr(by_ids, name), getattr(by_text, name), rtol=0, atol=1e-6)
    assert by_ids.clean.tokens[1] == f"<{pair.clean.token_ids[1]}>"
