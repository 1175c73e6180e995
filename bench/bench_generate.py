"""Generation: transformers generate() with our cache against greedy decoding that re-runs the
full forward for every new token (the baseline), in the same run. Prints one JSON line.

    python -m bench.bench_generate [--model DIR] [--device cpu|cuda] [--new-tokens 50]
"""

import argparse
import json
import platform
import statistics
import time

import torch

from backpack_core import Backpack, BackpackLM, ModelConfig, load_backpack, resolve_device
from backpack_core.model.config import PRESETS


def timed(fn, repeats, device):
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        result = fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--model", help="model directory (default: random weights, shipped size)")
    parser.add_argument("--device", default=None)
    parser.add_argument("--prompt-tokens", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    device = resolve_device(args.device)
    if args.model:
        backpack, _ = load_backpack(args.model, device=device)
    else:
        torch.manual_seed(0)
        config = ModelConfig(**PRESETS["backpack-mini-256"], vocab_size=32768, eos_token_id=0,
                             bos_token_id=0)
        backpack = Backpack(config).to(device).eval()
    lm = BackpackLM.from_backpack(backpack)
    torch.manual_seed(1)
    prompt = torch.randint(1, backpack.config.vocab_size, (1, args.prompt_tokens), device=device)

    def baseline():
        ids = prompt
        for _ in range(args.new_tokens):
            ids = torch.cat([ids, backpack(ids).logits[:, -1].argmax(-1, keepdim=True)], dim=1)
        return ids

    def cached():
        return lm.generate(prompt, max_new_tokens=args.new_tokens, do_sample=False,
                           min_new_tokens=args.new_tokens)

    with torch.no_grad():
        cached()  # warm-up
        t_base, ids_base = timed(baseline, args.repeats, device)
        t_cache, ids_cache = timed(cached, args.repeats, device)
    print(json.dumps({
        "bench": "generate", "device": str(device),
        "machine": torch.cuda.get_device_name() if device.type == "cuda" else platform.processor()
        or platform.machine(), "threads": torch.get_num_threads(),
        "prompt_tokens": args.prompt_tokens, "new_tokens": args.new_tokens,
        "baseline_full_forward_s": round(t_base, 4), "generate_cached_s": round(t_cache, 4),
        "speedup": round(t_base / t_cache, 2), "same_tokens": bool(torch.equal(ids_base, ids_cache)),
    }))


if __name__ == "__main__":
    main()
