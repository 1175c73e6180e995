"""Train the word2vec baseline of the model card on the corpus's training split.

    python -m data.train_word2vec --corpus data/corpus/train.jsonl --out runs/word2vec.kv

Skip-gram, 256 dimensions, window 5, 5 epochs, min count 5, on lower-cased words
(`backpack_core.model.evaluation.train_word2vec`). With --workers 1 (the default) and PYTHONHASHSEED=0
the vectors are the same on every run. The card uses it twice: as the word-similarity baseline,
and for the readable-senses rule (a noun's related words are its 50 nearest words here).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--corpus", nargs="+", default=["data/corpus/train.jsonl"])
    parser.add_argument("--out", default="runs/word2vec.kv")
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    from backpack_core.model.evaluation import train_word2vec

    start = time.perf_counter()
    wv = train_word2vec(args.corpus, workers=args.workers)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    wv.save(args.out)
    print(f"wrote {args.out}: {len(wv.index_to_key):,} words, {time.perf_counter() - start:.0f}s")


if __name__ == "__main__":
    main()
