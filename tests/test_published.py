"""A directory in the published stanfordnlp/backpack-gpt2 layout computes exactly the published
function. The reference below is written from the raw state dict with plain tensor math (GPT-2
Conv1D weights used as stored, (in, out)), independent of our modules."""

import json
import math

import pytest
import torch
import torch.nn.functional as F

from backpack_core import CheckpointError, load_backpack

D, HEADS, LAYERS, SENSES, VOCAB, POSITIONS, SCALE = 32, 4, 2, 4, 50264, 64, 2


def random_published_checkpoint(directory, seed=0):
    """Write config.json + pytorch_model.bin with the published key names and layouts."""
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape, std=0.2):
        return torch.randn(*shape, generator=g) * std

    sd = {}
    wte, wpe = rnd(VOCAB, D), rnd(POSITIONS, D)
    P = "backpack.gpt2_model."
    sd[P + "wte.weight"], sd[P + "wpe.weight"] = wte, wpe
    for i in range(LAYERS):
        h = f"{P}h.{i}."
        for norm in ("ln_1", "ln_2"):
            sd[h + norm + ".weight"] = 1 + rnd(D, std=0.1)
            sd[h + norm + ".bias"] = rnd(D, std=0.1)
        for name, (n_in, n_out) in {"attn.c_attn": (D, 3 * D), "attn.c_proj": (D, D),
                                    "mlp.c_fc": (D, 4 * D), "mlp.c_proj": (4 * D, D)}.items():
            sd[h + name + ".weight"] = rnd(n_in, n_out)  # Conv1D: (in, out)
            sd[h + name + ".bias"] = rnd(n_out, std=0.05)
        sd[h + "attn.bias"] = torch.tril(torch.ones(POSITIONS, POSITIONS)).view(1, 1, POSITIONS,
                                                                                 POSITIONS)
        sd[h + "attn.masked_bias"] = torch.tensor(-1e4)
    sd[P + "ln_f.weight"], sd[P + "ln_f.bias"] = 1 + rnd(D, std=0.1), rnd(D, std=0.1)
    S = "backpack.sense_network."
    for norm in ("ln", "block.ln_1", "block.ln_2"):
        sd[S + norm + ".weight"], sd[S + norm + ".bias"] = 1 + rnd(D, std=0.1), rnd(D, std=0.1)
    for name, (n_in, n_out) in {"block.mlp.c_fc": (D, 4 * D), "block.mlp.c_proj": (4 * D, D),
                                "final_mlp.c_fc": (D, SCALE * D),
                                "final_mlp.c_proj": (SCALE * D, SENSES * D)}.items():
        sd[S + name + ".weight"] = rnd(n_in, n_out)
        sd[S + name + ".bias"] = rnd(n_out, std=0.05)
    sd["backpack.sense_weight_net.c_attn.weight"] = rnd(2 * D, D)  # nn.Linear: (out, in)
    sd["backpack.sense_weight_net.c_attn.bias"] = rnd(2 * D, std=0.05)
    sd["backpack.word_embeddings.weight"] = wte  # aliases of the same tensors
    sd["backpack.position_embeddings.weight"] = wpe
    sd["lm_head.weight"] = wte
    torch.save(sd, directory / "pytorch_model.bin")
    config = {
        "model_type": "gpt2", "architectures": ["BackpackGPT2LMHeadModel"],
        "auto_map": {"AutoModelForCausalLM": "modeling_backpack_gpt2.BackpackGPT2LMHeadModel"},
        "n_embd": D, "n_head": HEADS, "n_layer": LAYERS, "n_positions": POSITIONS,
        "num_senses": SENSES, "sense_intermediate_scale": SCALE, "vocab_size": VOCAB,
        "activation_function": "gelu_new", "attn_pdrop": 0.1, "embd_pdrop": 0.1,
        "resid_pdrop": 0.1, "layer_norm_epsilon": 1e-5, "scale_attn_by_inverse_layer_idx": True,
        "reorder_and_upcast_attn": False, "bos_token_id": 50256, "eos_token_id": 50256,
    }
    (directory / "config.json").write_text(json.dumps(config))
    return sd


