"""Build the canonical-example datasets of `analyses.sense_finetune` (offline, deterministic).

    python -m data.build_canonical [--out analyses/data/canonical]

Three datasets, each split by its words into validation (choose hyperparameters) and test
(report), each split with canonical examples (`*-examples.jsonl`, what is learned from) and
separate out-of-distribution evaluation items (`*-eval.jsonl`, other sentences with the same
words). Everything is generated here from the word lists and templates below, written for this
project (facts: country capitals, common knowledge); see the README written next to the files.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

OUT = Path(__file__).resolve().parent.parent / "analyses" / "data" / "canonical"

# (country, capital): the countries are single tokens of the shipped 8k tokenizer or short
# pieces; capitals may be several tokens (the loss and the scores sum over a suffix's tokens)
CAPITALS = [
    ("France", "Paris"), ("Germany", "Berlin"), ("Italy", "Rome"), ("Spain", "Madrid"),
    ("Japan", "Tokyo"), ("China", "Beijing"), ("Russia", "Moscow"), ("Egypt", "Cairo"),
    ("Greece", "Athens"), ("Ireland", "Dublin"), ("England", "London"), ("Scotland", "Edinburgh"),
    ("Wales", "Cardiff"), ("Canada", "Ottawa"), ("Australia", "Canberra"), ("Iraq", "Baghdad"),
    ("Austria", "Vienna"), ("Norway", "Oslo"), ("Sweden", "Stockholm"), ("Portugal", "Lisbon"),
    ("Poland", "Warsaw"), ("Turkey", "Ankara"), ("Iran", "Tehran"), ("Cuba", "Havana"),
]
CAPITAL_EXAMPLE = "The capital of {country} is"
CAPITAL_EVAL = [
    "She was born in {country} and grew up in its capital,",
    "The government of {country} meets in the city of",
    "{country}'s capital city is",
    "The president of {country} lives and works in",
    "Q: What is the capital city of {country}? A:",
    "Our tour of {country} began in the capital,",
]

# occupations (in the shipped vocabulary, most single tokens); the balance loss evens he / she
OCCUPATIONS = [
    "teacher", "driver", "manager", "officer", "writer", "author", "chief", "worker", "student",
    "judge", "cook", "president", "minister", "nurse", "doctor", "lawyer", "engineer", "secretary",
    "farmer", "soldier", "clerk", "baker", "cashier", "tailor",
]
PRONOUN_EXAMPLE = "The {occupation} said"
PRONOUN_EVAL = [
    "The {occupation} came into the room. When",
    "I spoke with the {occupation} yesterday, and",
    "My {occupation} told me that",
    "We thanked the {occupation} because",
    "The {occupation} was late to work because",
    "Everyone agreed that the {occupation} was right, but",
]

# (singular, plural) subjects; agreement with is/are, was/were, has/have across attractors
NOUNS = [
    ("teacher", "teachers"), ("student", "students"), ("dog", "dogs"), ("book", "books"),
    ("car", "cars"), ("man", "men"), ("woman", "women"), ("child", "children"),
    ("officer", "officers"), ("worker", "workers"), ("city", "cities"), ("company", "companies"),
    ("player", "players"), ("friend", "friends"), ("bird", "birds"), ("member", "members"),
    ("king", "kings"), ("boy", "boys"), ("girl", "girls"), ("driver", "drivers"),
]
ATTRACTORS = [("school", "schools"), ("house", "houses"), ("road", "roads"), ("country", "countries")]
AGREEMENT_EXAMPLE = "The {noun}"  # -> " is" / " are"
# (template, singular verb, plural verb); {attractor} takes the other number than the subject
AGREEMENT_EVAL = [
    ("The {noun} near the {attractor}", " is", " are"),
    ("The {noun} from the {attractor}", " was", " were"),
    ("The {noun} of the {attractor}", " has", " have"),
    ("I think that the {noun}", " is", " are"),
    ("Last year the {noun} in the {attractor}", " was", " were"),
    ("Everyone says the {noun} next to the {attractor}", " is", " are"),
]


def _split(items: list, which: str) -> list:
    """Even positions -> validation, odd -> test: disjoint words, the same kinds in both."""
    return items[0::2] if which == "val" else items[1::2]


def capitals(which: str) -> tuple[list[dict], list[dict]]:
    pairs = _split(CAPITALS, which)
    examples = [{"prefix": CAPITAL_EXAMPLE.format(country=c), "suffix": f" {cap}"} for c, cap in pairs]
    items = []
    for i, (country, capital) in enumerate(pairs):
        foil = pairs[(i + 1) % len(pairs)][1]  # another capital of the same split
        for template in CAPITAL_EVAL:
            items.append({"prefix": template.format(country=country), "suffix1": f" {capital}",
                          "suffix2": f" {foil}"})
    return examples, items


def pronouns(which: str) -> tuple[list[dict], list[dict]]:
    jobs = _split(OCCUPATIONS, which)
    examples = [{"prefix": PRONOUN_EXAMPLE.format(occupation=o), "suffix1": " he", "suffix2": " she"}
                for o in jobs]
    items = [{"prefix": t.format(occupation=o), "suffix1": " he", "suffix2": " she"}
             for o in jobs for t in PRONOUN_EVAL]
    return examples, items


def agreement(which: str) -> tuple[list[dict], list[dict]]:
    nouns = _split(NOUNS, which)
    examples = []
    for singular, plural in nouns:
        examples.append({"prefix": AGREEMENT_EXAMPLE.format(noun=singular), "suffix": " is"})
        examples.append({"prefix": AGREEMENT_EXAMPLE.format(noun=plural), "suffix": " are"})
    items = []
    for n, (singular, plural) in enumerate(nouns):
        for t, (template, verb_sg, verb_pl) in enumerate(AGREEMENT_EVAL):
            attr_sg, attr_pl = ATTRACTORS[(n + t) % len(ATTRACTORS)]
            items.append({"prefix": template.format(noun=singular, attractor=attr_pl),
                          "suffix1": verb_sg, "suffix2": verb_pl})
            items.append({"prefix": template.format(noun=plural, attractor=attr_sg),
                          "suffix1": verb_pl, "suffix2": verb_sg})
    return examples, items


DATASETS = {"capitals": (capitals, "good"), "pronouns": (pronouns, "balance"),
            "agreement": (agreement, "good")}


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m data.build_canonical", description=__doc__.splitlines()[0])
    p.add_argument("--out", default=str(OUT), help=f"output directory (default {OUT})")
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name, (build, loss) in DATASETS.items():
        for which in ("val", "test"):
            examples, items = build(which)
            write_jsonl(out / f"{name}-{which}-examples.jsonl", examples)
            write_jsonl(out / f"{name}-{which}-eval.jsonl", items)
            print(f"{name} ({loss}) {which}: {len(examples)} examples, {len(items)} evaluation items")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
