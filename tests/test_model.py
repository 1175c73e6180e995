"""The model core: shapes, the cache, padding, the twin, saving and loading, tokenizers, generate."""

import json
import os

import pytest
import torch

from backpack_core import (
    Backpack,
    CheckpointError,
    ModelConfig,
    gpt2_tokenizer,
    load_backpack,
    save_backpack,
    train_bpe,
)
from backpack_core.model.backpack import count_parameters, flops_per_token
from backpack_core.model.config import PRESETS
from tests.conftest import HANG_S


def tiny(**overrides):
    torch.manual_seed(0)
    return Backpack(ModelConfig(**{**PRESETS["tiny"], **overrides})).eval()


def test_forward_shapes_and_loss():
    model = tiny()
    ids = torch.randint(0, 512, (2, 10))
    out = model(ids, labels=ids, output_contextualization=True, output_senses=True,
                output_hidden_states=True)
    assert out.logits.shape == (2, 10, 512)
    assert out.contextualization.shape == (2, 4, 10, 10)
    assert out.senses.shape == (2, 4, 10, 32)
    assert out.hidden_states.shape == (2, 10, 32)
    # weights are a causal distribution over sources, per sense and query
    alpha = out.contextualization
    torch.testing.assert_close(alpha.sum(-1), torch.ones(2, 4, 10))
    assert alpha.triu(1).abs().max() == 0
    manual = torch.nn.functional.cross_entropy(out.logits[:, :-1].reshape(-1, 512),
                                               ids[:, 1:].reshape(-1))
    torch.testing.assert_close(out.loss, manual)


def test_output_is_weighted_sum_of_senses():
    """logits_i = E sum_l sum_j alpha[l,i,j] C(x_j)_l, with senses context-free."""
    model = tiny()
    ids = torch.randint(0, 512, (1, 7))
    out = model(ids, output_contextualization=True, output_senses=True)
    torch.testing.assert_close(out.senses[0].transpose(0, 1), model.sense_vectors(ids[0]))
    mixed = torch.einsum("kij,kjd->id", out.contextualization[0], out.senses[0])
    torch.testing.assert_close(out.logits[0], mixed @ model.wte.weight.T, atol=1e-5, rtol=1e-5)


