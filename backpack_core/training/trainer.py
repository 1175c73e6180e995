"""Train a Backpack, or its Transformer twin, from a config file: one process, or many under torchrun.

    python -m backpack_core.train --config tiny train.max_steps=50
    python -m backpack_core.train --config configs/backpack-mini-256.toml data.dir=data/shards/corpus
    python -m backpack_core.train --resume runs/backpack-mini-256          # continue exactly
    torchrun --nproc_per_node 8 -m backpack_core.train --config backpack-small

The parts live in `backpack_core.training` (config, optim, schedule, checkpoint, metrics,
distributed); this file joins them: `train_step` (one optimizer step over the micro-batches),
`evaluate`, and the loop in `run`. See docs/TRAINING.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from backpack_core.common import cli
from backpack_core.common.files import locked, parse_json, read_bounded, read_prefix, write_text_atomic
from backpack_core.common.limits import MAX_DATA_FILE_BYTES, check_model_fits
from backpack_core.model.backpack import Backpack, count_parameters, flops_per_token, next_token_loss
from backpack_core.model.loading import CheckpointError
from backpack_core.training import distributed
from backpack_core.training.checkpoint import (
    find_checkpoint,
    load_checkpoint,
    point_to,
    remove_checkpoints,
    resume_point,
    save_checkpoint,
)
from backpack_core.training.config import (
    BatchPlan,
    ConfigError,
    RunConfig,
    load_run_config,
    plan_batches,
    resolve_model_config,
    should_compile,
)
from backpack_core.training.init import (
    fit_senses_to_embeddings,
    warm_start,
    word2vec_cache_name,
    word2vec_embeddings,
)
from backpack_core.training.loader import ShardSet, TrainBatches, eval_windows, gather
from backpack_core.training.metrics import (
    MetricsLog,
    eval_line,
    memory_gib,
    mfu,
    peak_flops,
    train_line,
)
from backpack_core.training.optim import build_optimizer, set_lr
from backpack_core.training.schedule import lr_at

RUN_CONFIG = "run_config.json"
METRICS = "metrics.jsonl"
# What must not change for a resumed run to continue the same run (checked against train_state.pt).
RESUME_KEYS = ("model", "seq_len", "seed", "global_batch", "train_tokens_in_data", "tokenizer_sha256")


class NonFiniteLoss(RuntimeError):
    """The training loss or gradient became NaN/Inf; the update was not applied."""


@dataclass
class TrainResult:
    out_dir: Path
    step: int
    tokens: int
    val_loss: float | None = None
    stopped_by: str | None = None  # signal name when interrupted
    exit_code: int = 0


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, micro_batches: list[torch.Tensor],
               device: torch.device, autocast, grad_clip: float, d: distributed.Dist | None = None
               ) -> tuple[torch.Tensor, torch.Tensor | None, bool]:
    """Accumulate gradients over the micro-batches (synced across ranks on the last), clip, step.
    Returns the step's mean loss (this rank), the gradient norm before clipping, and whether the
    update was applied: with a NaN/Inf loss or gradient norm on any rank it is not."""
    optimizer.zero_grad(set_to_none=True)
    loss_sum = torch.zeros((), device=device)
    for i, tokens in enumerate(micro_batches):
        tokens = tokens.to(device, non_blocking=True)
        with distributed.gradient_sync(model, sync=i == len(micro_batches) - 1):
            with autocast():
                loss = model(tokens, labels=tokens).loss / len(micro_batches)
            loss.backward()
        loss_sum += loss.detach()
    grad_norm = nn.utils.clip_grad_norm_(model.parameters(), grad_clip) if grad_clip > 0 else None
    finite = torch.isfinite(loss_sum) & (torch.isfinite(grad_norm) if grad_norm is not None else True)
    bad = distributed.any_rank(d, not bool(finite)) if d is not None else not bool(finite)
    if bad:
        optimizer.zero_grad(set_to_none=True)
        return loss_sum, grad_norm, False
    optimizer.step()
    return loss_sum, grad_norm, True


@torch.no_grad()
def evaluate(model: nn.Module, tokens: np.ndarray, starts: np.ndarray, seq_len: int, batch_size: int,
             d: distributed.Dist, autocast) -> float:
    """Mean next-token loss over fixed val windows. Rank r takes windows r::world, padded with
    zero-weight windows so every rank runs the same number of batches (FSDP needs that)."""
    model.eval()
    mine = starts[d.rank::d.world_size]
    per_rank = -(-len(starts) // d.world_size)
    weights = torch.zeros(per_rank, dtype=torch.float64)
    weights[:len(mine)] = 1.0
    mine = np.concatenate([mine, np.full(per_rank - len(mine), starts[0])]).astype(np.int64)
    total = torch.zeros((), dtype=torch.float64, device=d.device)
    for i in range(0, per_rank, batch_size):
        batch = gather(tokens, mine[i:i + batch_size], seq_len).to(d.device)
        with autocast():
            logits = model(batch).logits
        losses = next_token_loss(logits, batch, reduction="none")[:, :-1].mean(1)
        total += (losses.double() * weights[i:i + batch_size].to(d.device)).sum()
    model.train()
    return float(distributed.all_sum(d, total)) / len(starts)


def step_seed(seed: int, step: int, rank: int) -> int:
    """Seed of the dropout masks of one step on one rank."""
    return int(np.random.SeedSequence([seed, step, rank]).generate_state(1)[0])


def check_resumable(saved: dict, current: dict, out_dir: Path) -> None:
    changed = [f"{k}: {saved.get(k)!r} -> {current[k]!r}" for k in RESUME_KEYS if saved.get(k) != current[k]]
    if changed:
        raise CheckpointError(f"cannot resume {out_dir} as the same run; changed: " + "; ".join(changed)
                              + ". Start a new run (another train.out_dir) instead")


def read_run_config(run_dir: Path) -> dict:
    """run_config.json of a run directory, or CheckpointError saying what is wrong with it."""
    path = run_dir / RUN_CONFIG
    try:
        saved = parse_json(read_bounded(path, MAX_DATA_FILE_BYTES, str(path), "MAX_DATA_FILE_BYTES",
                                        CheckpointError).decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{path} is damaged (not valid JSON: {err}); give the config again with "
                              f"--config FILE --resume {run_dir}") from None
    if not isinstance(saved, dict) or not isinstance(saved.get("train", {}), dict):
        raise CheckpointError(f"{path} is not a run config (a JSON object with model, data and train); "
                              f"give the config again with --config FILE --resume {run_dir}")
    return saved


def describe_changes(out_dir: Path, cfg: RunConfig) -> list[str]:
    """Settings of the saved run_config.json that this resumed run changes (allowed, reported)."""
    try:
        old = parse_json(read_prefix(out_dir / RUN_CONFIG, MAX_DATA_FILE_BYTES))
    except (OSError, json.JSONDecodeError):
        return []
    new = cfg.to_dict()
    return [f"train.{k}: {old['train'].get(k)!r} -> {v!r}" for k, v in new["train"].items()
            if k != "out_dir" and old.get("train", {}).get(k) != v]


@dataclass
class Job:
    """A run ready to train: what `setup` builds and `loop` uses."""

    cfg: RunConfig
    d: distributed.Dist
    plan: BatchPlan
    model: Backpack  # the plain model (its parameters sharded in place under FSDP)
    train_model: nn.Module  # what a training step calls: model, or DDP / compiled around it
    optimizer: torch.optim.Optimizer
    shards: ShardSet
    batches: TrainBatches
    val_starts: np.ndarray
    metrics: MetricsLog
    autocast: Callable
    identity: dict  # what a resumed run must share with this one
    flops_per_token: float  # training FLOPs per token (model.flops_per_token)
    peak_flops: float | None  # of one accelerator; None: unknown, MFU not reported
    step: int = 0
    tokens: int = 0

    def say(self, *args, **kwargs) -> None:
        if self.d.is_main:
            print(*args, **kwargs, flush=True)

    def save(self) -> None:
        """A checkpoint in out_dir (collective under FSDP; rank 0 writes)."""
        state = {"step": self.step, "tokens": self.tokens, "identity": self.identity}
        save_checkpoint(self.cfg.out_dir, self.model, self.optimizer, self.shards.tokenizer(), state, self.d)


def initialize(model: Backpack, cfg: RunConfig, shards: ShardSet, say: Callable | None) -> None:
    """The starting weights a new run asks for: word2vec embeddings (train.init_embeddings) or a
    trained model's weights (train.init_from); random ones (already in place) otherwise. Then,
    with train.init_senses = "embeddings", the sense network fitted so senses start at E[x]."""
    t = cfg.train
    if t.init_from:
        warm_start(model, t.init_from, shards.manifest.get("tokenizer_sha256"))
        if say:
            say(f"warm start from {t.init_from} (new optimizer, {t.warmup_steps} warm-up steps)")
    elif t.init_embeddings == "word2vec":
        started = time.time()
        w2v = dict(std=t.init_w2v_std, epochs=t.init_w2v_epochs, window=t.init_w2v_window,
                   max_tokens=t.init_w2v_tokens, seed=t.seed,
                   identity=str(shards.manifest.get("tokenizer_sha256")))
        data = (shards.train, model.config.vocab_size, model.config.n_embd, shards.eos_token_id)
        weight = word2vec_embeddings(*data, **w2v, cache_dir=shards.directory)
        with torch.no_grad():
            model.wte.weight.copy_(weight.to(model.wte.weight.device))
        if say:
            say(f"embeddings from word2vec on the train tokens ({time.time() - started:.0f}s; "
                f"cached as {shards.directory / word2vec_cache_name(*data, **w2v)})")
    if t.init_senses == "embeddings":
        started = time.time()
        fit = fit_senses_to_embeddings(model, steps=t.init_senses_steps, lr=t.init_senses_lr,
                                       seed=t.seed, progress=say is not None)
        if say:
            say(f"senses fitted to their token's embedding in {t.init_senses_steps} steps "
                f"({time.time() - started:.0f}s): cosine {fit['cosine_before']:.3f} -> "
                f"{fit['cosine_after']:.3f}, norm ratio {fit['norm_ratio_before']:.2f} -> "
                f"{fit['norm_ratio_after']:.2f}")


def check_writable(out_dir: Path) -> None:
    """The run directory exists (created) and this process may write there."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        probe = out_dir / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise ConfigError(f"train.out_dir {out_dir} is not writable ({err.strerror or err}); choose "
                          "a directory you can write to (train.out_dir=...)") from None


