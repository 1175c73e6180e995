import math

import numpy as np
import torch

from backpack_core import Backpack, ModelConfig, train_bpe
from backpack_core.common.datasets import load_benchmark
from backpack_core.model.config import PRESETS
from backpack_core.model.evaluation import perplexity, spearman, word_similarity


def test_spearman_matches_definition():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == 1.0
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == -1.0
    # ties get average ranks: ranks x = [1, 2.5, 2.5, 4], y = [1, 2, 3, 4]
    rx, ry = [1, 2.5, 2.5, 4], [1, 2, 3, 4]
    mx, my = sum(rx) / 4, sum(ry) / 4
    cov = sum((a - mx) * (b - my) for a, b in zip(rx, ry, strict=True))
    expected = cov / math.sqrt(sum((a - mx) ** 2 for a in rx) * sum((b - my) ** 2 for b in ry))
    assert abs(spearman([1, 2, 2, 3], [1, 2, 3, 4]) - expected) < 1e-12


def test_perplexity_equals_exp_mean_loss():
    torch.manual_seed(0)
    model = Backpack(ModelConfig(**PRESETS["tiny"])).eval()
    ids = torch.randint(0, 512, (150,))
    result = perplexity(model, ids, words=100, seq_len=64, batch_size=2)
    # reference: the model's own loss on each window, weighted by predicted tokens
    nll, count = 0.0, 0
    for i in range(0, 150 - 1, 64):
        w = ids[i:i + 64][None]
        if w.shape[1] < 2:
            continue
        with torch.no_grad():
            loss = model(w, labels=w).loss
        nll += float(loss) * (w.shape[1] - 1)
        count += w.shape[1] - 1
    assert result.tokens == count
    assert abs(result.loss - nll / count) < 1e-5
    assert abs(result.word_perplexity - math.exp(nll / 100)) < 1e-3 * math.exp(nll / 100)


def test_word_similarity_covers_methods_and_pairs():
    pairs = load_benchmark("wordsim353")
    assert len(pairs) == 353 and pairs[0] == ("love", "sex", 6.77)
    words = sorted({w for p in pairs[:60] for w in p[:2]})
    tok = train_bpe([" ".join(words)] * 30, 600, min_frequency=1)
    torch.manual_seed(0)
    model = Backpack(ModelConfig(**{**PRESETS["tiny"], "vocab_size": 640})).eval()
    result = word_similarity(model, tok, "wordsim353", extra={"constant_len": lambda a, b: len(a + b)})
    assert 0 < result.pairs_used <= 353
    methods = set(result.spearman)
    assert {"embedding", "sense_0", "sense_3", "sense_pairs_min", "sense_pairs_max",
            "sense_pairs_mean", "senses_mean", "constant_len"} <= methods
    assert all(-1 <= v <= 1 for v in result.spearman.values() if not math.isnan(v))


def test_readable_senses_counts_related_words_in_the_best_sense(tiny_model, tiny_tokenizer):
    from backpack_core.model.evaluation import MIN_RELATED, readable_senses

    tok, model = tiny_tokenizer, tiny_model
    bank = tok.encode(" bank")[0]
    with torch.no_grad():
        logits = model.output_logits(model.sense_vectors(torch.tensor([bank]))[0])[:, :len(tok)]
    tops = [[tok.decode([i]).strip().lower() for i in row] for row in logits.topk(10, -1).indices.tolist()]
    words = [w for w in tops[2] if w.isalpha()]
    related = set(words[:MIN_RELATED]) | {"zebra"}  # 3 of sense 2's top words, one absent word
    (res, nothing, split) = readable_senses(model, tok, {"bank": related, "river": {"zebra"},
                                                         "MacBookish": {"bank"}})
    best = max(len(set(t) & related) for t in tops)
    assert len(res.related_hits) == best >= MIN_RELATED and res.readable
    assert set(res.related_hits) == set(tops[res.sense]) & related
    assert not nothing.readable and nothing.sense == 0 and nothing.related_hits == []
    assert split.sense is None and not split.readable  # several tokens: no senses of its own


def test_related_words_among_nameable_words_skips_what_no_top_list_can_show(tiny_tokenizer):
    """The card's rule since 2026-12-02: a noun's related words are its nearest word2vec words
    among those the vocabulary holds as one word-initial token."""
    from gensim.models import KeyedVectors

    from backpack_core.model.evaluation import nameable_words, related_words

    among = nameable_words(tiny_tokenizer)
    single = [w for w in ("bank", "river", "money", "the") if len(tiny_tokenizer.encode(" " + w)) == 1]
    assert len(single) >= 3 and set(single) <= among
    assert "zzyzxqq" not in among and all(w.isalpha() and w == w.lower() for w in among)

    wv = KeyedVectors(vector_size=2)
    near, far = single[1], single[2]
    words = [single[0], "zzyzxqq", near, "qqxyzzy", far]  # near to far from single[0]
    angles = np.array([0.0, 0.1, 0.2, 0.3, 3.0])
    wv.add_vectors(words, np.stack([np.cos(angles), np.sin(angles)], 1).astype(np.float32))
    assert related_words(wv, single[0], topn=2) == {"zzyzxqq", near}
    assert related_words(wv, single[0], topn=2, among=among) == {near, far}
    assert related_words(wv, "absent", among=among) == set()
