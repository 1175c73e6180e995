"""GPU checks: run where CUDA is available (skipped on CPU-only CI)."""

import pytest
import torch

from backpack_core import Backpack, BackpackLM, ModelConfig
from backpack_core.model import backpack as model_module

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def small():
    torch.manual_seed(0)
    return Backpack(ModelConfig(vocab_size=1024, n_positions=256, n_embd=128, n_layer=2, n_head=4,
                                num_senses=8)).eval()


@cuda
def test_bf16_on_gpu_matches_fp32_on_cpu():
    cpu = small()
    gpu = small().cuda().to(torch.bfloat16)
    ids = torch.randint(0, 1024, (2, 200))
    with torch.no_grad():
        ref = cpu(ids).logits
        out = gpu(ids.cuda()).logits.float().cpu()
    assert (out - ref).abs().max() < 0.05 * ref.abs().max()


@cuda
@pytest.mark.skipif(model_module.flash_attn_func is None, reason="flash-attn is not installed")
def test_flash_attn_agrees_with_sdpa():
    model = small().cuda().to(torch.bfloat16)
    ids = torch.randint(0, 1024, (2, 200), device="cuda")
    with torch.no_grad():
        with_flash = model(ids).logits.float()
        saved, model_module.flash_attn_func = model_module.flash_attn_func, None
        try:
            with_sdpa = model(ids).logits.float()
        finally:
            model_module.flash_attn_func = saved
    torch.testing.assert_close(with_flash, with_sdpa, atol=2e-2, rtol=2e-2)


@cuda
def test_generate_on_gpu_with_cache_equals_recompute():
    lm = BackpackLM.from_backpack(small().cuda())
    prompt = torch.randint(1, 1024, (1, 8), device="cuda")
    with torch.no_grad():
        generated = lm.generate(prompt, max_new_tokens=30, do_sample=False)
        ids = prompt
        for _ in range(30):
            ids = torch.cat([ids, lm.backpack(ids).logits[:, -1].argmax(-1, keepdim=True)], 1)
    assert torch.equal(generated, ids)