def setup(cfg: RunConfig, d: distributed.Dist, resume: bool, overwrite: bool) -> Job:
    """Data, model, wrapping for this machine, optimizer, checkpoint (when resuming), run_config.json."""
    t, out_dir, seq_len = cfg.train, cfg.out_dir, cfg.data.seq_len
    shards = ShardSet(cfg.data.dir)
    model_config = resolve_model_config(cfg, shards.vocab_size, shards.eos_token_id)
    plan = plan_batches(cfg, d.world_size)
    prior = find_checkpoint(out_dir)
    if resume and prior is None:
        raise CheckpointError(f"nothing to resume: {out_dir} holds no complete checkpoint")
    if not resume and prior is not None and not overwrite:
        raise ConfigError(f"{out_dir} already holds a checkpoint (step {prior[1]}); pass --resume to "
                          "continue it, --overwrite to start over, or choose another train.out_dir")
    if not resume and prior is not None and d.is_main:
        remove_checkpoints(out_dir)  # --overwrite: the old run's checkpoints must not be resumed
    identity = {"model": model_config.to_dict(), "seq_len": seq_len, "seed": t.seed,
                "global_batch": plan.global_batch, "train_tokens_in_data": int(len(shards.train)),
                "tokenizer_sha256": shards.manifest.get("tokenizer_sha256")}
    state, weights = {}, None
    if resume:  # the newest checkpoint that is whole (a damaged one is skipped, with a note)
        ckpt, state, weights = resume_point(out_dir, move_aside=d.is_main)
        prior = (ckpt, int(state["step"]))
        check_resumable(state.get("identity", {}), identity, out_dir)

    if d.is_main:
        check_writable(out_dir)  # now, not after an hour of training
    # weights, gradients and AdamW's two moments in fp32, before anything is allocated
    check_model_fits(model_config.parameter_count(), 16, d.device, what="the configured model")
    if d.device.type == "cuda":
        torch.set_float32_matmul_precision("high")
    bf16 = t.dtype == "bfloat16" or (t.dtype == "auto" and d.device.type == "cuda")
    if t.threads:
        torch.set_num_threads(t.threads)
    torch.manual_seed(t.seed)
    model = Backpack(model_config).to(d.device)
    model.dedup_senses = t.dedup_senses
    if not resume:  # a resumed run loads every weight from its checkpoint
        initialize(model, cfg, shards=shards, say=print if d.is_main else None)
    train_model = distributed.wrap_model(model, d, t.fsdp, should_compile(t.compile, plan.max_steps), bf16)
    optimizer = build_optimizer(model, t, d.device)
    if resume:
        load_checkpoint(prior[0], model, optimizer, state, weights)
        if d.is_main and prior[0] != out_dir:
            point_to(out_dir, prior[0])  # the run directory loads as the checkpoint resumed from
    job = Job(cfg, d, plan, model, train_model, optimizer, shards,
              batches=TrainBatches(shards.train, seq_len, plan.global_batch, t.seed),
              # one validation set whatever the number of processes (they share it out)
              val_starts=eval_windows(shards.val, seq_len, t.eval_batches * t.batch_size),
              metrics=MetricsLog(out_dir / METRICS, d.is_main, state.get("step") if resume else None),
              autocast=((lambda: torch.autocast(d.device.type, dtype=torch.bfloat16)) if bf16
                        else contextlib.nullcontext),
              identity=identity, flops_per_token=flops_per_token(model_config, seq_len),
              peak_flops=peak_flops(d.device, bf16, t.peak_tflops),
              step=int(state.get("step", 0)), tokens=int(state.get("tokens", 0)))

    for change in describe_changes(out_dir, cfg) if resume else []:
        job.say(f"note: resuming with a changed setting ({change}); the curve will differ from an "
                "uninterrupted run")
    params = count_parameters(model) if not t.fsdp else {"total": sum(p.numel() for p in model.parameters())}
    if d.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        resolved = {"model": model_config.to_dict(), "world_size": d.world_size,
                    "micro_batch": plan.micro_batch, "grad_accum": plan.grad_accum,
                    "global_batch": plan.global_batch, "tokens_per_step": plan.tokens_per_step,
                    "max_steps": plan.max_steps, "parameters": params, "flops_per_token": job.flops_per_token,
                    "device": str(d.device), "bf16": bf16, "torch": torch.__version__,
                    "data": {"dir": str(cfg.data.dir), "splits": shards.manifest["splits"],
                             "tokenizer": shards.manifest["options"]["tokenizer"]}}
        text = json.dumps({**cfg.to_dict(), "resolved": resolved}, indent=2)
        write_text_atomic(out_dir / RUN_CONFIG, text + "\n")
    job.say(f"{model_config.model_kind} with {params['total'] / 1e6:.2f}M parameters, "
            f"{job.flops_per_token / 1e6:.1f} MFLOP/token | {d.world_size} process(es) on {d.device} | "
            f"global batch {plan.global_batch} x {seq_len} = {plan.tokens_per_step:,} tokens "
            f"({plan.micro_batch} x {plan.grad_accum} accum x {d.world_size}) | {plan.max_steps} steps | "
            f"{'resuming at step ' + str(job.step) if resume else 'from scratch'} | {out_dir}")
    if not len(job.val_starts):
        job.say("note: no evaluation (train.eval_batches=0, or the val split is shorter than seq_len)")
    return job


