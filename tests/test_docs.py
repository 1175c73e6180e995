"""The docs' numbers and commands, checked (issue 20.8: the docs quoted a retired model's
perplexities and sense-bank size, a config table without the shipped model's config, a byte
token as '\ufffd' where the CLI prints '<0x8A>', `runs/` directories a fresh clone lacks, and an
API example the shipped model refuses).

Numbers are read from the shipped model's card files (data/backpack-mini/eval.json,
config.json), never written here: a retrained model needs its docs updated, and these tests say
where. The docs quote them in fixed phrases so that they can be found: "validation perplexity
211 against 255", "(2.6M parameters, 10 MB)", "8192 × 16 × 128 = 16.8M numbers, 67 MB".
"""

from __future__ import annotations

import importlib
import json
import re
import shlex
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
CARD = REPO / "data" / "backpack-mini"
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
CONFIGS = {p.stem for p in (REPO / "configs").glob("*.toml")}


@pytest.fixture(scope="module")
def card() -> dict:
    return json.loads((CARD / "eval.json").read_text())


@pytest.fixture(scope="module")
def config() -> dict:
    return json.loads((CARD / "config.json").read_text())


def number(text: str) -> float:
    return float(text.replace(",", ""))


def code_lines(path: Path) -> list[str]:
    """The lines inside the ``` blocks of a Markdown file."""
    return [line for block in re.findall(r"```[^\n]*\n(.*?)```", path.read_text(), flags=re.S)
            for line in block.splitlines()]


def test_validation_perplexities_are_the_cards(card):
    model, twin = round(card["backpack_val"]["perplexity"]), round(card["twin_val"]["perplexity"])
    found = []
    for path in DOCS:
        for m in re.finditer(r"validation perplexit(?:y|ies) (\d[\d,]*)(?: against (\d[\d,]*))?",
                             path.read_text()):
            found.append(path.name)
            assert number(m[1]) == model, f"{path.name}: {m[0]!r}, the card says {model}"
            assert m[2] is None or number(m[2]) == twin, f"{path.name}: {m[0]!r}, the twin's is {twin}"
    assert {"README.md", "ANALYSES.md"} <= set(found), found
    # the card's own table
    table = (CARD / "README.md").read_text()
    for name, key in (("Backpack", "backpack"), ("Transformer twin", "twin")):
        val, ptb = card[f"{key}_val"], card[f"{key}_ptb"]
        row = (f"| {name} | {val['perplexity']:.2f} | {val['word_perplexity']:.1f} | "
               f"{ptb['perplexity']:.2f} | {ptb['word_perplexity']:.1f} |")
        assert row in table, row


def test_ptb_table_is_the_cards(card):
    text = (REPO / "docs" / "ANALYSES.md").read_text()
    for label, key in (("Backpack (shipped)", "backpack_ptb"), ("Transformer twin", "twin_ptb")):
        (row,) = re.findall(rf"^\| PTB test[^|]*\| {re.escape(label)} \|([^\n]*)$", text, flags=re.M)
        tokens, ppl, word_ppl = (number(c) for c in row.split("|")[:3])
        ref = card[key]
        assert (tokens, ppl, word_ppl) == (ref["tokens"], round(ref["perplexity"]),
                                           round(ref["word_perplexity"])), (label, row)


def test_shipped_sizes_are_the_models(card, config):
    readme = (REPO / "README.md").read_text()
    (m,) = re.findall(r"\(([\d.]+)M parameters, (\d+) MB\)", readme)
    assert float(m[0]) == round(card["parameters"]["total"] / 1e6, 1)
    assert int(m[1]) == round((CARD / "model.safetensors").stat().st_size / 1e6)
    api = (REPO / "docs" / "API.md").read_text()
    (b,) = re.findall(r"the shipped model:\s+vocabulary × senses × width = (\d+) × (\d+) × (\d+) = "
                      r"([\d.]+)M numbers, (\d+) MB", api)
    shape = (config["vocab_size"], config["num_senses"], config["n_embd"])
    numbers = shape[0] * shape[1] * shape[2]
    assert tuple(map(int, b[:3])) == shape, b
    assert float(b[3]) == round(numbers / 1e6, 1) and int(b[4]) == round(numbers * 4 / 1e6), b


