"""Readouts, exact attribution and the sense bank on a tiny model."""

from __future__ import annotations

import pytest
import torch

from backpack_core.interpret.readouts import sense_readout
from backpack_core.interpret.sense_bank import SenseBank, model_fingerprint, sense_search
from backpack_core.interpret.session import ContextSession, attribute, context_readout
from backpack_core.model.vocab import WordError, parse_word, resolve_word, single_token_id

TEXT = "The MacBook is made by Apple and the bank by the river has money"


# -- words ----------------------------------------------------------------------------------

def test_resolve_word_single_multi_and_alternative_forms(tiny_tokenizer):
    single = resolve_word(tiny_tokenizer, " science")
    assert single.is_single and single.tokens == [" science"]
    bare = resolve_word(tiny_tokenizer, "science")
    assert not bare.is_single and "".join(bare.tokens) == "science"
    assert bare.alternatives[0].query == " science" and bare.alternatives[0].is_single
    assert "splits into" in bare.describe() and "' science'" in bare.describe()
    by_id = resolve_word(tiny_tokenizer, single.token_ids[0])
    assert by_id.tokens == [" science"]
    with pytest.raises(WordError, match="2 tokens|tokens"):
        single_token_id(tiny_tokenizer, "science", role="target")
    with pytest.raises(WordError, match="out of range"):
        resolve_word(tiny_tokenizer, 10_000, vocab_size=512)
    with pytest.raises(WordError):
        resolve_word(tiny_tokenizer, True)
    with pytest.raises(WordError, match="empty"):
        resolve_word(tiny_tokenizer, "")


def test_parse_word_one_rule_for_every_word_box(tiny_tokenizer):
    """`bank`, `' bank'`, ` bank` and `#id` all read as a user means them."""
    bank = single_token_id(tiny_tokenizer, " bank")
    assert parse_word("bank", tiny_tokenizer) == " bank"  # the in-text form, one token
    assert parse_word("' bank'", tiny_tokenizer) == " bank" == parse_word('" bank"', tiny_tokenizer)
    assert parse_word(" bank ", tiny_tokenizer) == " bank"  # typed with its space
    assert parse_word(f"#{bank}", tiny_tokenizer) == bank and parse_word(bank) == bank
    assert parse_word("'science'", tiny_tokenizer) == "science"  # quoted: exactly, even 2 tokens
    assert parse_word("science", tiny_tokenizer) == " science"  # ' science' is the one token
    assert parse_word("zzqx", tiny_tokenizer) == " zzqx"  # no single form: split as in a text
    for empty in ("", "   ", "''"):
        with pytest.raises(WordError, match="empty"):
            parse_word(empty, tiny_tokenizer)
    with pytest.raises(WordError, match="#123"):  # the message asks for what the box accepts
        single_token_id(tiny_tokenizer, "science")


# -- sense readout --------------------------------------------------------------------------

def test_sense_readout_scores_are_E_dot_senses(tiny_model, tiny_tokenizer):
    readout = sense_readout(tiny_model, tiny_tokenizer, " bank", top=5)
    assert not readout.multi_token and len(readout.pieces) == 1
    piece = readout.pieces[0]
    k, d = tiny_model.config.num_senses, tiny_model.config.n_embd
    assert piece.senses.shape == (k, d)
    with torch.no_grad():
        expected = tiny_model.sense_vectors(torch.tensor(piece.token_id))  # (k, d)
        logits = expected @ tiny_model.wte.weight[: len(tiny_tokenizer)].T  # (k, V)
    torch.testing.assert_close(piece.senses, expected)
    for sense in piece.readouts:
        top_scores = [t.score for t in sense.top]
        assert top_scores == sorted(top_scores, reverse=True)
        assert top_scores[0] == pytest.approx(float(logits[sense.sense].max()), abs=1e-5)
        assert sense.bottom[0].score == pytest.approx(float(logits[sense.sense].min()), abs=1e-5)
        t = sense.top[1]
        assert t.score == pytest.approx(float(logits[sense.sense, t.token_id]), abs=1e-5)
    data = readout.to_dict(vectors=True)
    assert len(data["pieces"][0]["senses"]) == k and len(data["pieces"][0]["sense_vectors"]) == k