def loop(job: Job, on_step: Callable[[int], None] | None = None) -> TrainResult:
    """Train from job.step to the last step: log, evaluate, checkpoint; stop cleanly on a signal."""
    cfg, t, d, plan = job.cfg, job.cfg.train, job.d, job.plan
    val_loss, start_step, skipped = None, job.step, 0
    started = last_time = time.time()
    last_step = job.step
    with distributed.StopSignal(d) as stop:
        while job.step < plan.max_steps:
            lr = lr_at(job.step, lr=t.lr, min_lr=t.min_lr, warmup_steps=t.warmup_steps,
                       max_steps=plan.max_steps, schedule=t.schedule)
            set_lr(job.optimizer, lr, job.step)
            torch.manual_seed(step_seed(t.seed, job.step, d.rank))  # dropout masks of this step
            micro = job.batches.micro_batches(job.step, plan.micro_batch, d.rank, d.world_size)
            loss, grad_norm, applied = train_step(job.train_model, job.optimizer, micro, d.device,
                                                  job.autocast, t.grad_clip, d)
            if not applied:
                skipped += 1
                what = (f"non-finite training loss ({float(loss)}) or gradient norm "
                        f"({None if grad_norm is None else float(grad_norm)}) at step {job.step + 1}")
                job.metrics.write({"step": job.step + 1, "nonfinite": str(float(loss)),
                                   "action": t.on_nonfinite})
                if t.on_nonfinite == "stop" or skipped > t.max_skipped:
                    last_good = find_checkpoint(cfg.out_dir)
                    raise NonFiniteLoss(
                        f"{what}; training stopped without applying it"
                        + (f" ({skipped} steps in a row skipped)" if skipped > 1 else "")
                        + (f". The last checkpoint (step {last_good[1]}) is in {cfg.out_dir}"
                           if last_good else ". No checkpoint was saved yet")
                        + ". Lower train.lr, raise train.warmup_steps or set train.grad_clip, then "
                        "--resume; or set train.on_nonfinite=skip to skip such steps")
                job.say(f"warning: {what}; update skipped (train.on_nonfinite=skip)")
            else:
                skipped = 0
            job.step, job.tokens = job.step + 1, job.tokens + plan.tokens_per_step
            step, last = job.step, job.step == plan.max_steps

            if step % t.log_every == 0 or last:
                now = time.time()
                tok_s = (step - last_step) * plan.tokens_per_step / max(now - last_time, 1e-9)
                record = {"step": step, "loss": float(distributed.all_mean(d, loss)), "lr": lr,
                          "grad_norm": None if grad_norm is None else float(grad_norm),
                          "tokens": job.tokens, "tokens_per_s": round(tok_s, 1),
                          "mfu": mfu(job.flops_per_token, tok_s, job.peak_flops, d.world_size),
                          "mem_gib": round(memory_gib(d.device), 3)}
                job.metrics.write(record)
                eta = (now - started) / (step - start_step) * (plan.max_steps - step)
                job.say(train_line(record, plan.max_steps, job.batches.epoch_at(step), eta))
                last_step, last_time = step, now
            paused = time.time()  # evaluating and saving do not count against tokens/s
            if len(job.val_starts) and ((t.eval_every and step % t.eval_every == 0) or last):
                val_loss = evaluate(job.model, job.shards.val, job.val_starts, cfg.data.seq_len,
                                    t.batch_size, d, job.autocast)
                record = {"step": step, "val_loss": val_loss, "val_ppl": math.exp(min(val_loss, 50.0))}
                job.metrics.write(record)
                job.say(eval_line(record))
            if on_step is not None:
                on_step(step)
            stopping = stop.requested()  # the same answer on every rank
            if stopping or last or (t.ckpt_every and step % t.ckpt_every == 0):
                job.save()
            last_time += time.time() - paused
            if stopping:
                launcher = (f"torchrun --nproc_per_node {d.world_size} -m" if d.world_size > 1
                            else "python -m")
                job.say(f"stopped by {stop.received} at step {step}; checkpoint saved in {cfg.out_dir}. "
                        f"Continue with: {launcher} backpack_core.train --resume {cfg.out_dir}")
                return TrainResult(cfg.out_dir, step, job.tokens, val_loss, stop.received, stop.exit_code)
    if job.step == start_step:
        job.say(f"{cfg.out_dir} is already at step {job.step} of {plan.max_steps}; nothing to do "
                "(raise train.max_steps or train.max_tokens to train further)")
    else:
        job.say(f"done: {job.step} steps, {job.tokens:,} tokens"
                + (f", val loss {val_loss:.4f} (ppl {math.exp(min(val_loss, 50.0)):.2f})"
                   if val_loss is not None else "")
                + f"; model in {cfg.out_dir} (load_backpack('{cfg.out_dir}'))")
    return TrainResult(cfg.out_dir, job.step, job.tokens, val_loss)