def test_training_configs_cited_exist_and_the_shipped_one_is_listed(card):
    text = (REPO / "docs" / "TRAINING.md").read_text()
    cited = set(re.findall(r"--config ([\w.-]+)", text))
    for row in re.findall(r"^\| `([\w-]+)`(?: / `([\w-]+)`)? \|", text, flags=re.M):
        cited |= {name for name in row if name}
    assert cited and cited <= CONFIGS | {"..."}, sorted(cited - CONFIGS)
    shipped = card["training"]["run_config"]["name"]
    (row,) = [line for line in text.splitlines() if line.startswith(f"| `{shipped}`")]
    assert "shipped" in row, row
    params = re.findall(r"\| ([\d.]+)M / ([\d.]+)M", row)
    assert params == [(f"{card['parameters']['total'] / 1e6:.1f}",
                       f"{card['twin_parameters']['total'] / 1e6:.1f}")], row
    for line in text.splitlines():  # no other row claims to be the shipped model
        if line.startswith("| `") and "shipped" in line:
            assert line.startswith(f"| `{shipped}`"), line


def test_run_directories_cited_are_made_by_a_command_in_the_same_doc():
    """`runs/` is empty in a fresh clone: a doc may cite runs/NAME only as the output of a
    training command it gives (`--config NAME`)."""
    for path in DOCS:
        text = path.read_text()
        for name in sorted(set(re.findall(r"runs/([\w.-]+)", text))):
            assert name in CONFIGS and f"--config {name}" in text, \
                f"{path.name} cites runs/{name}, which no `--config {name}` there makes"


def test_no_replacement_character_in_shown_output():
    """The CLIs print a partial UTF-8 byte token as '<0x8A>' (inspect.token_text), never '\ufffd'."""
    for path in DOCS:
        bad = [line for line in code_lines(path) if "\ufffd" in line]
        assert not bad, (path.name, bad[:3])


def test_api_examples_are_accepted_by_the_shipped_model():
    from backpack_core import load_backpack
    from backpack_core.edit.specs import EditSet

    model, tokenizer = load_backpack()
    text = (REPO / "docs" / "API.md").read_text()
    specs = [json.loads(line) for block in re.findall(r"```json\n(.*?)```", text, flags=re.S)
             for line in block.splitlines() if line.startswith('{"kind"') and "..." not in line]
    specs += [{"kind": "knowledge_edit", "word": w, "remove": r, "add": a} for w, r, a in
              re.findall(r'KnowledgeEdit\("([^"]+)", remove="([^"]+)", add="([^"]+)"\)', text)]
    assert len(specs) >= 8
    for spec in specs:
        EditSet.from_dict({"version": 1, "edits": [spec]}).validate(tokenizer, model.config)
    for target in re.findall(r'--target "([^"]+)"', text) + re.findall(r'attribution\("([^"]+)"', text):
        assert len(tokenizer.encode(target)) == 1, target


def analyses_commands() -> list[tuple[str, str]]:
    """(doc, command line) for every literal `python -m analyses.X ...` line of the docs' code
    blocks and tables (not the synopses with [optional] parts or alternatives)."""
    out = []
    for path in DOCS:
        lines = code_lines(path) + re.findall(r"^\| `(python -m analyses\.[^`]+)`", path.read_text(),
                                              flags=re.M)
        for line in lines:
            line = line.strip().removeprefix("$ ").split("  #")[0].strip()
            if (line.startswith("python -m analyses.") and not re.search(r"[\[|<]|\.\.\.|\\$", line)
                    and "(and" not in line):
                out.append((path.name, line))
    analyses = {p.stem for p in (REPO / "analyses").glob("[a-z]*.py")}
    for name, rest in re.findall(r"^\| `(\w+) ([^`]*)` \|", (REPO / "README.md").read_text(), flags=re.M):
        if name in analyses and not re.search(r"[\[<]|\\\|", rest):  # README's table: no prefix
            out.append(("README.md", f"python -m analyses.{name} {rest}"))
    return out


@pytest.mark.parametrize("doc, line", analyses_commands())
def test_documented_commands_parse(doc, line):
    args = shlex.split(line)[2:]
    module = importlib.import_module(args[0])
    module.build_parser().parse_args(args[1:])


def test_long_commands_take_max_tokens():
    text = (REPO / "docs" / "ANALYSES.md").read_text()
    section = text.split("## Long commands", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| `(python -m analyses\.[^`]+)`", section, flags=re.M)
    assert {shlex.split(r)[2] for r in rows} == {"analyses.perplexity", "analyses.sense_atlas",
                                                "analyses.evaluate_edits"}
    for row in rows:
        args = shlex.split(row)[2:]
        parsed = importlib.import_module(args[0]).build_parser().parse_args([*args[1:], "--max-tokens",
                                                                             "20000"])
        assert parsed.max_tokens == 20000
