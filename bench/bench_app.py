"""Benchmark: how fast the Steer page updates its predictions after an edit.

    python bench/bench_app.py [--model DIR] [--tokens 200] [--runs 20] [--device cpu] [--threads N]
                              [--generate 30]

Times, on a --tokens-token text, the exact function the Steer page calls when the edit set
changes, `app/views.py: steer_view(session, edit_set, position, top=10)`: from the edit set
(the JSON-able dict the page keeps in st.session_state) to the data of its tables (top-1 before /
after and KL at every position, top-10 before / after at the chosen position). The text's
`ContextSession` is cached by the app (one forward pass per text), so it is built once here too;
its cost is reported as `session_setup_ms`. The baseline is a full forward pass over the text
under the same compiled edits, in the same run. Medians over --runs after warm-up, in ms.

Model: --model DIR, else the shipped data/backpack-mini, else (with a note in the output)
random weights of the shipped shape (width 128, 4 layers, 4 heads, 16 senses, sense scale 2,
32768-token vocabulary, context 256) with edits naming token ids: the time does not depend on
the weights. --generate N also times the Steer page's Generate (`generate_side_by_side`: N new
tokens greedy, without and with the edits; median of 3) as `generate_ms`. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "app"))  # the app's view model

from views import steer_view  # noqa: E402

from backpack_core import Backpack, ModelConfig  # noqa: E402
from backpack_core.edit.specs import as_edit_set
from backpack_core.interpret.session import ContextSession
from backpack_core.model.loading import DEFAULT_MODEL_DIR, load_backpack

SHIPPED_SHAPE = dict(vocab_size=32768, n_positions=256, n_embd=128, n_layer=4, n_head=4,
                     num_senses=16, sense_intermediate_scale=2, bos_token_id=0, eos_token_id=0)
PARAGRAPH = ("The bank by the river was closed on Sunday, so she walked along the water to the "
             "old market, where farmers sold apples, bread and cheese. Her brother, a doctor at "
             "the hospital, said that the science of money is older than the science of medicine. "
             "They talked about laptops made by Apple and HP, about the weather, and about the "
             "history of the town, which was built on the river bank two hundred years ago. ")
BUDGET_MS = 300.0


def median_ms(fn, runs: int, warmup: int = 3) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def setup(args):
    """(model, tokenizer or None, text or token ids, edit-set dict, note)."""
    source = args.model or (DEFAULT_MODEL_DIR if (DEFAULT_MODEL_DIR / "config.json").is_file() else None)
    if source is not None:
        model, tokenizer = load_backpack(source, device=args.device, dtype="float32")
        ids = tokenizer.encode(PARAGRAPH * (1 + 4 * args.tokens // len(PARAGRAPH.split())))[:args.tokens]
        text = tokenizer.decode(ids)
        words = [tokenizer.decode([i]) for i in ids]
        frequent = max(set(words), key=words.count)  # the word with the most occurrences
        edits = {"version": 1, "edits": [
            {"kind": "ablate_sense", "word": frequent, "sense": 3},
            {"kind": "scale_sense", "word": words[-1], "sense": [0, 5], "factor": 2.0}]}
        return model, tokenizer, text, edits, f"model {source}"
    torch.manual_seed(0)
    model = Backpack(ModelConfig(**SHIPPED_SHAPE)).to(args.device).eval()
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, SHIPPED_SHAPE["vocab_size"], (args.tokens,), generator=gen).tolist()
    edits = {"version": 1, "edits": [
        {"kind": "ablate_sense", "word": ids[7], "sense": 3},
        {"kind": "scale_sense", "word": ids[-1], "sense": [0, 5], "factor": 2.0}]}
    note = ("the shipped model is missing (data/backpack-mini): random weights of its shape, "
            "token ids for text and edits; timing does not depend on the weights")
    return model, None, ids, edits, note


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    p.add_argument("--model", default=None, help="model directory (default: the shipped model)")
    p.add_argument("--tokens", type=int, default=200, help="text length in tokens")
    p.add_argument("--runs", type=int, default=20)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--generate", type=int, default=0, metavar="N",
                   help="also time the page's Generate with N new tokens (0: no)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    model, tokenizer, text, edits, note = setup(args)

    with torch.inference_mode():
        setup_ms = median_ms(lambda: ContextSession(model, tokenizer, text), max(3, args.runs // 4), 1)
        session = ContextSession(model, tokenizer, text)
        steer_ms = median_ms(lambda: steer_view(session, edits, position=-1, top=10), args.runs)
        no_edit_ms = median_ms(lambda: steer_view(session, {"version": 1, "edits": []}, position=-1,
                                                  top=10), args.runs)
        intervention = as_edit_set(edits).compile(model, tokenizer)
        batch = torch.tensor([session.token_ids], device=device)
        full_ms = median_ms(lambda: model(batch, intervention=intervention), args.runs)
        view = steer_view(session, edits, position=-1, top=10)
        full = model(batch, intervention=intervention).logits[0].float()
        diff = float((session.logits(intervention).float() - full).abs().max())
        generate_ms = None
        if args.generate:
            from backpack_core.edit.generation import generate_side_by_side

            generate_ms = median_ms(lambda: generate_side_by_side(
                model, tokenizer, text, edits, max_new_tokens=args.generate), 3, 1)
    print(json.dumps({
        "bench": "app_steer_update",
        "note": note,
        "device": str(device),
        "threads": torch.get_num_threads(),
        "tokens": session.n,
        "edits": [e["kind"] for e in edits["edits"]],
        "steer_view_ms": round(steer_ms, 2),
        "steer_view_no_edits_ms": round(no_edit_ms, 2),
        "full_forward_ms": round(full_ms, 2),
        "session_setup_ms": round(setup_ms, 2),
        "budget_ms": BUDGET_MS,
        "within_budget": steer_ms < BUDGET_MS,
        "positions_changed": view.n_changed,
        "max_abs_diff_session_vs_full_forward": diff,
        **({"generate_new_tokens": args.generate, "generate_ms": round(generate_ms, 1)}
           if args.generate else {}),
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