def test_sense_readout_multi_token_word_shows_every_piece(tiny_model, tiny_tokenizer):
    readout = sense_readout(tiny_model, tiny_tokenizer, "MacBook", top=3)
    assert readout.multi_token
    assert [p.token for p in readout.pieces] == readout.word.tokens
    assert len(readout.pieces) == len(tiny_tokenizer.encode("MacBook")) >= 2
    assert any("splits into" in n for n in readout.notes)
    assert readout.to_dict()["multi_token"] is True


# -- context readout ------------------------------------------------------------------------

def test_context_readout(tiny_model, tiny_tokenizer):
    readout = context_readout(tiny_model, tiny_tokenizer, TEXT, top=3)
    n = len(tiny_tokenizer.encode(TEXT))
    assert len(readout.tokens) == n and len(readout.predictions) == n
    ctx = readout.contextualization
    assert ctx.shape == (tiny_model.config.num_senses, n, n)
    torch.testing.assert_close(ctx.sum(-1), torch.ones(ctx.shape[:2]))
    assert float(ctx.triu(1).abs().max()) == 0.0  # causal
    first = readout.predictions[0]
    assert first.next_token == readout.tokens[1] and 0 < first.next_prob < 1
    assert readout.predictions[-1].next_token is None
    assert len(readout.to_dict()["contextualization"]) == tiny_model.config.num_senses


# -- exact attribution ----------------------------------------------------------------------

@pytest.mark.parametrize("target", [" Apple", " HP", " money"])
@pytest.mark.parametrize("position", [-1, 0, 5])
def test_attribution_sums_to_the_models_logit(tiny_model, tiny_tokenizer, target, position):
    ids = torch.tensor([tiny_tokenizer.encode(TEXT)])
    with torch.no_grad():
        logits = tiny_model(ids).logits[0]  # (n, V), an independent full forward
    a = attribute(tiny_model, tiny_tokenizer, TEXT, target, position)
    target_id = tiny_tokenizer.encode(target)[0]
    i = position % ids.shape[1]
    assert a.position == i and a.contributions.shape == (tiny_model.config.num_senses, i + 1)
    assert a.logit == pytest.approx(float(logits[i, target_id]), abs=1e-5)
    assert a.total == pytest.approx(float(logits[i, target_id]), abs=1e-4)
    data = a.to_dict()
    assert sum(c["value"] for c in data["contributions"]) == pytest.approx(data["logit"], abs=1e-4)
    assert len(data["contributions"]) == a.contributions.numel()
    assert {c["position"] for c in data["contributions"]} == set(range(i + 1))


def test_attribution_matches_an_explicit_sum(tiny_model, tiny_tokenizer):
    """alpha[l,i,j] * (E_w . C(x_j)_l), written out with einsum on the model's own outputs."""
    ids = torch.tensor([tiny_tokenizer.encode(TEXT)])
    with torch.no_grad():
        out = tiny_model(ids, output_contextualization=True, output_senses=True)
        w = tiny_tokenizer.encode(" river")[0]
        expected = torch.einsum("kj,kjd,d->kj", out.contextualization[0, :, -1],
                                out.senses[0], tiny_model.wte.weight[w])
    a = attribute(tiny_model, tiny_tokenizer, TEXT, " river")
    torch.testing.assert_close(a.contributions, expected, atol=1e-6, rtol=1e-5)
    assert a.top(3)[0].value == pytest.approx(float(expected.flatten()[expected.abs().argmax()]))


def test_attribution_refuses_multi_token_target_and_bad_position(tiny_model, tiny_tokenizer):
    session = ContextSession(tiny_model, tiny_tokenizer, TEXT)
    with pytest.raises(WordError, match="tokens"):
        session.attribution("MacBook")
    with pytest.raises(ValueError, match="outside the text"):
        session.attribution(" HP", position=100)


# -- sense bank and sense search ------------------------------------------------------------