def run(cfg: RunConfig, resume: bool = False, overwrite: bool = False,
        on_step: Callable[[int], None] | None = None) -> TrainResult:
    """Train as configured (joining torchrun's group when launched by it); `on_step(step)` runs
    after every step, before the stop check (tests use it to send a signal at a chosen step)."""
    d = distributed.setup(cfg.train.device)
    try:
        if d.is_main:  # one trainer per run directory: a second (even with --overwrite) is refused
            check_writable(cfg.out_dir)
        with locked(cfg.out_dir, "another training run") if d.is_main else contextlib.nullcontext():
            return loop(setup(cfg, d, resume, overwrite), on_step)
    finally:
        distributed.teardown(d)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = cli.ArgumentParser(
        prog="python -m backpack_core.train",
        description="Train a Backpack or its Transformer twin. Overrides: section.key=value, e.g. "
                    "train.lr=3e-4 model.n_layer=4 data.dir=data/shards/corpus")
    parser.add_argument("--config", help="a config file, or a shipped config's name (configs/*.toml)")
    parser.add_argument("--resume", nargs="?", const=True, default=False, metavar="RUN_DIR",
                        help="continue the run in train.out_dir (or in RUN_DIR, using its run_config.json)")
    parser.add_argument("--overwrite", action="store_true", help="start over in an out_dir with a checkpoint")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    parser.add_argument("overrides", nargs="*", metavar="section.key=value")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """The command line; every error (bad config, damaged checkpoint, full disk, NaN loss, an
    unwritable directory) is one line on stderr and exit code 2 (backpack_core.common.cli)."""
    return cli.run_main(_main, argv, prog="", json_errors=False)


