"""The README's commands that CI runs literally: each fenced block right after the line
`<!-- .ci/run runs this command literally -->` in README.md holds one command.

    python .ci/readme_commands.py            print them, one per line
    python .ci/readme_commands.py --run      run each with bash (errexit, pipefail) in the
                                             current directory, stop at the first failure,
                                             print the wall time of each (and the venv's size)
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

MARKER = "<!-- .ci/run runs this command literally -->"
README = Path(__file__).resolve().parent.parent / "README.md"


def readme_commands(text: str) -> list[str]:
    lines, commands = text.splitlines(), []
    for i, line in enumerate(lines):
        if line.strip() != MARKER:
            continue
        fence = lines[i + 1].strip()
        if not fence.startswith("```"):
            raise SystemExit(f"README.md:{i + 2}: a fenced code block must follow the marker")
        body = []
        for inner in lines[i + 2:]:
            if inner.strip().startswith("```"):
                break
            body.append(inner)
        command = "\n".join(body).strip()
        if not command:
            raise SystemExit(f"README.md:{i + 2}: the marked code block is empty")
        commands.append(command)
    return commands


def directory_mib(path: str) -> float:
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            full = os.path.join(root, name)
            if not os.path.islink(full):
                total += os.path.getsize(full)
    return total / 2**20


def main() -> int:
    commands = readme_commands(README.read_text())
    if len(commands) != 2:
        print(f"README.md marks {len(commands)} commands; expected exactly 2", file=sys.stderr)
        return 1
    if "--run" not in sys.argv[1:]:
        print("\n".join(commands))
        return 0
    for n, command in enumerate(commands, 1):
        print(f"== README command {n}: {command}", flush=True)
        start = time.monotonic()
        code = subprocess.run(["bash", "-o", "errexit", "-o", "pipefail", "-c", command]).returncode
        print(f"== README command {n}: exit {code}, {time.monotonic() - start:.0f} s", flush=True)
        if code != 0:
            return code
    venv = os.environ.get("VIRTUAL_ENV")
    if venv:
        print(f"== venv {venv}: {directory_mib(venv):.0f} MiB", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
