"""ContextSession: cached re-evaluation equals the full forward pass; comparison; generation."""

from __future__ import annotations

import pytest
import torch
from conftest import state_checksum
from test_edits import ONE_OF_EACH

from backpack_core.edit.generation import generate, generate_side_by_side
from backpack_core.edit.specs import (
    AblateSense,
    EditSet,
    KnowledgeEdit,
    ReplaceSense,
    ScaleContextualization,
)
from backpack_core.interpret.compare import kl_divergence
from backpack_core.interpret.session import ContextSession
from backpack_core.model.backpack import Intervention

TEXT = "The MacBook is made by Apple and the bank by the river has money"

EDIT_SETS = {
    "none": None,
    "one of each": EditSet.from_dict(ONE_OF_EACH),
    "knowledge": EditSet([KnowledgeEdit(" MacBook", remove=" Apple", add=" HP")]),
    "topic": EditSet([ScaleContextualization(" bank", "all", 5.0, renormalize=True),
                      AblateSense(" river", [0, 1], positions=[13])]),
}


@pytest.mark.parametrize("name", list(EDIT_SETS))
@pytest.mark.parametrize("positions", [None, -1, [9, 2, 11]])
def test_session_equals_the_full_forward(tiny_model, tiny_tokenizer, name, positions):
    edits = EDIT_SETS[name]
    session = ContextSession(tiny_model, tiny_tokenizer, TEXT)
    ids = torch.tensor([session.token_ids])
    intervention = edits.compile(tiny_model, tiny_tokenizer) if edits is not None else None
    with torch.no_grad():
        full = tiny_model(ids, intervention=intervention).logits[0]  # (n, vocab)
    got = session.logits(edits, positions)
    expected = full if positions is None else full[positions]
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


class Delegate(Intervention):
    """A user-written intervention (no `sense_sites`): the session takes its plain path."""

    def __init__(self, inner):
        self.inner = inner

    def on_senses(self, senses, token_ids, positions):
        return self.inner.on_senses(senses, token_ids, positions)

    def on_contextualization(self, contextualization, source_ids, source_positions, query_positions):
        return self.inner.on_contextualization(contextualization, source_ids, source_positions,
                                               query_positions)


def test_sparse_and_plain_paths_agree(tiny_model, tiny_tokenizer):
    session = ContextSession(tiny_model, tiny_tokenizer, TEXT)
    compiled = EDIT_SETS["one of each"].compile(tiny_model, tiny_tokenizer)
    for positions in (None, -1, [9, 2, 11]):
        torch.testing.assert_close(session.logits(Delegate(compiled), positions),
                                   session.logits(compiled, positions), atol=1e-5, rtol=1e-5)


def test_session_caches_and_leaves_the_model_alone(tiny_model, tiny_tokenizer):
    before = state_checksum(tiny_model)
    session = ContextSession(tiny_model, tiny_tokenizer, TEXT)
    k, d = tiny_model.config.num_senses, tiny_model.config.n_embd
    assert session.contextualization.shape == (k, session.n, session.n)
    assert session.senses.shape == (k, session.n, d)
    session.logits(EDIT_SETS["one of each"])
    session.compare(EDIT_SETS["knowledge"], words=[" HP"])
    assert state_checksum(tiny_model) == before
    # the cached tensors are not modified by edits either
    torch.testing.assert_close(session.logits(None), session.base_logits)
    with torch.no_grad():
        out = tiny_model(torch.tensor([session.token_ids]), output_contextualization=True,
                         output_senses=True)
    torch.testing.assert_close(session.contextualization, out.contextualization[0])
    torch.testing.assert_close(session.senses, out.senses[0])


def test_session_from_token_ids_without_tokenizer(tiny_model, tiny_tokenizer):
    ids = tiny_tokenizer.encode(TEXT)
    session = ContextSession(tiny_model, None, ids)
    edits = EditSet([AblateSense(ids[1], "all")])  # words by token id need no tokenizer
    with torch.no_grad():
        full = tiny_model(torch.tensor([ids]), intervention=edits.compile(tiny_model, None)).logits[0]
    torch.testing.assert_close(session.logits(edits, -1), full[-1], atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="empty"):
        ContextSession(tiny_model, tiny_tokenizer, "")
    with pytest.raises(ValueError, match="at most 64"):
        ContextSession(tiny_model, None, [1] * 65)