def reference_forward(sd, ids):
    """Published Backpack forward for one sequence ids (n,) -> (logits (n, V), alpha (k, n, n))."""
    n = ids.shape[0]

    def ln(x, name):
        return F.layer_norm(x, (D,), sd[name + ".weight"], sd[name + ".bias"], 1e-5)

    def conv1d(x, name):
        return x @ sd[name + ".weight"] + sd[name + ".bias"]

    def gelu_new(x):
        return 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))

    P = "backpack.gpt2_model."
    x = sd[P + "wte.weight"][ids] + sd[P + "wpe.weight"][:n]
    hd = D // HEADS
    causal = torch.tril(torch.ones(n, n, dtype=torch.bool))
    for i in range(LAYERS):
        h = f"{P}h.{i}."
        q, k, v = conv1d(ln(x, h + "ln_1"), h + "attn.c_attn").split(D, dim=-1)
        q, k, v = (t.view(n, HEADS, hd).transpose(0, 1) for t in (q, k, v))
        scores = q @ k.transpose(-1, -2) / math.sqrt(hd) / (i + 1)
        scores = scores.masked_fill(~causal, float("-inf"))
        y = (scores.softmax(-1) @ v).transpose(0, 1).reshape(n, D)
        x = x + conv1d(y, h + "attn.c_proj")
        x = x + conv1d(gelu_new(conv1d(ln(x, h + "ln_2"), h + "mlp.c_fc")), h + "mlp.c_proj")
    hidden = ln(x, P + "ln_f")

    S = "backpack.sense_network."
    residual = sd[P + "wte.weight"][ids]
    hh = ln(residual, S + "ln")
    residual = hh + residual
    hh = ln(residual, S + "block.ln_1")
    residual = conv1d(gelu_new(conv1d(hh, S + "block.mlp.c_fc")), S + "block.mlp.c_proj") + residual
    hh = ln(residual, S + "block.ln_2")
    senses = conv1d(gelu_new(conv1d(hh, S + "final_mlp.c_fc")), S + "final_mlp.c_proj")
    senses = senses.view(n, SENSES, D)  # (n, k, d)

    qk = hidden @ sd["backpack.sense_weight_net.c_attn.weight"].T + sd[
        "backpack.sense_weight_net.c_attn.bias"]
    qk = qk.view(n, 2, SENSES, D // SENSES)
    Q, K = qk[:, 0], qk[:, 1]  # (n, k, d/k)
    alpha = torch.empty(SENSES, n, n)
    for sense in range(SENSES):
        scores = Q[:, sense] @ K[:, sense].T / math.sqrt(D // SENSES)
        scores = scores + (~causal).float() * -10000.0
        alpha[sense] = scores.softmax(-1)
    out = torch.zeros(n, D)
    for i in range(n):
        for sense in range(SENSES):
            for j in range(n):
                out[i] += alpha[sense, i, j] * senses[j, sense]
    return out @ sd[P + "wte.weight"].T, alpha


def test_published_layout_matches_reference(tmp_path):
    sd = random_published_checkpoint(tmp_path)
    model, tokenizer = load_backpack(tmp_path, device="cpu", dtype="float32")
    assert model.config.vocab_size == VOCAB and len(tokenizer) == 50257
    ids = torch.tensor(tokenizer.encode("Hello world, science is a bank of senses!"))
    assert ids.tolist()[:5] == [15496, 995, 11, 3783, 318]
    with torch.no_grad():
        out = model(ids[None], output_contextualization=True)
    ref_logits, ref_alpha = reference_forward(sd, ids)
    torch.testing.assert_close(out.contextualization[0], ref_alpha, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(out.logits[0], ref_logits, atol=1e-4, rtol=1e-4)


def test_published_hf_wrapper_matches_reference(tmp_path):
    from backpack_core import load_model

    sd = random_published_checkpoint(tmp_path, seed=1)
    lm, tok = load_model(tmp_path, device="cpu")
    ids = tok("The river bank", return_tensors="pt").input_ids
    with torch.no_grad():
        out = lm(ids, output_contextualization=True)
    ref_logits, ref_alpha = reference_forward(sd, ids[0])
    torch.testing.assert_close(out.logits[0], ref_logits, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(out.contextualization[0], ref_alpha, atol=1e-4, rtol=1e-4)


def test_published_layout_refuses_wrong_keys(tmp_path):
    sd = random_published_checkpoint(tmp_path)
    del sd["backpack.sense_network.ln.weight"]
    sd["backpack.something_else"] = torch.zeros(1)
    torch.save(sd, tmp_path / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="missing keys.*sense_network.ln.weight"):
        load_backpack(tmp_path)


def test_pickle_with_code_is_refused(tmp_path):
    """weights_only=True: a pickle that would run code on load is rejected, not executed."""
    random_published_checkpoint(tmp_path)

    class Evil:
        def __reduce__(self):
            return (print, ("this must never run",))

    torch.save({"backpack.gpt2_model.wte.weight": Evil()}, tmp_path / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="would run code"):
        load_backpack(tmp_path)
