"""Measure short training runs side by side: the pilot table of docs/TRAINING.md.

    python -m data.pilot_report /work/runs/pilot-* --word2vec runs/word2vec.kv \
        --corpus-manifest data/corpus/manifest.json [--at-tokens 1200000] [--json out.json] \
        [--step0 data/shards/corpus8k]

Per run (its newest checkpoint): tokens seen, mean training tokens/s, validation perplexity from
its curve at --at-tokens (the last evaluation at or before; equal tokens for every run), the
validation word perplexity of the whole held-out split (comparable across tokenizers), word
similarity of the sense chosen on the other benchmark (as the model card), and the readable-
senses share (`backpack_core.model.evaluation.readable_report`, as the card: related words are
the nameable nearest words in the word2vec; in brackets the first rule's share). Prints a
Markdown table.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def curve(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x.strip()]


def val_at(lines: list[dict], tokens_per_step: int, at_tokens: int | None) -> tuple[int, float] | None:
    """(tokens, val ppl) of the last evaluation at or before at_tokens (None: the last one)."""
    evals = [(x["step"] * tokens_per_step, x["val_ppl"]) for x in lines if "val_ppl" in x]
    if at_tokens is not None:
        evals = [e for e in evals if e[0] <= at_tokens]
    return evals[-1] if evals else None


def held_out_sense(sims: dict) -> dict:
    """The card's rule: the sense best on one benchmark, reported on the other."""
    senses = [m for m in sims["simlex999"]["spearman"] if m.startswith("sense_") and m[6:].isdigit()]
    out = {}
    for pick, report in (("simlex999", "wordsim353"), ("wordsim353", "simlex999")):
        best = max(senses, key=lambda m: sims[pick]["spearman"][m])
        out[report] = {"sense": best, "chosen_on": pick, "spearman": sims[report]["spearman"][best]}
    return out


def measure(run: Path, wv, val_words: int, at_tokens: int | None, full_val: bool) -> dict:
    """The pilot table's figures of one run directory (its newest checkpoint), without autograd."""
    import torch

    with torch.no_grad():
        return _measure(run, wv, val_words, at_tokens, full_val)


def _measure(run: Path, wv, val_words: int, at_tokens: int | None, full_val: bool) -> dict:
    import numpy as np
    import torch

    from backpack_core import load_backpack
    from backpack_core.model.evaluation import perplexity

    cfg = json.loads((run / "run_config.json").read_text())
    model, tok = load_backpack(run, device="cpu")
    lines = curve(run)
    train = [x for x in lines if "loss" in x]
    tps = cfg["resolved"]["tokens_per_step"]
    shards = Path(cfg["data"]["dir"])
    manifest = json.loads((shards / "manifest.json").read_text())
    val = np.memmap(shards / manifest["splits"]["val"]["file"], dtype=manifest["dtype"], mode="r")
    ppl = perplexity(model, torch.from_numpy(val.astype("int64")), words=val_words) if full_val else None
    at = val_at(lines, tps, at_tokens)
    return {
        "ckpt_val_ppl": window_ppl(model, val, cfg["data"]["seq_len"],
                                   cfg["train"]["eval_batches"] * cfg["train"]["batch_size"]),
        "run": run.name, "model": cfg["model"], "train": {k: cfg["train"].get(k) for k in (
            "batch_size", "lr", "min_lr", "warmup_steps", "max_tokens", "init_embeddings",
            "embedding_lr_scale")},
        "vocab": manifest["vocab_size"], "tokens": train[-1]["tokens"] if train else 0,
        "tokens_per_s": sum(x["tokens_per_s"] for x in train) / max(1, len(train)),
        "val_ppl_at": at, "val_ppl": ppl.perplexity if ppl else None,
        "val_word_ppl": ppl.word_perplexity if ppl else None,
        **(sense_quality(model, tok, wv) if cfg["model"].get("model_kind", "backpack") == "backpack"
           else NO_SENSES),
    }


# A Transformer twin has no senses: its rows leave the sense figures empty.
NO_SENSES = {"simlex999": None, "wordsim353": None, "word2vec": None, "pairs": None,
             "readable": None, "readable_first_rule": None, "readable_words": None}


def window_ppl(model, val, seq_len: int, n_windows: int) -> float:
    """Perplexity on the trainer's fixed validation windows (its curve's val_ppl), for this
    checkpoint: runs compared at their checkpoints' equal tokens."""
    import math

    import torch

    from backpack_core.model.backpack import next_token_loss
    from backpack_core.training.loader import eval_windows, gather

    starts = eval_windows(val, seq_len, n_windows)
    losses = []
    for i in range(0, len(starts), 16):
        batch = gather(val, starts[i:i + 16], seq_len)
        losses.append(next_token_loss(model(batch).logits, batch, reduction="none")[:, :-1].mean(1))
    return math.exp(float(torch.cat(losses).double().mean()))


