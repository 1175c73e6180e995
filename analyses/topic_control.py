"""Topic control: turn up the senses that promote a topic, generate, measure success and fluency.

    python -m analyses.topic_control --topic science --strength 3 [--samples 2] [--tokens 30]
        [--top-senses 500] [--prompts "The" "In the"] [--seed 0] [--json] [--model DIR]

--topic is a topic name from analyses/data/topics.json (science, sports, food, music, politics,
religion, computing, war) or a comma-separated word list (" " is added before each word).
The --top-senses (word, sense) pairs of the vocabulary whose sense_logits put the most
probability mass on the topic words (softmax(E . C(x)_l) summed over them; candidates from the
sense bank along sum_w E_w - mean E; only whole words, not word pieces such as ' regul',
unless --word-pieces) get their contextualization weight multiplied by
--strength wherever the word occurs (the paper's edit; rows are not renormalised).
From each prompt, --samples continuations are sampled with and without the edit (same seeds).
Topic success: the fraction of continuations holding a topic word. Fluency: perplexity of the
continuations under the unedited model (lower is more fluent). The edit acts only where one of
its words is in the context: when no sample changed, a note says why.
JSON output: {"topic", "strength", "words", "skipped_words", "senses": [{"token", "token_id",
"sense", "mass", "projection"}], "notes", "samples_changed", "before": {"topic_success",
"topic_words_per_sample", "perplexity", "tokens"}, "after": {...}, "settings", "samples": [{"prompt",
"seed", "before", "after",
"before_topic_words", "after_topic_words", "edited_words_in_context"}]}.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from analyses import _cli

TOPICS_FILE = Path(__file__).resolve().parent / "data" / "topics.json"




def build_parser():
    p = _cli.parser("python -m analyses.topic_control", __doc__.strip().splitlines()[0])
    p.add_argument("--topic", required=True,
                   help="a topic name from analyses/data/topics.json, or comma-separated words")
    p.add_argument("--strength", type=float, default=3.0,
                   help="factor on the topic senses' contextualization weight (default 3)")
    p.add_argument("--samples", type=int, default=2, help="samples per prompt (default 2)")
    p.add_argument("--tokens", type=int, default=30, help="new tokens per sample (default 30)")
    p.add_argument("--top-senses", type=int, default=500,
                   help="how many (word, sense) pairs to turn up (default 500)")
    p.add_argument("--prompts", nargs="+", default=None,
                   help="prompts to generate from (default: the neutral prompts of topics.json)")
    p.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (default 1)")
    p.add_argument("--top-p", type=float, default=0.9, help="nucleus sampling (default 0.9)")
    p.add_argument("--seed", type=int, default=0, help="first seed; sample s uses seed + s")
    p.add_argument("--topics-file", default=str(TOPICS_FILE), help="topic lists (JSON)")
    p.add_argument("--word-pieces", action="store_true",
                   help="also turn up senses of word pieces (' regul'), not only of whole words")
    _cli.add_threads(p)
    return p


def read_topics(path: str) -> dict:
    data = _cli.read_json(path, "topics")
    if not isinstance(data, dict) or not isinstance(data.get("topics"), dict):
        raise ValueError(f"the topics file {path!r} lacks a \"topics\" object of word lists")
    return data


def topic_words(topic: str, topics: dict) -> tuple[str, list[str]]:
    """(name, words in in-text form) from a topic name or a comma-separated word list."""
    if topic in topics["topics"]:
        return topic, list(topics["topics"][topic])
    if "," not in topic and topic.strip().isalpha() and topic.strip().islower():
        raise ValueError(f"unknown topic {topic!r}; topics: {', '.join(topics['topics'])}; or give "
                         "comma-separated words, e.g. --topic 'ship,sea,sail'")
    words = [w.strip() for w in topic.split(",") if w.strip()]
    if not words:
        raise ValueError("--topic is empty")
    return "custom", [" " + w for w in words]


def render(data: dict, show: int = 4) -> str:
    senses = ", ".join(f"{h['token']!r}/{h['sense']}" for h in data["senses"][:12])
    words = " ".join(w.strip() for w in data["words"])
    lines = [f"topic {data['topic']!r}: {len(data['words'])} words ({words})"]
    if data["skipped_words"]:
        lines.append(f"skipped (several tokens): {', '.join(repr(d['word']) for d in data['skipped_words'])}")
    lines += [f"turned up x{data['strength']:g}: {len(data['senses'])} (word, sense) pairs, "
              f"best: {senses}"]
    lines += [f"note: {n}" for n in data["notes"]]
    lines += [f"samples changed by the edit: {data['samples_changed']} of {len(data['samples'])}", "",
              f"{'':<10}{'topic success':>15}{'topic words/sample':>20}{'perplexity':>12}"]
    for side in ("before", "after"):
        s = data[side]
        ppl = f"{s['perplexity']:>12.1f}" if s["perplexity"] is not None else f"{'n/a':>12}"
        lines.append(f"{side:<10}{s['topic_success']:>15.2f}{s['topic_words_per_sample']:>20.2f}{ppl}")
    lines += ["", f"samples ({min(show, len(data['samples']))} of {len(data['samples'])}):"]
    for s in data["samples"][:show]:
        lines.append(f"  prompt {s['prompt']!r}, seed {s['seed']}:")
        for side in ("before", "after"):
            text = " ".join((s["prompt"] + s[side]).split())
            lines.append(f"    {side + ':':<8}{text[:150]}  {s[side + '_topic_words'] or ''}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.samples < 1 or args.tokens < 1 or args.top_senses < 1:
        raise ValueError("--samples, --tokens and --top-senses must be >= 1")
    if not args.strength >= 0:
        raise ValueError(f"--strength must be >= 0, got {args.strength}")
    topics = read_topics(args.topics_file)
    name, words = topic_words(args.topic, topics)
    prompts = args.prompts or topics.get("prompts") or ["The"]
    from backpack_core.common.limits import check_topic_request

    check_topic_request(len(prompts) * args.samples, args.top_senses)  # before the model loads
    from backpack_core.common.progress import set_threads

    set_threads(args.threads)
    model, tokenizer = _cli.load(args)
    if not model.config.is_backpack:
        raise ValueError("this model is a Transformer twin: it has no senses to turn up")
    from backpack_core.experiments.topic_control import topic_control

    result = topic_control(model, tokenizer, words, args.strength, prompts,
                           samples_per_prompt=args.samples, max_new_tokens=args.tokens,
                           top_senses=args.top_senses, temperature=args.temperature,
                           top_p=args.top_p, seed=args.seed, topic_name=name,
                           whole_words=not args.word_pieces)
    data = result.to_dict()
    return _cli.emit(args, data, render)


if __name__ == "__main__":
    sys.exit(_cli.run(main, prog="topic_control"))