def test_sense_bank_cache_and_search(tiny_model, tiny_tokenizer, tmp_path, monkeypatch):
    monkeypatch.setenv("BACKPACK_CACHE", str(tmp_path))
    from backpack_core.interpret import sense_bank

    monkeypatch.setattr(sense_bank, "_MEMORY", type(sense_bank._MEMORY)())
    bank = SenseBank.for_model(tiny_model, progress=False)
    cfg = tiny_model.config
    assert bank.senses.shape == (cfg.vocab_size, cfg.num_senses, cfg.n_embd)
    files = list(tmp_path.glob("sense-bank-*.safetensors"))
    assert len(files) == 1 and bank.key == model_fingerprint(tiny_model)
    sense_bank._MEMORY.clear()
    loaded = SenseBank.for_model(tiny_model, progress=False)  # from disk this time
    assert loaded is not bank
    torch.testing.assert_close(loaded.senses, bank.senses)

    result = sense_search(tiny_model, tiny_tokenizer, " money", top=10, bank=loaded)
    money = tiny_tokenizer.encode(" money")[0]
    with torch.no_grad():  # brute force over the real vocabulary, the target excluded
        senses = tiny_model.sense_vectors(torch.arange(len(tiny_tokenizer)))  # (V, k, d)
        scores = senses @ tiny_model.wte.weight[money]  # (V, k)
        scores[money] = float("-inf")
    best = scores.flatten().topk(10)
    k = cfg.num_senses
    assert [(h.token_id, h.sense) for h in result.hits] == [(int(i) // k, int(i) % k)
                                                            for i in best.indices]
    assert result.hits[0].score == pytest.approx(float(best.values[0]), abs=1e-5)
    assert all(h.token_id != money for h in result.hits)
    with_target = sense_search(tiny_model, tiny_tokenizer, " money", top=200, bank=loaded,
                               exclude_targets=False)
    assert any(h.token_id == money for h in with_target.hits)

    # several targets = the sum of their output embeddings = that raw direction
    two = sense_search(tiny_model, tiny_tokenizer, [" money", " bank"], top=5, bank=loaded,
                       exclude_targets=False)
    direction = tiny_model.wte.weight[tiny_tokenizer.encode(" money") + tiny_tokenizer.encode(" bank")]
    raw = sense_search(tiny_model, tiny_tokenizer, direction.sum(0).detach(), top=5, bank=loaded)
    assert [(h.token_id, h.sense) for h in raw.hits] == [(h.token_id, h.sense) for h in two.hits]
    assert two.to_dict()["targets"] == [" money", " bank"]
    with pytest.raises(WordError, match="one token"):
        sense_search(tiny_model, tiny_tokenizer, "MacBook", bank=loaded)


def test_fingerprint_follows_the_weights(tiny_model):
    key = model_fingerprint(tiny_model)
    assert model_fingerprint(tiny_model) == key
    import copy

    other = copy.deepcopy(tiny_model)
    assert model_fingerprint(other) == key
    with torch.no_grad():
        other.sense_network.final_mlp.c_proj.bias.add_(1.0)  # in-place: version counter moves
    assert model_fingerprint(other) != key


def test_fingerprint_sees_data_edits_and_the_bank_is_rebuilt(tiny_model, tiny_tokenizer, tmp_path,
                                                             monkeypatch):
    """Issue 12 item 5: `.data` edits do not move the version counter; the key must still change."""
    import copy

    from backpack_core.interpret import sense_bank

    monkeypatch.setattr(sense_bank, "_MEMORY", type(sense_bank._MEMORY)())
    model = copy.deepcopy(tiny_model)
    before = SenseBank.for_model(model, directory=tmp_path, progress=False)
    version = model.wte.weight._version
    model.wte.weight.data[0] += 1  # no version bump
    model.sense_network.final_mlp.c_proj.bias.data[3] -= 0.5
    assert model.wte.weight._version == version
    key = model_fingerprint(model)
    assert key != before.key
    after = SenseBank.for_model(model, directory=tmp_path, progress=False)
    assert after.key == key and after is not before
    fresh = SenseBank.build(model, progress=False)
    torch.testing.assert_close(after.senses, fresh.senses, rtol=0, atol=0)
    assert not torch.equal(after.senses[0], before.senses[0])
    got = sense_search(model, tiny_tokenizer, " money", top=10, bank=after)
    want = sense_search(model, tiny_tokenizer, " money", top=10, bank=fresh)
    assert [(h.token_id, h.sense, h.score) for h in got.hits] == \
        [(h.token_id, h.sense, h.score) for h in want.hits]


def _tamper(path, change, checksum="recompute"):
    """Rewrite a cached bank file: `change(senses) -> senses`; the signature kept, recomputed
    (by someone who can read the cache's secret), forged (without it: a plain crc32 as before
    issue 20, or a signature under another secret), altered or dropped."""
    import zlib

    from safetensors import safe_open
    from safetensors.torch import save_file

    from backpack_core.interpret.sense_bank import cache_secret

    with safe_open(str(path), framework="pt") as f:
        meta, senses = f.metadata(), f.get_tensor("senses")
    senses = change(senses.clone()).contiguous()
    if checksum == "recompute":
        meta["hmac_sha256"] = SenseBank(senses).signature(cache_secret(path.parent))
    elif checksum == "forge":
        meta["crc32"] = f"{zlib.crc32(senses.view(torch.uint8).numpy().data):08x}"
        meta["hmac_sha256"] = SenseBank(senses).signature(b"\0" * 32)
    elif checksum == "alter":
        meta["hmac_sha256"] = meta["hmac_sha256"][:-1] + ("0" if meta["hmac_sha256"][-1] != "0" else "1")
    elif checksum == "drop":
        del meta["hmac_sha256"]
    save_file({"senses": senses}, str(path), metadata=meta)


def _nan(s):
    s[5, 1, 2] = float("nan")
    return s


def _one_row(s):
    s[300] += 0.5 * s[300].abs().amax()
    return s


@pytest.mark.parametrize("change, checksum, reason", [
    (lambda s: s.flip(0), "keep", "checksum"),  # permuted rows, old checksum
    (lambda s: s.flip(0), "recompute", "do not match the model"),  # permuted, checksum redone
    (_nan, "recompute", "NaN"),
    (lambda s: s[:-1], "recompute", "shape"),
    (lambda s: s[:, :, :-1], "recompute", "shape"),
    (lambda s: s, "drop", "no checksum"),
    (lambda s: s, "alter", "checksum"),
    # issue 20 item 19: one row altered (a row the old fixed-seed sample never checked)
    (_one_row, "forge", "does not match its checksum"),  # checksum redone without the secret
    (_one_row, "recompute", "senses of token 300 do not match the model"),  # with it
], ids=["permuted", "permuted-rechecksummed", "nan", "wrong-vocab", "wrong-d",
        "checksum-missing", "checksum-altered", "one-row-forged", "one-row-resigned"])
def test_sense_bank_cache_is_checked_on_load(tiny_model, tmp_path, monkeypatch, capsys,
                                             change, checksum, reason):
    """Issue 13: a cache file with the right key but wrong contents is rebuilt, not served."""
    from backpack_core.interpret import sense_bank

    monkeypatch.setattr(sense_bank, "_MEMORY", type(sense_bank._MEMORY)())
    good = SenseBank.for_model(tiny_model, directory=tmp_path, progress=False)
    path = SenseBank.path_for(good.key, tmp_path)
    _tamper(path, change, checksum)
    sense_bank._MEMORY.clear()
    capsys.readouterr()
    served = SenseBank.for_model(tiny_model, directory=tmp_path, progress=False)
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "sense bank: rebuilding" in err and reason in err, err
    torch.testing.assert_close(served.senses, good.senses, rtol=0, atol=0)
    sense_bank._MEMORY.clear()  # the rebuilt file is good again: loaded without a word
    again = SenseBank.for_model(tiny_model, directory=tmp_path, progress=False)
    assert capsys.readouterr().err == ""
    torch.testing.assert_close(again.senses, good.senses, rtol=0, atol=0)


def test_sense_bank_rows_checked_on_load_are_drawn_afresh(tiny_model):
    """Issue 20 item 19: the rows recomputed on load were drawn with a fixed seed, so an altered
    row outside them was served; now they are drawn afresh on every load."""
    bank = SenseBank.build(tiny_model, progress=False)
    assert torch.equal(bank.spot_check(tiny_model), torch.arange(512))  # a small vocabulary: all
    first, second = bank.spot_check(tiny_model, n=16), bank.spot_check(tiny_model, n=16)
    assert len(first) == len(second) == 16 and {0, 511} <= set(first.tolist())
    assert not torch.equal(first, second)


def test_float16_bank_passes_its_own_checks(tiny_model, tmp_path, monkeypatch, capsys):
    """A bank stored in float16 (the published size) loads back without a rebuild."""
    from backpack_core.interpret import sense_bank

    monkeypatch.setattr(sense_bank, "_MEMORY", type(sense_bank._MEMORY)())
    monkeypatch.setattr(sense_bank, "FLOAT32_LIMIT", 0)
    bank = SenseBank.for_model(tiny_model, directory=tmp_path, progress=False)
    assert bank.senses.dtype == torch.float16
    sense_bank._MEMORY.clear()
    capsys.readouterr()
    loaded = SenseBank.for_model(tiny_model, directory=tmp_path, progress=False)
    assert capsys.readouterr().err == "" and loaded is not bank
    torch.testing.assert_close(loaded.senses, bank.senses, rtol=0, atol=0)


@pytest.mark.parametrize("normalize", [False, True])
@pytest.mark.parametrize("largest", [True, False])
@pytest.mark.parametrize("pool", [None, 30])
def test_half_bank_two_pass_query_equals_the_exact_pass(tiny_model, normalize, largest, pool):
    """Issue 14: a float16 bank is searched in float16, then the candidates re-scored in float32:
    the same hits and scores as the exact float32 pass over the whole bank."""
    bank = SenseBank.build(tiny_model, progress=False, dtype=torch.float16)
    direction = tiny_model.wte.weight[[7, 40]].detach().sum(0)
    exclude, limit, top = [7, 40, 3], 500, 10
    got = bank.query(direction, top=top, exclude=exclude, vocab_limit=limit, largest=largest,
                     normalize=normalize, pool=pool)
    exact = bank.scores(direction, normalize)[:limit].clone()  # float32 over the whole bank
    exact[exclude] = float("-inf") if largest else float("inf")
    values, index = exact.flatten().topk(top, largest=largest)
    k = bank.num_senses
    assert [(t, s) for t, s, _ in got] == [(int(i) // k, int(i) % k) for i in index]
    torch.testing.assert_close(torch.tensor([v for _, _, v in got]), values, rtol=1e-6, atol=1e-6)
    assert bank.norms().dtype == torch.float32
    torch.testing.assert_close(bank.norms(), bank.senses.float().norm(dim=-1))


@pytest.mark.parametrize("normalize", [False, True])
def test_half_bank_bfloat16_candidates_give_the_exact_top20_on_many_directions(normalize):
    """The candidate pass runs on a bfloat16 copy of a float16 bank (made once, kept): over 40
    directions (sums of two rows, and Gaussian ones) the top 20 is the exact float32 pass's, in
    the same order, with the same scores."""
    gen = torch.Generator().manual_seed(0)
    senses = (torch.randn(4000, 4, 64, generator=gen) * 0.05).half()  # 16,000 rows, pool 512
    bank, k = SenseBank(senses), 4
    assert bank.candidate_rows().dtype == torch.bfloat16
    assert bank.candidate_rows() is bank.candidate_rows()  # made once
    torch.testing.assert_close(bank.candidate_rows().float(), bank.flat.float(), rtol=4e-3, atol=0)
    for i in range(40):
        if i % 2:
            direction = torch.randn(64, generator=gen)
        else:
            direction = bank.flat[torch.randint(0, 16000, (2,), generator=gen)].float().sum(0)
        got = bank.query(direction, top=20, normalize=normalize)
        exact = bank.scores(direction, normalize).flatten()  # float32 over the whole bank
        values, index = exact.topk(20)
        assert [(t, s) for t, s, _ in got] == [(int(j) // k, int(j) % k) for j in index]
        torch.testing.assert_close(torch.tensor([v for _, _, v in got]), values,
                                   rtol=1e-6, atol=1e-6)


def adversarial_bank(kind: str) -> tuple[SenseBank, torch.Tensor]:
    """A float16 bank (1,500 tokens x 4 senses x 64) built to defeat a bfloat16 candidate pass
    with a fixed pool, and the direction that does it.

    - "rounded_down": 20 rows of 1 + 3 * 2**-10 (bfloat16 rounds every entry down, to 1) are the
      true top along ones, against 2,000 rows of 40 entries 1 + 5 * 2**-10 (rounded up) and 24 of
      1 - 2**-11 (rounded up to 1), which score 64.18 < 64.19 exactly but 64.5 > 64 in bfloat16;
    - "near_ties": 2,000 rows within ~3e-4 of one row, searched along that row: their scores
      differ by less than the bfloat16 pass can resolve.
    The rest is small random rows; the special rows sit at the end (ties in index order do not
    help)."""
    gen = torch.Generator().manual_seed(0)
    d, rows = 64, 6000
    flat = torch.randn(rows, d, generator=gen) * 0.05
    if kind == "rounded_down":
        direction = torch.ones(d)
        flat[-2020:-20] = 1 - 2**-11
        flat[-2020:-20, :40] = 1 + 5 * 2**-10
        flat[-20:] = 1 + 3 * 2**-10
    else:
        direction = torch.randn(d, generator=gen)
        flat[-2000:] = direction + torch.randn(2000, d, generator=gen) * 3e-4
    return SenseBank(flat.half().view(rows // 4, 4, d)), direction


def fixed_pool_recall(bank: SenseBank, direction: torch.Tensor, top: int = 20, pool: int = 512,
                      normalize: bool = False) -> float:
    """Recall@top of the candidate pass before issue 20: the `pool` best bfloat16 scores,
    re-scored exactly."""
    approx = bank.approximate_scores(direction, normalize).flatten()
    exact = bank.scores(direction, normalize).flatten()
    candidates = approx.topk(pool).indices
    found = set(candidates[exact[candidates].topk(top).indices].tolist())
    return len(found & set(exact.topk(top).indices.tolist())) / top


@pytest.mark.parametrize("kind", ["rounded_down", "near_ties"])
@pytest.mark.parametrize("normalize", [False, True])
@pytest.mark.parametrize("largest", [True, False])
def test_half_bank_search_is_exact_on_banks_built_to_defeat_it(kind, normalize, largest):
    """Issue 20, item 10: with a fixed pool of 512 bfloat16 candidates, recall@20 fell to 0.0
    (rows bfloat16 rounds down) and 0.25 (near-ties). The candidates are now every row whose
    best possible score (approximate + bound) reaches the 20th worst possible one, so the hits
    are the exact pass's. The bound holds on every row and is not vacuous (<= 2% of |r| |v|)."""
    bank, direction = adversarial_bank(kind)
    direction = direction if largest else -direction
    if largest and not normalize:
        assert fixed_pool_recall(bank, direction) < 0.5  # the bank defeats a fixed pool
    approx = bank.approximate_scores(direction, normalize)
    exact = bank.scores(direction, normalize)
    bound = bank.approximate_error(direction, normalize)
    assert ((approx - exact).abs() <= bound).all()
    scale = 1 if normalize else bank.norms() * direction.norm()
    assert (bound <= 0.02 * scale + 1e-30).all()
    got = bank.query(direction, top=20, largest=largest, normalize=normalize)
    values, index = exact.flatten().topk(20, largest=largest)
    k = bank.num_senses
    # the exact top 20; rows tied in float32 with the 20th may stand in for one another
    torch.testing.assert_close(torch.tensor([v for _, _, v in got]), values, rtol=1e-6, atol=0)
    got_rows = {(t, s) for t, s, _ in got}
    last = values[-1]
    surely = index[values > last] if largest else index[values < last]
    assert {(int(i) // k, int(i) % k) for i in surely} <= got_rows
    for t, s, v in got:
        assert abs(float(exact[t, s]) - v) <= 1e-6 * abs(v)


def test_half_bank_error_bound_holds_on_random_banks_and_directions():
    """`approximate_error` bounds the bfloat16 pass on ordinary banks too (Gaussian rows of
    several scales, directions with entries of very different sizes, the smallest ones below
    bfloat16's normal range after scaling)."""
    gen = torch.Generator().manual_seed(1)
    for scale in (1e-3, 0.05, 30.0):
        bank = SenseBank((torch.randn(500, 4, 64, generator=gen) * scale).half())
        for i in range(6):
            direction = torch.randn(64, generator=gen) * torch.logspace(-45 if i % 2 else -3, 0, 64)
            for normalize in (False, True):
                approx = bank.approximate_scores(direction, normalize)
                exact = bank.scores(direction, normalize)
                assert ((approx - exact).abs() <= bank.approximate_error(direction, normalize)).all()


def test_half_bank_chunks_on_threads_give_the_same_scores(tiny_model, monkeypatch):
    """The half-precision pass split over a thread pool (several chunks, 2 threads) gives the
    same approximate scores as one product over the whole bank."""
    bank = SenseBank.build(tiny_model, progress=False, dtype=torch.float16)
    direction = tiny_model.wte.weight[5].detach()
    whole = bank.approximate_scores(direction)
    monkeypatch.setattr(SenseBank, "_ROWS", 100)  # 21 chunks
    monkeypatch.setattr(SenseBank, "_NORM_ROWS", 300)  # 7 chunks, a ragged last one
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        chunked = bank.approximate_scores(direction)
        normalized = bank.approximate_scores(direction, normalize=True)
    finally:
        torch.set_num_threads(threads)
    torch.testing.assert_close(chunked, whole, rtol=0, atol=0)
    exact = bank.scores(direction, normalize=True)
    torch.testing.assert_close(normalized, exact, rtol=2e-2, atol=2e-3)
    torch.testing.assert_close(bank.norms(), bank.senses.float().norm(dim=-1), rtol=1e-6, atol=0)