def sense_quality(model, tok, wv) -> dict:
    """Word similarity of the held-out-chosen sense and the readable-senses share (as the card)."""
    from backpack_core.model.evaluation import keyed_vectors_similarity, readable_report, word_similarity

    extra = {"word2vec": keyed_vectors_similarity(wv)}
    sims = {b: word_similarity(model, tok, b, extra=extra).to_dict() for b in ("simlex999", "wordsim353")}
    ho = held_out_sense(sims)
    readable = readable_report(model, tok, wv)
    return {"simlex999": ho["simlex999"], "wordsim353": ho["wordsim353"],
            "word2vec": {b: sims[b]["spearman"]["word2vec"] for b in sims},
            "pairs": {b: sims[b]["pairs_used"] for b in sims},
            "readable": readable["share"], "readable_first_rule": readable["share_first_rule"],
            "readable_words": {r["word"]: r["related_hits"] for r in readable["words"]}}


def _sense_cells(r: dict) -> str:
    """SimLex, WordSim and readable cells of a row ("-" for a model without senses)."""
    if r["simlex999"] is None:
        return "- | - | -"
    return (f"{r['simlex999']['spearman']:.3f} | {r['wordsim353']['spearman']:.3f} | "
            f"{r['readable']:.0%} ({r['readable_first_rule']:.0%})")


def step0(config: str, shards: str, init: str, wv) -> dict:
    """The same figures for a model before its first step (the initialisation alone)."""
    import torch

    from backpack_core.model.backpack import Backpack
    from backpack_core.training.config import load_run_config, resolve_model_config
    from backpack_core.training.loader import ShardSet
    from backpack_core.training.trainer import initialize

    cfg = load_run_config(config, [f"data.dir={shards}", f"train.init_embeddings={init}"])
    data = ShardSet(shards)
    torch.manual_seed(cfg.train.seed)
    model = Backpack(resolve_model_config(cfg, data.vocab_size, data.eos_token_id)).eval()
    initialize(model, cfg, data, None)
    with torch.no_grad():
        quality = sense_quality(model, data.tokenizer(), wv)
    return {"run": f"step 0, {init}", "model": cfg.model, "vocab": data.vocab_size, "tokens": 0,
            "tokens_per_s": 0.0, "val_ppl_at": None, "val_ppl": None, "val_word_ppl": None,
            "train": {"init_embeddings": init}, **quality}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("runs", nargs="*", type=Path)
    parser.add_argument("--step0", metavar="SHARDS", help="also rows for the config's model before "
                        "training, random and word2vec embeddings, on these shards")
    parser.add_argument("--config", default="backpack-mini-cpu", help="the config of --step0")
    parser.add_argument("--word2vec", required=True)
    parser.add_argument("--corpus-manifest", default="data/corpus/manifest.json")
    parser.add_argument("--at-tokens", type=int, help="compare the curves' val ppl at these tokens")
    parser.add_argument("--json", type=Path, help="also write every figure here")
    parser.add_argument("--full-val", action="store_true",
                        help="also the word perplexity of the whole val split (minutes per run on CPU)")
    args = parser.parse_args()
    for run in args.runs:  # before the word2vec loads: a wrong path costs no wait
        missing = [f for f in ("run_config.json", "metrics.jsonl", "model.safetensors")
                   if not (run / f).is_file()]
        if missing:
            parser.error(f"{run} is not a training run directory (no {', '.join(missing)}): pass "
                         "the train.out_dir of a `python -m backpack_core.train` run")
    from gensim.models import KeyedVectors

    wv = KeyedVectors.load(args.word2vec)
    val_words = json.loads(Path(args.corpus_manifest).read_text())["totals"]["words_val"]
    rows = []
    for init in ("random", "word2vec") if args.step0 else ():
        rows.append(step0(args.config, args.step0, init, wv))
        print(json.dumps({k: v for k, v in rows[-1].items() if k != "readable_words"}), flush=True)
    for run in args.runs:
        rows.append(measure(run, wv, val_words, args.at_tokens, args.full_val))
        r = rows[-1]
        print(json.dumps({k: v for k, v in r.items() if k != "readable_words"}), flush=True)
    print("\n| run | vocab | width x layers x senses | init | tokens | tokens/s | val ppl (curve) at "
          f"{args.at_tokens or 'end'} | val ppl, checkpoint | val word ppl | SimLex-999 | WordSim-353 "
          "| readable (first rule) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        m = r["model"]
        at = f"{r['val_ppl_at'][1]:.1f} ({r['val_ppl_at'][0] / 1e6:.2f}M)" if r["val_ppl_at"] else "-"
        init = f"{r['train']['init_embeddings']}, E lr x{r['train'].get('embedding_lr_scale') or 1:g}"
        senses = m.get("num_senses") if m.get("model_kind", "backpack") == "backpack" else "-"
        print(f"| {r['run']} | {r['vocab']} | {m.get('n_embd')} x {m.get('n_layer')} x "
              f"{senses} | {init} | {r['tokens'] / 1e6:.2f}M | "
              f"{r['tokens_per_s']:.0f} | {at} | {r.get('ckpt_val_ppl') or float('nan'):.1f} | "
              f"{r['val_word_ppl'] or float('nan'):.0f} | "
              f"{_sense_cells(r)} |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
