"""Perplexity of a text file or of the Penn Treebank test set, and the speed it was read at.

    python -m analyses.perplexity --text FILE | --dataset ptb  [--max-tokens N] [--seq-len L]
        [--batch-size B] [--json] [--model DIR]

The text is tokenized as one stream and scored in non-overlapping windows of the model's
context (--seq-len to shorten); each window predicts its tokens after the first. Token-level
perplexity is exp(mean NLL per predicted token); word-level perplexity divides the same total
NLL by the whitespace words of the text, so models with different tokenizers compare (with
--max-tokens, by the words of the part read). PTB is Mikolov's lower-cased split with <unk>
and N, so a model trained on ordinary text reads it at a disadvantage.
JSON output: {"source", "loss", "perplexity", "tokens", "words", "word_perplexity",
"tokens_per_s", "seq_len", "model"}.
"""

from __future__ import annotations

import io
import math
import sys
from collections.abc import Sequence

from analyses import _cli


def build_parser():
    p = _cli.parser("python -m analyses.perplexity", __doc__.strip().splitlines()[0])
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--text", metavar="FILE", help="a text file (UTF-8 unless --encoding)")
    source.add_argument("--dataset", choices=["ptb"], help="ptb: Penn Treebank test split")
    p.add_argument("--encoding", default="utf-8", help="encoding of --text (default utf-8)")
    p.add_argument("--max-tokens", type=int, default=None,
                   help="read only the first N tokens (quick runs)")
    p.add_argument("--seq-len", type=int, default=None,
                   help="window length (default and maximum: the model's context)")
    p.add_argument("--batch-size", type=int, default=8, help="windows per forward pass (default 8)")
    _cli.add_threads(p, default=None)
    return p


def read_source(args) -> tuple[str, str]:
    if args.text is not None:
        from backpack_core.common.files import read_prefix
        from backpack_core.common.limits import MAX_CORPUS_CHARS, LimitError

        try:
            raw = read_prefix(args.text, 4 * MAX_CORPUS_CHARS)  # never unbounded: /dev/zero has no size
            if len(raw) > 4 * MAX_CORPUS_CHARS:
                raise LimitError(f"--text {args.text!r} is too long: more than {4 * MAX_CORPUS_CHARS:,} "
                                 f"bytes, past the limit of {MAX_CORPUS_CHARS:,} characters "
                                 "(BACKPACK_MAX_CORPUS_CHARS)")
            text = io.TextIOWrapper(io.BytesIO(raw), encoding=args.encoding).read()  # as open() reads
        except UnicodeDecodeError as err:
            raise ValueError(f"--text {args.text!r} is not {args.encoding} text ({err}); give its "
                             "encoding with --encoding, e.g. --encoding latin-1") from None
        except LookupError:
            raise ValueError(f"unknown --encoding {args.encoding!r}") from None
        except OSError as err:
            raise OSError(f"cannot read --text {args.text!r}: {err.strerror or err}") from None
        if not text.strip():
            raise ValueError(f"--text {args.text!r} is empty")
        return text, args.text
    from backpack_core.common.datasets import ptb_test_text

    try:
        return ptb_test_text(), "ptb (test)"
    except ImportError as err:
        raise ValueError(str(err)) from None


def words_in_prefix(tokenizer, ids: list[int]) -> int:
    """Whitespace words of the text the token prefix decodes to."""
    return len(tokenizer.decode(ids).split())


def render(data: dict) -> str:
    wp = data["word_perplexity"]
    return "\n".join([
        f"source: {data['source']}  ({data['tokens']:,} predicted tokens, {data['words']:,} words, "
        f"windows of {data['seq_len']})",
        f"loss {data['loss']:.4f} nats/token   perplexity {data['perplexity']:.2f}   "
        f"word-level perplexity {wp:.2f}" if wp is not None else f"perplexity {data['perplexity']:.2f}",
        f"speed: {data['tokens_per_s']:,.0f} tokens/s on {data['device']}",
    ])


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _cli.check_windows(args)
    text, source = read_source(args)  # a missing file fails before the model loads
    from backpack_core.common.progress import set_threads

    set_threads(args.threads)
    model, tokenizer = _cli.load(args)
    from backpack_core.common.progress import progress_bar
    from backpack_core.model.evaluation import perplexity

    ids = tokenizer.encode(text)
    words = len(text.split())
    if args.max_tokens is not None and len(ids) > args.max_tokens:
        ids = ids[: args.max_tokens]
        words = words_in_prefix(tokenizer, ids)
    seq_len = min(args.seq_len or model.config.n_positions, model.config.n_positions)
    result = perplexity(model, ids, words=words, seq_len=seq_len, batch_size=args.batch_size,
                        progress=lambda batches: progress_bar(batches, "perplexity"))
    data = result.to_dict()
    data["word_perplexity"] = data["word_perplexity"] if math.isfinite(data["word_perplexity"]) else None
    data.update(source=source, seq_len=seq_len, model=args.model or "data/backpack-mini",
                device=str(model.wte.weight.device))
    return _cli.emit(args, data, render)


if __name__ == "__main__":
    sys.exit(_cli.run(main, prog="perplexity"))
