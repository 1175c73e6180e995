"""What a transformers user does with our model, on the installed transformers release.

- generate() with our cache feeds each token once (the prefix is never recomputed), and greedy
  decoding with and without the cache gives the same tokens;
- the cache travels under the name this transformers uses (`cache` from 5.24 on,
  `past_key_values` before), and forward() accepts it under either;
- `import backpack_core` registers the Auto classes, so a plain transformers client
  (AutoConfig, AutoModelForCausalLM, AutoTokenizer, pipeline) works on the shipped directory.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from backpack_core import Backpack, BackpackLM, ModelConfig
from backpack_core.model.config import PRESETS
from backpack_core.model.hf import CACHE_NAME
from backpack_core.model.loading import DEFAULT_MODEL_DIR
from tests.conftest import HANG_S

REPO_ROOT = Path(__file__).resolve().parent.parent


def tiny_lm() -> BackpackLM:
    torch.manual_seed(0)
    config = ModelConfig(**{**PRESETS["tiny"], "n_positions": 128})
    return BackpackLM.from_backpack(Backpack(config).eval())


class CountingForward:
    """Wraps lm.forward to record how many tokens each call is fed."""

    def __init__(self, lm: BackpackLM):
        self.fed: list[int] = []
        self.forward = lm.forward
        lm.forward = self

    def __call__(self, input_ids, **kwargs):
        self.fed.append(input_ids.shape[1])
        return self.forward(input_ids, **kwargs)


def test_cached_generation_feeds_each_token_once():
    lm = tiny_lm()
    prompt = torch.randint(1, 512, (2, 7))
    counter = CountingForward(lm)
    with torch.no_grad():
        out = lm.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=12,
                          do_sample=False)
    assert out.shape == (2, 19)
    # the prompt once, then one new token per step: a recomputed prefix would feed 8, 9, ...
    assert counter.fed == [7] + [1] * 11, counter.fed


def test_greedy_tokens_equal_with_and_without_cache():
    lm = tiny_lm()
    prompt = torch.randint(1, 512, (1, 5))
    with torch.no_grad():
        cached = lm.generate(prompt, max_new_tokens=30, do_sample=False, use_cache=True)
        counter = CountingForward(lm)
        uncached = lm.generate(prompt, max_new_tokens=30, do_sample=False, use_cache=False)
    assert torch.equal(cached, uncached)
    assert counter.fed == list(range(5, 35)), "without the cache every step sees the whole text"


def test_cache_under_either_name():
    lm = tiny_lm()
    ids = torch.randint(1, 512, (1, 6))
    with torch.no_grad():
        first = lm(ids[:, :5], use_cache=True)
        cache = first[CACHE_NAME]
        assert cache is not None and cache.get_seq_length() == 5
        full = lm(ids).logits[:, -1]
        by_new_name = lm(ids[:, 5:], cache=cache, use_cache=True).logits[:, -1]
        cache = lm(ids[:, :5], use_cache=True)[CACHE_NAME]
        by_old_name = lm(ids[:, 5:], past_key_values=cache, use_cache=True).logits[:, -1]
    torch.testing.assert_close(by_new_name, full, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(by_old_name, full, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="pass the generation cache once"):
        lm(ids[:, 5:], cache=cache, past_key_values=lm(ids[:, :5], use_cache=True)[CACHE_NAME])


def client_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO_ROOT), "HF_HUB_OFFLINE": "1"}


CLIENT = textwrap.dedent("""
    import json, sys
    import backpack_core  # registers the Auto classes when transformers is imported
    assert "transformers" not in sys.modules, "import backpack_core must stay light"
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, pipeline
    path = sys.argv[1]
    config = AutoConfig.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    ids = tokenizer("The bank of the river", return_tensors="pt").input_ids
    greedy = dict(max_new_tokens=12, do_sample=False, pad_token_id=tokenizer.eos_token_id)
    cached = model.generate(ids, use_cache=True, **greedy)[0].tolist()
    uncached = model.generate(ids, use_cache=False, **greedy)[0].tolist()
    text = pipeline("text-generation", model=path)("The bank of the river", **greedy)
    print(json.dumps({"config": type(config).__name__, "model": type(model).__name__,
                      "cached": cached, "uncached": uncached,
                      "decoded": tokenizer.decode(cached), "pipeline": text[0]["generated_text"]}))
""")


@pytest.mark.slow
def test_plain_transformers_client_on_the_shipped_model(tmp_path):
    """A fresh process, as a user's script: import backpack_core, then only transformers' API."""
    proc = subprocess.run([sys.executable, "-c", CLIENT, str(DEFAULT_MODEL_DIR)], cwd=tmp_path,
                          capture_output=True, text=True, timeout=HANG_S,
                          env=client_env())
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["config"] == "BackpackConfig" and out["model"] == "BackpackLM"
    assert out["cached"] == out["uncached"] and len(out["cached"]) > 12
    assert out["pipeline"] == out["decoded"]


def test_registration_when_transformers_came_first():
    code = ("import transformers; from transformers import AutoConfig; import backpack_core; "
            "print(type(AutoConfig.for_model('backpack')).__name__)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=HANG_S,
                          env=client_env())
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split()[-1] == "BackpackConfig"
