"""The project as a package, and the pinned set it is tested with.

- the wheel (`pip install .`) carries the core, the analyses, the shipped model and the training
  configs, and nothing of the tests or the app; installed into a fresh venv and run from another
  directory, it loads the shipped model, runs an analysis and finds a training config;
- the README marks exactly the two commands that .ci/run executes, both with the pinned set;
- every requirement is pinned in constraints.txt, at a version its range admits, and the
  environment running the tests is that pinned set (so a green run means the pins work).
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / ".ci"))
from readme_commands import readme_commands  # noqa: E402

from tests.conftest import HANG_S  # noqa: E402

REQUIREMENT = re.compile(r"^([A-Za-z0-9_.\-]+)\s*(\[[^\]]*\])?\s*([^#;]*)")


def requirements(name: str) -> dict[str, str]:
    """{normalised name: version specifier} of a requirements file."""
    out = {}
    for line in (REPO / name).read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            match = REQUIREMENT.match(line)
            assert match, f"{name}: cannot read {line!r}"
            out[normalise(match.group(1))] = match.group(3).strip()
    return out


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pins() -> dict[str, str]:
    out = {}
    for line in (REPO / "constraints.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, version = line.partition("==")
            assert version, f"constraints.txt: {line!r} is not an exact pin"
            out[normalise(name)] = version
    return out


def test_every_requirement_is_pinned_within_its_range():
    from packaging.specifiers import SpecifierSet

    pinned = pins()
    for file in ("requirements.txt", "requirements-dev.txt"):
        for name, spec in requirements(file).items():
            if name == "torch":  # pinned where it is installed (README, .ci/run) or kept (Docker)
                assert "torch" not in pinned
                continue
            assert name in pinned, f"{name} ({file}) has no pin in constraints.txt"
            assert pinned[name] in SpecifierSet(spec), f"{name}=={pinned[name]} is outside {spec!r}"
            if file == "requirements.txt":
                assert "<" in spec or "==" in spec, f"{name}: give the range an upper bound"


def test_tests_run_on_the_pinned_set():
    if os.environ.get("CI") != "true":
        pytest.skip("checked in CI, whose fresh venv installs exactly constraints.txt")
    drift = {}
    for name, version in pins().items():
        try:
            installed = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue  # a dependency of another platform or Python
        if installed != version:
            drift[name] = (version, installed)
    assert not drift, f"pinned vs installed: {drift}"


def test_readme_marks_the_two_ci_commands():
    commands = readme_commands((REPO / "README.md").read_text())
    assert len(commands) == 2
    install_run, install_test = commands
    for command in commands:
        assert "-c constraints.txt" in command and "torch==" in command
    assert "python -m analyses.sense_topk --word science" in install_run
    assert install_test.endswith("python -m pytest -q") and "[dev]" in install_test


WHEEL_SOURCES = ["pyproject.toml", "README.md", "requirements.txt", "requirements-dev.txt",
                 "backpack_core", "analyses", "configs", "data/backpack-mini"]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    setuptools = pytest.importorskip("setuptools", reason="setuptools is needed to build the wheel")
    major = int(setuptools.__version__.split(".")[0])
    if major < 69:
        pytest.skip(f"setuptools {setuptools.__version__} is older than pyproject's build-system (>=69)")
    # setuptools builds in the source tree (build/, *.egg-info): build from a copy of what the
    # wheel is made of, so the checkout stays clean
    source, out = tmp_path_factory.mktemp("source"), tmp_path_factory.mktemp("wheel")
    for name in WHEEL_SOURCES:
        copy = shutil.copytree if (REPO / name).is_dir() else shutil.copy2
        kwargs = {"ignore": shutil.ignore_patterns("__pycache__")} if (REPO / name).is_dir() else {}
        copy(REPO / name, source / name, **kwargs)
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                           "-w", str(out), str(source)], capture_output=True, text=True, timeout=HANG_S,
                          cwd=out)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (path,) = out.glob("backpack_workbench-*.whl")
    return path


def test_wheel_contents(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    wings = ["common", "model", "edit", "interpret", "experiments", "training"]  # every subpackage
    for needed in [*(f"backpack_core/{w}/__init__.py" for w in wings), "backpack_core/train.py",
                   "backpack_core/model/backpack.py", "backpack_core/training/checkpoint.py",
                   "backpack_core/training/prepare.py", "analyses/sense_topk.py",
                   "analyses/data/careers.json",
                   "analyses/data/edits_last_week.json", "analyses/data/prompts_last_week.jsonl",
                   "analyses/data/canonical/capitals-test-examples.jsonl",
                   "backpack_core/shipped_model/model.safetensors",
                   "backpack_core/shipped_model/config.json", "backpack_core/shipped_model/tokenizer.json",
                   "backpack_core/shipped_configs/backpack-small.toml"]:
        assert needed in names, f"{needed} missing from {wheel.name}"
    assert not [n for n in names if n.startswith(("tests/", "app/", "bench/", "data/"))]
    requires = [line for line in zipfile.ZipFile(wheel).read(
        next(n for n in names if n.endswith(".dist-info/METADATA"))).decode().splitlines()
        if line.startswith("Requires-Dist:")]
    assert any("transformers<6,>=5.0" in r or "transformers>=5.0,<6" in r for r in requires), requires


INSTALLED = """
import json, sys
import backpack_core, analyses
from backpack_core import load_backpack
from backpack_core.training.config import CONFIG_DIR
model, tokenizer = load_backpack(device="cpu")
print(json.dumps({"core": backpack_core.__file__, "analyses": analyses.__file__,
                  "configs": sorted(p.stem for p in CONFIG_DIR.glob("*.toml")),
                  "vocab": model.config.vocab_size, "science": tokenizer.encode(" science")}))
"""


@pytest.mark.slow
def test_installed_wheel_works_from_another_directory(wheel, overlay_venv, tmp_path):
    bindir = overlay_venv(tmp_path / "venv")
    proc = subprocess.run([str(bindir / "python"), "-m", "pip", "install", "-q", "--no-deps", str(wheel)],
                          capture_output=True, text=True, timeout=HANG_S)
    assert proc.returncode == 0, proc.stderr[-3000:]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env["HF_HUB_OFFLINE"] = "1"
    run = lambda *args: subprocess.run([str(bindir / "python"), *args], cwd=elsewhere, env=env,  # noqa: E731
                                       capture_output=True, text=True, timeout=HANG_S)
    proc = run("-c", INSTALLED)
    assert proc.returncode == 0, proc.stderr[-3000:]
    info = json.loads(proc.stdout.strip().splitlines()[-1])
    site = str(tmp_path / "venv")
    assert info["core"].startswith(site) and info["analyses"].startswith(site), info
    shipped = json.loads((REPO / "data" / "backpack-mini" / "config.json").read_text())
    assert "backpack-small" in info["configs"] and info["vocab"] == shipped["vocab_size"]
    proc = run("-m", "analyses.sense_topk", "--word", "science", "--json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout)["word"].strip() == "science"


def readme_python_blocks() -> list[str]:
    text = (REPO / "README.md").read_text()
    return [block.strip() for block in re.findall(r"```python\n(.*?)```", text, flags=re.S)]


@pytest.mark.slow
@pytest.mark.parametrize("index", range(len(readme_python_blocks())))
def test_readme_python_examples_run_as_written(index, tmp_path):
    """Each ```python block of the README, pasted into a fresh interpreter at the repo root."""
    code = readme_python_blocks()[index]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=HANG_S)
    assert proc.returncode == 0, f"README example {index}:\n{code}\n{proc.stderr[-3000:]}"