def test_compare_and_kl(tiny_model, tiny_tokenizer):
    session = ContextSession(tiny_model, tiny_tokenizer, TEXT)
    assert float(session.kl(None).abs().max()) < 1e-9
    edits = EditSet([ReplaceSense(" river", "all", vector=(tiny_model.wte.weight[
        tiny_tokenizer.encode(" HP")[0]] * 50).tolist())])
    result = session.compare(edits, position=-1, top=5, words=[" HP", " Apple"])
    assert result.position == session.n - 1 and result.token == " money"
    before = [t.prob for t in result.before]
    assert before == sorted(before, reverse=True) and len(before) == 5
    assert result.after[0].token == " HP"  # the river's senses now all point at " HP"
    assert " HP" in result.entered
    hp = result.words[0]
    assert hp.delta > 0 and hp.delta == pytest.approx(hp.logprob_after - hp.logprob_before)
    after_logits = session.logits(edits, -1)
    expected_kl = float(kl_divergence(session.base_logits[-1], after_logits))
    assert result.kl == pytest.approx(expected_kl) and result.kl > 0
    p = session.base_logits[-1].double().softmax(-1)
    q = after_logits.double().softmax(-1)
    assert result.kl == pytest.approx(float((p * (p / q).log()).sum()), rel=1e-6)
    data = result.to_dict()
    assert set(data) >= {"before", "after", "kl", "edits"} and data["edits"]["version"] == 1
    assert session.kl(edits).shape == (session.n,)


def test_generation_under_edits(tiny_model, tiny_tokenizer):
    prompt = "The MacBook is made by"
    plain = generate(tiny_model, tiny_tokenizer, prompt, max_new_tokens=8)
    assert plain == generate(tiny_model, tiny_tokenizer, prompt, max_new_tokens=8)  # greedy
    hp = tiny_tokenizer.encode(" HP")[0]
    # every sense of " by" (the last prompt token) becomes a large multiple of E[" HP"]
    edits = EditSet([ReplaceSense(" by", "all", vector=(tiny_model.wte.weight[hp] * 50).tolist())])
    pair = generate_side_by_side(tiny_model, tiny_tokenizer, prompt, edits, max_new_tokens=8)
    assert pair["before"] == plain
    assert pair["after"] != plain and pair["after"].startswith(" HP")
    # sampling with one seed is reproducible and leaves the global RNG alone
    torch.manual_seed(123)
    marker = torch.rand(1)
    torch.manual_seed(123)
    a = generate(tiny_model, tiny_tokenizer, prompt, max_new_tokens=6, do_sample=True, seed=7)
    assert torch.equal(torch.rand(1), marker)
    assert a == generate(tiny_model, tiny_tokenizer, prompt, max_new_tokens=6, do_sample=True, seed=7)


def test_seeded_sampling_is_reproducible_across_threads(tiny_model, tiny_tokenizer):
    """Several threads sampling at once with one seed each get the single-thread tokens (each
    call draws from its own generator, not the process-wide RNG)."""
    import threading

    prompt, n_threads, runs = "The bank by the river", 4, 3
    kwargs = dict(max_new_tokens=24, do_sample=True, temperature=2.0, seed=11)
    expected = generate(tiny_model, tiny_tokenizer, prompt, **kwargs)
    assert expected != generate(tiny_model, tiny_tokenizer, prompt, **{**kwargs, "seed": 12})
    assert (generate(tiny_model, tiny_tokenizer, prompt, **{**kwargs, "top_k": 1})
            == generate(tiny_model, tiny_tokenizer, prompt, max_new_tokens=24))  # top-1 = greedy
    results, start = [], threading.Barrier(n_threads)

    def worker():
        start.wait()
        for _ in range(runs):
            results.append(generate(tiny_model, tiny_tokenizer, prompt, **kwargs))

    threads = [threading.Thread(target=worker) for _ in range(n_threads)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [expected] * (n_threads * runs)
