"""Resume the training campaign of the shipped model (issue 22) in the background.

    python -m data.campaign                      # the Backpack: resume, else warm-start
    python -m data.campaign --twin               # its Transformer twin: resume, else from scratch
    python -m data.campaign --dry-run            # print the command, start nothing
    python -m data.campaign train.max_tokens=30e6   # overrides go to the trainer

The campaign's run directory (default /work/runs/campaign, outside git and any worktree) holds
the resume state. The decision:

1. it holds a complete checkpoint: `--resume` it (exactly where it stopped; overrides such as a
   larger train.max_tokens are allowed and reported by the trainer);
2. else, when the last committed model (data/backpack-mini) has the shards' tokenizer: a new
   run of configs/backpack-mini-cpu.toml that starts from it (`train.init_from=data/backpack-mini`:
   its weights, a new AdamW state, --warmup steps of warm-up);
3. else (the committed model predates these shards): a new run of the config as it stands (its
   own initialisation: word2vec embeddings). The twin has no committed weights: 1 or 3.

The trainer is started with nohup, `nice -n 5`, one torch thread (OMP_NUM_THREADS=1 and
train.threads=1), its output in <run dir>.log; its pid is printed and written to <run dir>.pid.
Stop it with `kill <pid>` (SIGTERM): it saves a checkpoint first.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

DEFAULT_RUNS = Path("/work/runs")
WARM_START_FROM = "data/backpack-mini"
WARMUP_STEPS = 50  # the warm-start's warm-up: 50 x 4,096 tokens


def same_tokenizer(model_dir: Path, shards: Path) -> bool:
    """Whether a model directory's tokenizer is the one the shards were prepared with."""
    from backpack_core.model.tokenizer import Tokenizer
    from backpack_core.training.prepare import tokenizer_sha256

    try:
        manifest = json.loads((shards / "manifest.json").read_text())
        return tokenizer_sha256(Tokenizer.load(model_dir)) == manifest.get("tokenizer_sha256")
    except (OSError, ValueError, KeyError):
        return False


def campaign_command(run_dir: Path, twin: bool, shards: str, overrides: list[str],
                     warmup: int = WARMUP_STEPS, init_from: str = WARM_START_FROM) -> list[str]:
    """The trainer's command line: --resume when run_dir holds a complete checkpoint, else a new
    run (a warm start from init_from for the Backpack, from scratch for the twin)."""
    from backpack_core.training.checkpoint import find_checkpoint

    train = [sys.executable, "-m", "backpack_core.train"]
    if find_checkpoint(run_dir) is not None:
        return [*train, "--resume", str(run_dir), *overrides]
    config = "transformer-mini-cpu" if twin else "backpack-mini-cpu"
    warm = not twin and same_tokenizer(Path(init_from), Path(shards))
    start = [f"train.init_from={init_from}", "train.init_embeddings=random",
             f"train.warmup_steps={warmup}"] if warm else []
    return [*train, "--config", config, f"data.dir={shards}", f"train.out_dir={run_dir}",
            "train.threads=1", *start, *overrides]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--twin", action="store_true", help="the Transformer twin's campaign")
    parser.add_argument("--runs", type=Path, default=DEFAULT_RUNS, help="where run directories live")
    parser.add_argument("--shards", default="data/shards/corpus32k", help="token shards (a new run)")
    parser.add_argument("--warmup", type=int, default=WARMUP_STEPS, help="warm-start warm-up steps")
    parser.add_argument("--dry-run", action="store_true", help="print the command only")
    parser.add_argument("overrides", nargs="*", metavar="section.key=value")
    args = parser.parse_args(argv)
    run_dir = args.runs / ("campaign-twin" if args.twin else "campaign")
    cmd = campaign_command(run_dir, args.twin, args.shards, args.overrides, args.warmup)
    print(shlex.join(cmd))
    if args.dry_run:
        return 0
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    log = open(f"{run_dir}.log", "a")  # noqa: SIM115 - handed to the child
    proc = subprocess.Popen(["nice", "-n", "5", *cmd], stdout=log, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, start_new_session=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    Path(f"{run_dir}.pid").write_text(f"{proc.pid}\n")
    print(f"started pid {proc.pid}; log {run_dir}.log")
    return 0


if __name__ == "__main__":
    sys.exit(main())