def test_cache_continues_exactly():
    model = tiny()
    ids = torch.randint(0, 512, (2, 12))
    full = model(ids, output_contextualization=True)
    first = model(ids[:, :5], use_cache=True)
    second = model(ids[:, 5:9], past_key_values=first.past_key_values, use_cache=True)
    third = model(ids[:, 9:], past_key_values=second.past_key_values, use_cache=True,
                  output_contextualization=True)
    logits = torch.cat([first.logits, second.logits, third.logits], dim=1)
    torch.testing.assert_close(logits, full.logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(third.contextualization, full.contextualization[:, :, 9:],
                               atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("side", ["left", "right"])
def test_padding_never_leaks(side):
    model = tiny()
    ids = torch.randint(1, 512, (2, 9))
    mask = torch.ones(2, 9, dtype=torch.long)
    padded = ids.clone()
    real = slice(3, 9) if side == "left" else slice(0, 6)
    pad = slice(0, 3) if side == "left" else slice(6, 9)
    mask[1, pad] = 0
    padded[1, pad] = 0
    out = model(padded, attention_mask=mask, output_contextualization=True)
    alone = model(ids[1:2, real] if side == "left" else padded[1:2, real],
                  output_contextualization=True)
    torch.testing.assert_close(out.logits[1, real], alone.logits[0], atol=1e-5, rtol=1e-5)
    # no real query puts weight on a padded source
    real_rows = out.contextualization[1][:, real]
    assert real_rows[..., pad].abs().max() == 0
    # the unpadded row is unaffected by its neighbour's padding
    torch.testing.assert_close(out.logits[0], model(ids[:1]).logits[0], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("model_kind", ["backpack", "transformer"])
def test_cache_remembers_the_padding_of_its_prefix(model_kind):
    """A cached forward continued without attention_mask after a left-padded prefix: the cache
    knows which of its keys are padding, so they stay invisible and positions keep counting
    real tokens (issue 20, item 11: the padding was attended to, logits off by up to 5.78).
    The same as passing the full mask, and as the unpadded row alone."""
    model = tiny(model_kind=model_kind)
    ids = torch.randint(1, 512, (2, 9), generator=torch.Generator().manual_seed(3))
    mask = torch.ones(2, 9, dtype=torch.long)
    mask[1, :4] = 0  # row 1: 4 pads on the left, then 5 tokens
    new = torch.randint(1, 512, (2, 3), generator=torch.Generator().manual_seed(4))
    with torch.inference_mode():
        prefix = model(ids, attention_mask=mask, use_cache=True)
        without = model(new, past_key_values=prefix.past_key_values, use_cache=True)
        prefix = model(ids, attention_mask=mask, use_cache=True)
        full_mask = torch.cat([mask, torch.ones(2, 3, dtype=torch.long)], 1)
        with_mask = model(new, attention_mask=full_mask, past_key_values=prefix.past_key_values,
                          use_cache=True)
        alone = model(torch.cat([ids[1:, 4:], new[1:]], 1))
    torch.testing.assert_close(without.logits, with_mask.logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(without.logits[1], alone.logits[0, -3:], atol=1e-5, rtol=1e-5)
    # and once more without a mask: the cache still remembers
    again = model(new[:, :1], past_key_values=without.past_key_values, use_cache=True)
    alone = model(torch.cat([ids[1:, 4:], new[1:], new[1:, :1]], 1))
    torch.testing.assert_close(again.logits[1, 0], alone.logits[0, -1], atol=1e-5, rtol=1e-5)


def test_transformer_twin():
    model = tiny(model_kind="transformer")
    assert not hasattr(model, "sense_network")
    out = model(torch.randint(0, 512, (1, 6)), output_contextualization=True)
    assert out.logits.shape == (1, 6, 512) and out.contextualization is None
    parts = count_parameters(model)
    assert "sense_network" not in parts and parts["total"] == sum(
        p.numel() for p in model.parameters())


def test_flops_count_more_for_backpack():
    bp, tf = ModelConfig(**PRESETS["tiny"]), ModelConfig(**PRESETS["tiny"], model_kind="transformer")
    assert flops_per_token(bp, 64) > flops_per_token(tf, 64) > 0


def test_too_long_and_bad_config_are_clear():
    model = tiny()
    with pytest.raises(ValueError, match="longer than the model's context of 64"):
        model(torch.zeros(1, 65, dtype=torch.long))
    with pytest.raises(ValueError, match="n_embd .* divisible by num_senses"):
        ModelConfig(n_embd=30, n_head=2, num_senses=4)
    with pytest.raises(ValueError, match="model_kind must be one of"):
        ModelConfig(model_kind="rnn")


def test_published_details_change_the_function():
    base = tiny()
    torch.manual_seed(0)
    published = Backpack(ModelConfig(**PRESETS["tiny"], scale_attn_by_inverse_layer_idx=True,
                                     sense_mask_value=-10000.0)).eval()
    published.load_state_dict(base.state_dict())
    ids = torch.randint(0, 512, (1, 8))
    assert not torch.allclose(base(ids).logits, published(ids).logits)


def test_save_load_round_trip(tmp_path):
    model = tiny()
    tok = train_bpe(["the river bank", "the bank of the river", "money in the bank"] * 20, 300)
    save_backpack(model, tok, tmp_path)
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {
        p.name for p in tmp_path.iterdir()}
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == "backpack"
    loaded, tok2 = load_backpack(tmp_path, device="cpu")
    ids = torch.tensor([tok.encode("the river bank")])
    assert torch.equal(loaded(ids).logits, model(ids).logits)
    assert tok2.encode("money in the bank") == tok.encode("money in the bank")
    assert not any(p.name.endswith(".tmp") for p in tmp_path.iterdir())


def test_save_load_through_transformers(tmp_path):
    from transformers import AutoModelForCausalLM

    from backpack_core import BackpackLM

    lm = BackpackLM.from_backpack(tiny())
    lm.save_pretrained(tmp_path)
    ids = torch.randint(0, 512, (1, 9))
    again = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert isinstance(again, BackpackLM)
    assert torch.equal(again(ids).logits, lm(ids).logits)
    # our light loader reads the same files (given a tokenizer that fits the tiny vocabulary)
    (tmp_path / "tokenizer.json").write_text(train_bpe(["a b c"] * 5, 280).backend.to_str())
    light, _ = load_backpack(tmp_path)
    assert torch.equal(light(ids).logits, lm.backpack(ids).logits)


def test_bad_sources_are_clear(tmp_path):
    with pytest.raises(CheckpointError, match="not a directory"):
        load_backpack(tmp_path / "nope")
    with pytest.raises(CheckpointError, match="no config.json"):
        load_backpack(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_backpack(tmp_path)
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(CheckpointError, match="neither model.safetensors nor pytorch_model.bin"):
        load_backpack(tmp_path)
    with pytest.raises(ValueError, match="unknown dtype"):
        from backpack_core import resolve_dtype
        resolve_dtype("float7", torch.device("cpu"))


def test_gpt2_tokenizer_is_byte_identical():
    tok = gpt2_tokenizer()
    assert len(tok) == 50257 and tok.eos_token_id == 50256
    assert tok.encode("Hello world, science!") == [15496, 995, 11, 3783, 0]
    assert tok.convert_ids_to_tokens([3783]) == ["Ġscience"]
    text = "Backpacks carry senses: naïve café ☕ <|endoftext|>"
    assert tok.decode(tok.encode(text)) == text
    assert tok.encode("<|endoftext|>") == [50256]
    hf = tok.to_transformers()
    assert hf("Hello world, science!").input_ids == [15496, 995, 11, 3783, 0]


def test_trained_bpe_has_eos_first():
    tok = train_bpe(["science and engineering"] * 50, 300)
    assert tok.eos_token_id == 0
    assert tok.decode(tok.encode("science and engineering")) == "science and engineering"


def test_fused_training_path_and_dedup_compute_the_same_function():
    """Training takes a fused attention path (no weights materialised) and may compute senses once
    per distinct token; both must equal the explicit path, gradients included."""
    model = tiny()
    ids = torch.randint(0, 512, (3, 40))
    explicit = model(ids, labels=ids, output_contextualization=True)  # explicit weights
    fused = model(ids, labels=ids)
    torch.testing.assert_close(fused.logits, explicit.logits, atol=1e-5, rtol=1e-5)
    grads_explicit = torch.autograd.grad(explicit.loss, list(model.parameters()))
    model.dedup_senses = True
    grads_fused = torch.autograd.grad(model(ids, labels=ids).loss, list(model.parameters()))
    for a, b in zip(grads_explicit, grads_fused, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_dedup_senses_is_refused_with_dropout_in_training():
    """With dropout, deduplicated senses would share one dropout mask per token type: refused
    in training mode (and in the training config); fine in eval mode or without dropout."""
    from backpack_core.training.config import ConfigError, load_run_config

    ids = torch.randint(0, 512, (2, 16))
    model = tiny(embd_pdrop=0.1, resid_pdrop=0.1)
    model.dedup_senses = True
    with torch.no_grad():
        reference = model(ids).logits  # eval mode: dropout off, dedup exact
        model.train()
        with pytest.raises(ValueError, match="dedup_senses is exact only without dropout"):
            model(ids)
        model.eval()
        torch.testing.assert_close(model(ids).logits, reference)
        no_dropout = tiny().train()
        no_dropout.dedup_senses = True
        no_dropout(ids)
    with pytest.raises(ConfigError, match="train.dedup_senses is exact only without dropout"):
        load_run_config("tiny", ["train.dedup_senses=true", "model.embd_pdrop=0.1"])
    assert load_run_config("tiny", ["train.dedup_senses=true"]).train.dedup_senses


def test_loading_leaves_torch_init_alone_and_skips_meta_init(tiny_model_dir, monkeypatch):
    """Loading builds the model on the meta device without swapping torch.nn.init functions
    (process-wide: another thread building a model at that moment would get uninitialised
    weights), and without running N(0, s) init on meta tensors (slow: imports torch._dynamo)."""
    from backpack_core.model.loading import load_backpack

    names = ("normal_", "uniform_", "kaiming_uniform_", "ones_", "zeros_")
    originals = {name: getattr(torch.nn.init, name) for name in names}
    seen = []
    built = Backpack.__init__

    def spy_init(self, config):
        seen.append({name: getattr(torch.nn.init, name) is fn for name, fn in originals.items()})
        built(self, config)

    monkeypatch.setattr(Backpack, "__init__", spy_init)
    model, _ = load_backpack(tiny_model_dir)
    assert seen and all(all(same.values()) for same in seen), seen
    assert model.wte.weight.abs().sum() > 0

    def no_meta_normal(tensor, *args, **kwargs):
        assert not tensor.is_meta, "N(0, s) init ran on a meta tensor"
        return originals["normal_"](tensor, *args, **kwargs)

    monkeypatch.setattr(torch.nn.init, "normal_", no_meta_normal)
    with torch.device("meta"):
        Backpack(ModelConfig(**PRESETS["tiny"]))
    torch.manual_seed(0)
    a = Backpack(ModelConfig(**PRESETS["tiny"]))  # off the meta device: initialised as before
    assert float(a.wte.weight.detach().std()) == pytest.approx(0.02, rel=0.1)
    assert float(a.contextualizer.wpe.weight.detach().std()) == pytest.approx(0.02, rel=0.1)


def test_inspection_loads_in_float32_by_default_on_every_device(tiny_model_dir):
    """Exact attribution needs fp32: the default dtype is float32 on CUDA too; bf16 on request."""
    from backpack_core import load_backpack, resolve_dtype

    for device in ("cpu", "cuda", "cuda:1"):
        assert resolve_dtype(None, torch.device(device)) == torch.float32
        assert resolve_dtype("auto", torch.device(device)) == torch.float32
    assert resolve_dtype("bf16", torch.device("cuda")) == torch.bfloat16
    model, _ = load_backpack(tiny_model_dir)
    assert model.wte.weight.dtype == torch.float32


def _old_loss(logits, labels):  # the loss before issue 14: sliced logits, upcast
    return torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1).float(),
                                             labels[:, 1:].flatten(), ignore_index=-100)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_shifted_label_loss_equals_the_sliced_loss_with_gradients(dtype, monkeypatch):
    """Issue 14: labels shifted with -100 instead of slicing the logits: the same loss and the
    same gradient; half-precision logits go in checkpointed float32 pieces."""
    from backpack_core.model import backpack as model_module
    from backpack_core.model.backpack import next_token_loss

    monkeypatch.setattr(model_module, "LOSS_CHUNK", 7)  # several pieces, a ragged last one
    torch.manual_seed(0)
    logits = torch.randn(3, 10, 50).to(dtype)
    labels = torch.randint(0, 50, (3, 10))
    labels[0, 4] = labels[2, 9] = -100
    a = logits.clone().requires_grad_()
    b = logits.clone().requires_grad_()
    old, new = _old_loss(a, labels), next_token_loss(b, labels)
    torch.testing.assert_close(new, old, rtol=1e-6, atol=1e-6)
    old.backward()
    new.backward()
    torch.testing.assert_close(b.grad, a.grad, rtol=0, atol=1e-6 if dtype == torch.float32 else 1e-2)
    rows = next_token_loss(logits, labels, reduction="none")
    assert rows.shape == (3, 10) and (rows[:, -1] == 0).all() and rows[0, 3] == 0
    manual = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1).float(),
                                               labels[:, 1:].flatten(), reduction="none")
    torch.testing.assert_close(rows[:, :-1].flatten(), manual, rtol=1e-6, atol=1e-6)


def test_model_loss_and_gradients_equal_the_sliced_loss():
    model = tiny().train()
    ids = torch.randint(0, 512, (2, 16))
    out = model(ids, labels=ids)
    old = _old_loss(out.logits, ids)
    torch.testing.assert_close(out.loss, old, rtol=0, atol=1e-6)
    params = list(model.parameters())
    for a, b in zip(torch.autograd.grad(out.loss, params, retain_graph=True),
                    torch.autograd.grad(old, params), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("n_embd, num_senses", [(32, 4), (128, 16)])
def test_fused_mix_equals_the_explicit_weights(n_embd, num_senses):
    """The fast mixing (queries and keys zero-padded to the value width on CPU) is the explicit
    softmax-then-weighted-sum, forward and backward, and runs SDPA's fused CPU kernel."""
    from backpack_core.model.backpack import fused_mix

    model = tiny(n_embd=n_embd, num_senses=num_senses, n_head=4)
    b, s, k, d = 2, 33, num_senses, n_embd  # with gradients: flash_mix
    queries = torch.randn(b, k, s, d // k, requires_grad=True)
    keys = torch.randn(b, k, s, d // k, requires_grad=True)
    senses = torch.randn(b, k, s, d, requires_grad=True)
    allowed = torch.ones(s, s, dtype=torch.bool).tril()[None, None]
    explicit = model.mix(model.sense_weight_network(queries, keys, allowed), senses)
    with torch.profiler.profile() as prof:
        fast = fused_mix(queries, keys, senses)
    assert any("flash_attention" in e.key for e in prof.key_averages()), "the fused kernel ran"
    torch.testing.assert_close(fast, explicit, rtol=1e-5, atol=1e-5)
    grad = torch.randn_like(fast)
    for a, e in zip(torch.autograd.grad(fast, (queries, keys, senses), grad),
                    torch.autograd.grad(explicit, (queries, keys, senses), grad), strict=True):
        torch.testing.assert_close(a, e, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("s", [1, 15, 16, 17, 64, 100])
@pytest.mark.parametrize("rows", [16, 64])
def test_blocked_mix_equals_the_explicit_weights(s, rows):
    """Inference mixing by blocks of query rows over the keys up to each block's end equals the
    explicit softmax-then-weighted-sum (ragged last blocks, one block, one token); without
    gradients fused_mix takes it on CPU."""
    from backpack_core.model.backpack import blocked_mix, fused_mix

    model = tiny(n_embd=128, num_senses=16, n_head=4)
    b, k, d = 2, 16, 128
    queries, keys = torch.randn(b, k, s, d // k) * 3, torch.randn(b, k, s, d // k) * 3
    senses = torch.randn(b, k, s, d)
    allowed = torch.ones(s, s, dtype=torch.bool).tril()[None, None]
    explicit = model.mix(model.sense_weight_network(queries, keys, allowed), senses)
    torch.testing.assert_close(blocked_mix(queries, keys, senses, rows), explicit,
                               rtol=1e-5, atol=1e-5)
    with torch.inference_mode(), torch.profiler.profile() as prof:
        fast = fused_mix(queries, keys, senses)
    assert not any("flash_attention" in e.key for e in prof.key_averages()), "blocked, not flash"
    torch.testing.assert_close(fast, explicit, rtol=1e-5, atol=1e-5)


def test_fast_mixing_in_the_model_equals_the_weights_path_at_the_shipped_width():
    """Inference without weights (fast path; an all-ones attention mask too) equals the explicit
    path that inspection uses, at k = 16 senses of d/k = 8 (values 16x wider than queries)."""
    model = tiny(n_embd=128, num_senses=16, n_head=4)
    ids = torch.randint(0, 512, (2, 64))
    with torch.no_grad():
        explicit = model(ids, output_contextualization=True).logits
        fast = model(ids).logits
        ones = model(ids, attention_mask=torch.ones_like(ids)).logits
    torch.testing.assert_close(fast, explicit, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ones, explicit, rtol=1e-5, atol=1e-5)


def test_half_precision_loss_in_pieces_trains_under_autocast(monkeypatch):
    """GPU-style bf16 autocast (here on CPU): the loss goes in checkpointed float32 pieces and
    its gradients match the whole-logits loss."""
    from backpack_core.model import backpack as model_module

    model = tiny().train()
    ids = torch.randint(0, 512, (2, 24))
    params = list(model.parameters())

    def grads():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(ids, labels=ids)
        assert out.logits.dtype == torch.bfloat16
        return out.loss.float(), torch.autograd.grad(out.loss, params)

    whole_loss, whole = grads()
    monkeypatch.setattr(model_module, "LOSS_CHUNK", 5)  # 10 pieces
    loss, pieces = grads()
    torch.testing.assert_close(loss, whole_loss, rtol=1e-5, atol=1e-5)
    for a, b in zip(pieces, whole, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("autocast", [False, True])
def test_sense_weight_scores_and_softmax_run_in_float32(autocast):
    """bf16 queries/keys of a trained model's magnitude (unscaled scores ~2000, where bf16 steps
    are 16 apart): the weights equal the float32 computation from the same inputs, with or
    without bf16 autocast (training). With the einsum in bf16 they differ by ~0.5."""
    from backpack_core.model.backpack import SenseWeightNetwork, causal_allowed
    from backpack_core.model.config import ModelConfig

    torch.manual_seed(0)
    net = SenseWeightNetwork(ModelConfig(vocab_size=64, n_positions=32, n_embd=64, n_layer=1,
                                         n_head=2, num_senses=8))
    queries = (torch.randn(2, 8, 12, 8) * 16).bfloat16()  # (b, k, s, d/k)
    keys = (torch.randn(2, 8, 12, 8) * 16).bfloat16()
    allowed = causal_allowed(0, 12, None, torch.device("cpu"))
    scores = torch.einsum("bkih,bkjh->bkij", queries.float(), keys.float()) / 8 ** 0.5
    expected = scores.masked_fill(~allowed, float("-inf")).softmax(-1)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        weights = net(queries, keys, allowed)
    assert weights.dtype == torch.bfloat16
    assert (weights.float() - expected).abs().max() < 8e-3  # bf16 rounding of the weights only


def test_blocked_mix_scores_run_in_float32():
    """bf16 inputs of a trained model's magnitude: blocked_mix equals the float32 mixing of the
    same inputs up to the bf16 rounding of its output (q . k in bf16 would be off by ~0.5)."""
    from backpack_core.model.backpack import blocked_mix

    torch.manual_seed(0)
    queries = (torch.randn(1, 4, 40, 8) * 16).bfloat16()
    keys = (torch.randn(1, 4, 40, 8) * 16).bfloat16()
    senses = torch.randn(1, 4, 40, 32).bfloat16()
    scores = torch.einsum("bkih,bkjh->bkij", queries.float(), keys.float()) / 8 ** 0.5
    alpha = scores.masked_fill(torch.ones(40, 40, dtype=torch.bool).triu(1), float("-inf")).softmax(-1)
    expected = (alpha @ senses.float()).sum(1)
    got = blocked_mix(queries, keys, senses, rows=16)
    assert got.dtype == torch.bfloat16
    assert (got.float() - expected).abs().max() < 0.1  # |mixed| ~ 2: bf16 rounding of alpha, sum


def test_float64_model_computes_sense_weights_in_float64():
    """A float64 model keeps float64 through the sense-weight scores and softmax (issue 20,
    item 13: they were float32, 2-3e-5 off). Checked against softmax(q . k / sqrt(d/k)) written
    out in float64, on the weights path and on the fused (blocked) path, with scores as large
    as a trained model's (the projection scaled up)."""
    model = tiny(n_embd=128, num_senses=16, n_head=4).double()
    with torch.no_grad():
        model.sense_weight_network.c_attn.weight.mul_(60.0)  # |q . k| in the hundreds
    ids = torch.randint(0, 512, (2, 40), generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        out = model(ids, output_contextualization=True, output_senses=True,
                    output_hidden_states=True)
        q, k = model.sense_weight_network.project(out.hidden_states)
        scores = torch.einsum("bkih,bkjh->bkij", q.double(), k.double()) / (128 / 16) ** 0.5
        assert scores.abs().max() > 100
        causal = torch.ones(40, 40, dtype=torch.bool).tril()
        alpha = scores.masked_fill(~causal, float("-inf")).softmax(-1)
        fused = model(ids).logits  # no weights asked for: the blocked mixing
    assert out.contextualization.dtype == torch.float64
    assert (out.contextualization - alpha).abs().max() < 1e-12
    logits = torch.einsum("bkij,bkjd->bid", alpha, out.senses) @ model.wte.weight.T
    assert (out.logits - logits).abs().max() < 1e-10
    assert (fused - logits).abs().max() < 1e-10


def test_sense_dropout_drops_whole_senses_in_training_only():
    """model.sense_pdrop zeroes whole sense vectors (one draw per sense and source token) and
    scales the rest by 1 / (1 - p), in training mode only; a model trained with it computes
    the same function as one without it in eval mode, and its config says so only when p > 0."""
    ids = torch.randint(0, 512, (4, 32))
    plain, dropped = tiny(), tiny(sense_pdrop=0.25)
    dropped.load_state_dict(plain.state_dict())
    with torch.no_grad():
        reference = plain(ids, output_senses=True)
        torch.testing.assert_close(dropped(ids).logits, reference.logits)  # eval: no dropout
        torch.manual_seed(1)
        noisy = dropped.train()(ids, output_senses=True)
    ratio = noisy.senses.norm(dim=-1) / reference.senses.norm(dim=-1)  # (b, k, s)
    zero = ratio < 1e-6
    kept = (ratio - 1 / 0.75).abs() < 1e-4
    assert bool((zero | kept).all()), "each sense vector is either dropped or scaled by 1/(1-p)"
    assert 0.15 < zero.float().mean().item() < 0.35  # 512 draws at p = 0.25
    torch.testing.assert_close(noisy.senses[kept], reference.senses[kept] / 0.75)
    assert not torch.allclose(noisy.logits, reference.logits)
    assert "sense_pdrop" not in ModelConfig(**PRESETS["tiny"]).to_dict()
    assert ModelConfig(**PRESETS["tiny"], sense_pdrop=0.25).to_dict()["sense_pdrop"] == 0.25
    with pytest.raises(ValueError, match=r"sense_pdrop must be a number in \[0, 1\)"):
        ModelConfig(**PRESETS["tiny"], sense_pdrop=1.0)


def test_train_bpe_is_the_same_in_two_processes(tmp_path):
    """A BPE of the same texts is the same tokenizer in another process (where the `tokenizers`
    library's hash maps get other seeds): docs/TRAINING.md "Corpus v2" relies on it. The texts
    are built for ties: 200 four-letter words, each as frequent as the next."""
    import random
    import subprocess
    import sys

    rng = random.Random(0)
    words = sorted({"".join(rng.choices("abcdefghij", k=2)) + "".join(rng.choices("klmnop", k=2))
                    for _ in range(400)})[:200]
    corpus = tmp_path / "texts.txt"
    corpus.write_text("\n".join(" ".join(words[i:] + words[:i]) for i in range(0, 200, 7)))
    script = ("import sys; from backpack_core import train_bpe; "
              "lines = open(sys.argv[1]).read().splitlines(); "
              "print(train_bpe(lines, 600, min_frequency=1).backend.to_str())")
    built = [subprocess.run([sys.executable, "-c", script, str(corpus)], capture_output=True,
                            text=True, check=True, timeout=HANG_S,
                            env={**os.environ, "PYTHONHASHSEED": seed}).stdout
             for seed in ("1", "2")]
    assert json.loads(built[0])["model"]["merges"], "no merges were learned"
    assert built[0] == built[1]