def _main(argv: list[str] | None) -> int:
    args = parse_args(argv)
    if isinstance(args.resume, str) and "=" in args.resume and not Path(args.resume).exists():
        args.overrides.insert(0, args.resume)  # `--resume train.lr=1e-4`: an override, not a dir
        args.resume = True
    try:
        if isinstance(args.resume, str) and not args.config:  # --resume RUN_DIR
            run_dir = Path(args.resume)
            if not (run_dir / RUN_CONFIG).is_file():
                raise CheckpointError(f"{run_dir} has no {RUN_CONFIG}; give --config too")
            saved = read_run_config(run_dir)
            cfg = load_run_config(None, [*args.overrides, f"train.out_dir={run_dir}"], saved=saved)
        elif args.config:
            overrides = list(args.overrides)
            if isinstance(args.resume, str):
                overrides.append(f"train.out_dir={args.resume}")
            cfg = load_run_config(args.config, overrides)
        else:
            raise ConfigError("give --config FILE (or a shipped config name, e.g. --config tiny), "
                              "or --resume RUN_DIR")
        if args.print_config:
            print(json.dumps(cfg.to_dict(), indent=2))
            return 0
        result = run(cfg, resume=bool(args.resume), overwrite=args.overwrite)
    except KeyboardInterrupt:
        print("stopped at once, without saving", file=sys.stderr)
        return 130
    return result.exit_code


if __name__ == "__main__":
    sys.exit(main())
