"""Shared fixtures: a tiny Backpack with a tiny BPE tokenizer (fixed seeds), and the same model
saved to a directory for command-line tests. Others may add fixtures below."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:  # so that a bare `pytest` finds backpack_core and analyses
    sys.path.insert(0, str(REPO_ROOT))

from backpack_core import Backpack, ModelConfig, save_backpack, train_bpe  # noqa: E402
from backpack_core.model.config import PRESETS  # noqa: E402

TINY_CORPUS = [
    "The MacBook is made by Apple. The laptop by Apple is the MacBook.",
    "A laptop made by HP is not a MacBook. The HP laptop is made by HP.",
    "She went to the bank to deposit money. The bank by the river has money.",
    "The river bank was full of water. Science is the study of the river.",
    "The science of money is the science of the bank.",
    "He said that the doctor is good. She said that the nurse is good.",
]

# Every timeout in the tests is a hang guard, never a time budget: far above what the slowest run
# takes on a loaded 2-core machine, so that a test is bounded by the work it does, not the speed of
# the machine (tests/test_timeouts.py checks that no smaller timeout creeps in).
HANG_S = 900

# single tokens of the tiny tokenizer, used by the tests
TINY_WORDS = (" MacBook", " Apple", " HP", " bank", " river", " money", " science", " laptop",
              " the", " is", " made", " by")


@pytest.fixture(scope="session")
def tiny_tokenizer():
    tokenizer = train_bpe(TINY_CORPUS * 20, vocab_size=400)
    for word in TINY_WORDS:
        assert len(tokenizer.encode(word)) == 1, f"{word!r} should be one token of the tiny BPE"
    return tokenizer


@pytest.fixture(scope="session")
def tiny_model(tiny_tokenizer):
    torch.manual_seed(0)
    config = ModelConfig(**PRESETS["tiny"])
    assert config.vocab_size >= len(tiny_tokenizer)
    model = Backpack(config).eval()
    # Random init gives near-uniform predictions; spread the embeddings and the senses so that
    # logits vary (std ~1) and edits visibly change predictions.
    with torch.no_grad():
        model.wte.weight.mul_(10.0)
        model.sense_network.final_mlp.c_proj.weight.mul_(100.0)
    return model


@pytest.fixture(scope="session")
def tiny_model_dir(tiny_model, tiny_tokenizer, tmp_path_factory):
    directory = tmp_path_factory.mktemp("tiny-backpack")
    save_backpack(tiny_model, tiny_tokenizer, directory)
    return directory


def state_checksum(model: torch.nn.Module) -> float:
    """A float64 checksum of every parameter and buffer (changes if any weight is touched)."""
    return float(sum(t.double().abs().sum() + t.double().sum() * (i + 1)
                     for i, t in enumerate(model.state_dict().values())))


@pytest.fixture(scope="session")
def overlay_venv():
    """A factory: `overlay_venv(root)` makes a fresh venv at `root` that also sees the packages
    of the environment running the tests (after its own), and returns its bin directory.

    A .pth file does this; `--system-site-packages` would not, when the tests themselves run in a
    venv. The environment's own .pth files (an editable install of this project) are not read
    there, so what the new venv imports is what was installed into it, or else the
    environment's regular packages (torch)."""
    import subprocess
    import sysconfig

    def make(root: Path) -> Path:
        subprocess.run([sys.executable, "-m", "venv", str(root)], check=True, timeout=HANG_S,
                       capture_output=True)
        bindir = root / "bin"
        probe = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
        (site,) = subprocess.run([str(bindir / "python"), "-c", probe], check=True, text=True,
                                 capture_output=True, timeout=HANG_S).stdout.split()
        outer = sorted({sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]})
        Path(site, "_outer_site.pth").write_text("\n".join(outer) + "\n")
        return bindir

    return make


def strict_json(text: str):
    """json.loads that refuses NaN / Infinity (not JSON): what a strict consumer accepts."""
    import json

    def refuse(constant):
        raise ValueError(f"{constant} is not valid JSON")

    return json.loads(text, parse_constant=refuse)


@pytest.fixture(scope="session")
def tiny_twin(tiny_tokenizer):
    """The tiny Backpack's Transformer twin: the same contextualizer shape and tokenizer,
    model_kind "transformer" (GPT-2's head), seeded; embeddings spread as the Backpack's."""
    torch.manual_seed(1)
    config = ModelConfig(**{**PRESETS["tiny"], "model_kind": "transformer"})
    twin = Backpack(config).eval()
    with torch.no_grad():
        twin.wte.weight.mul_(10.0)
    return twin


@pytest.fixture(scope="session")
def tiny_model_with_twin_dir(tiny_model, tiny_tokenizer, tiny_twin, tmp_path_factory):
    """The tiny Backpack saved with "twin": "../twin" in its config.json, the twin beside it."""
    root = tmp_path_factory.mktemp("tiny-with-twin")
    save_backpack(tiny_twin, tiny_tokenizer, root / "twin")
    save_backpack(tiny_model, tiny_tokenizer, root / "backpack", extra_config={"twin": "../twin"})
    return root / "backpack"
