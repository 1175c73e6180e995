"""The trainer on the tiny config: loss falls, an interrupted run resumes to exactly the
uninterrupted run's losses and weights, gradient accumulation and 2 gloo processes match one
process with the same global batch, and user errors are messages, not tracebacks."""

from __future__ import annotations

import json
import math
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from backpack_core import load_backpack
from backpack_core.training.checkpoint import saved_step
from backpack_core.training.config import ConfigError, load_run_config, resolve_model_config
from backpack_core.training.loader import ShardSet, eval_windows, gather
from backpack_core.training.prepare import prepare
from backpack_core.training.schedule import lr_at
from backpack_core.training.trainer import main, run
from tests.conftest import HANG_S

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models run fastest (and least disturbed by other jobs) on one thread."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def write_corpus(path: Path, n_docs: int = 300, seed: int = 0) -> None:
    """Short documents of a tiny grammar: learnable, so the loss has somewhere to fall."""
    rng = random.Random(seed)
    subjects = ["the cat", "a dog", "my friend", "the teacher", "a bird", "the king", "our baker"]
    verbs = ["sees", "likes", "eats", "finds", "follows", "hears", "paints"]
    objects = ["the fish", "an apple", "the river", "a song", "the road", "fresh bread", "a hat"]
    with open(path, "w") as f:
        for _ in range(n_docs):
            sentences = [f"{rng.choice(subjects)} {rng.choice(verbs)} {rng.choice(objects)}."
                         for _ in range(rng.randint(2, 6))]
            f.write(json.dumps({"text": " ".join(sentences)}) + "\n")


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("corpus")
    write_corpus(root / "docs.jsonl")
    prepare(root / "shards", [root / "docs.jsonl"], tokenizer="bpe:300", val_fraction=0.05,
            progress=False)
    return root / "shards"


def tiny(shards: Path, out_dir: Path, *overrides: str):
    return load_run_config("tiny", [f"data.dir={shards}", f"train.out_dir={out_dir}",
                                    "train.log_every=1", *overrides])


def records(out_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]


def losses(out_dir: Path) -> list[tuple[int, float]]:
    return [(r["step"], r["loss"]) for r in records(out_dir) if "loss" in r]


def test_tiny_config_loss_falls_and_checkpoint_loads(shards, tmp_path):
    out = tmp_path / "run"
    result = run(tiny(shards, out, "train.max_steps=40"))
    assert result.exit_code == 0 and result.step == 40 and saved_step(out) == 40
    curve = [loss for _, loss in losses(out)]
    assert len(curve) == 40
    assert np.mean(curve[:3]) - np.mean(curve[-5:]) > 1.5, curve  # ln(320) = 5.8 -> well below 4
    evals = [r for r in records(out) if "val_loss" in r]
    assert [r["step"] for r in evals] == [20, 40] and evals[1]["val_loss"] < evals[0]["val_loss"]
    first = records(out)[0]
    assert set(first) >= {"step", "loss", "lr", "tokens_per_s", "mfu", "mem_gib", "tokens"}
    assert first["mfu"] is None and first["tokens"] == 8 * 32  # no invented CPU peak

    # The run directory is a model in our format: loading it reproduces the final val loss.
    model, tokenizer = load_backpack(out)
    assert model.config.vocab_size == 320 and model.config.eos_token_id == tokenizer.eos_token_id
    data = ShardSet(shards)
    starts = eval_windows(data.val, 32, 4 * 8)
    batch = gather(data.val, starts, 32)
    with torch.no_grad():
        val = float(model(batch, labels=batch).loss)
    assert val == pytest.approx(evals[1]["val_loss"], abs=1e-5)
    config = json.loads((out / "run_config.json").read_text())
    assert config["train"]["max_steps"] == 40 and config["resolved"]["global_batch"] == 8


def test_interrupted_run_resumes_exactly(shards, tmp_path):
    """SIGTERM at step 13 saves and exits; --resume replays steps 14..30 bit for bit, dropout on."""
    settings = ("train.max_steps=30", "train.ckpt_every=10", "train.eval_every=10",
                "model.embd_pdrop=0.1", "model.resid_pdrop=0.1", "model.attn_pdrop=0.1")
    full, part = tmp_path / "full", tmp_path / "part"
    run(tiny(shards, full, *settings))

    def interrupt(step: int) -> None:
        if step == 13:
            signal.raise_signal(signal.SIGTERM)  # the real handler: finish step, save, stop

    handler_before = signal.getsignal(signal.SIGTERM)
    stopped = run(tiny(shards, part, *settings), on_step=interrupt)
    assert (stopped.step, stopped.stopped_by, stopped.exit_code) == (13, "SIGTERM", 128 + signal.SIGTERM)
    assert saved_step(part) == 13 and losses(part)[-1][0] == 13
    assert signal.getsignal(signal.SIGTERM) == handler_before  # handlers restored

    assert main(["--resume", str(part)]) == 0  # config from the run's own run_config.json
    assert losses(part) == losses(full)  # exact equality, not approx
    assert [r for r in records(part) if "val_loss" in r] == [r for r in records(full) if "val_loss" in r]
    a, b = load_file(str(full / "model.safetensors")), load_file(str(part / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_gradient_accumulation_matches_bigger_batch(shards, tmp_path):
    run(tiny(shards, tmp_path / "big", "train.max_steps=8", "train.batch_size=8"))
    run(tiny(shards, tmp_path / "accum", "train.max_steps=8", "train.batch_size=4", "train.grad_accum=2"))
    big, accum = losses(tmp_path / "big"), losses(tmp_path / "accum")
    assert [s for s, _ in big] == [s for s, _ in accum] == list(range(1, 9))
    assert np.allclose([v for _, v in big], [v for _, v in accum], rtol=0, atol=1e-5)


def test_two_gloo_processes_match_one(shards, tmp_path):
    """torchrun, 2 CPU processes x batch 4 == 1 process x batch 4 x 2 accumulation steps (same
    global batch), val loss included: the validation set does not depend on the process count."""
    steps = ("train.max_steps=10", "train.eval_every=5")
    run(tiny(shards, tmp_path / "one", *steps, "train.batch_size=4", "train.grad_accum=2"))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "backpack_core.train", "--config", "tiny", f"data.dir={shards}",
           f"train.out_dir={tmp_path / 'two'}", "train.log_every=1", "train.batch_size=4", *steps]
    proc = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=HANG_S)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    one, two = records(tmp_path / "one"), records(tmp_path / "two")
    assert [sorted(r) for r in one] == [sorted(r) for r in two]  # rank 0 alone wrote: no duplicates
    for a, b in zip(one, two, strict=True):
        key = "loss" if "loss" in a else "val_loss"
        assert a["step"] == b["step"] and abs(a[key] - b[key]) < 1e-5, (a, b)
    assert json.loads((tmp_path / "two" / "run_config.json").read_text())["resolved"]["world_size"] == 2


def test_schedule_warmup_then_decay_to_min_lr():
    kw = dict(lr=1.0, min_lr=0.1, warmup_steps=4, max_steps=20)
    assert [lr_at(s, **kw) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    for schedule in ("linear", "cosine"):
        values = [lr_at(s, schedule=schedule, **kw) for s in range(4, 20)]
        assert values[0] == 1.0 and values[-1] == pytest.approx(0.1)
        assert all(a >= b for a, b in zip(values, values[1:]))


def test_config_overrides_are_typed_and_errors_are_clear(shards, tmp_path, capsys):
    cfg = load_run_config("tiny", ["train.lr=3e-4", "model.n_layer=3", "train.betas=0.9,0.99",
                                   "train.compile=true", "model.n_inner=none", "train.max_tokens=1e6"])
    assert cfg.train.lr == 3e-4 and cfg.model["n_layer"] == 3 and cfg.train.betas == (0.9, 0.99)
    assert cfg.train.compile is True and cfg.model["n_inner"] is None
    assert cfg.train.max_tokens == 1_000_000 and cfg.train.max_steps == 0  # the budget said last wins
    twin = load_run_config("transformer-52m")
    assert twin.model["model_kind"] == "transformer" and twin.model["n_embd"] == 512

    for overrides, expected in [
        (["train.lrr=1"], "unknown key train.lrr. Did you mean train.lr?"),
        (["train.lr=fast"], "train.lr must be float, got 'fast'"),
        (["train.schedule=step"], "train.schedule must be one of linear, cosine, constant"),
        (["model.n_head=3"], "n_embd (32) must be divisible by n_head (3)"),
        (["lr=1"], "not of the form section.key=value"),
    ]:
        assert expected in main_error(["--config", "tiny", *overrides, f"data.dir={shards}",
                                       f"train.out_dir={tmp_path / 'x'}"], capsys)
    assert "does not exist" in main_error(["--config", "tiny", f"data.dir={tmp_path / 'nope'}"], capsys)
    assert "python -m backpack_core.training.prepare" in main_error(
        ["--config", "tiny", f"data.dir={tmp_path}"], capsys)
    with pytest.raises(ConfigError, match="not found"):
        load_run_config("no-such-config")


def test_refuses_to_clobber_and_to_resume_nothing(shards, tmp_path, capsys):
    out = tmp_path / "run"
    run(tiny(shards, out, "train.max_steps=2"))
    base = ["--config", "tiny", f"data.dir={shards}", f"train.out_dir={out}"]
    assert "--resume to continue it" in main_error(base, capsys)
    assert "cannot resume" in main_error([*base, "--resume", "model.n_layer=3"], capsys)
    assert "nothing to resume" in main_error(["--config", "tiny", f"data.dir={shards}",
                                              f"train.out_dir={tmp_path / 'new'}", "--resume"], capsys)


def main_error(argv: list[str], capsys) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err
    return err


def test_compile_auto_compiles_long_runs_only():
    """Issue 14: train.compile defaults to auto: on for runs long enough to repay compiling."""
    from backpack_core.training.config import COMPILE_MIN_STEPS, ConfigError, load_run_config, should_compile

    assert load_run_config("tiny").train.compile == "auto"
    assert should_compile("auto", COMPILE_MIN_STEPS) and not should_compile("auto", 40)
    assert should_compile(True, 1) and not should_compile(False, 10**6)
    assert load_run_config("tiny", ["train.compile=false"]).train.compile is False
    with pytest.raises(ConfigError, match="true, false or auto"):
        load_run_config("tiny", ["train.compile=maybe"])


def test_word2vec_init_sets_centred_scaled_embeddings_deterministically(shards, tmp_path, capsys):
    """train.init_embeddings=word2vec: E starts from skip-gram vectors of the train tokens (rows
    of norm std*sqrt(d), tokens used alike close), the same on a second run (cached file)."""
    from backpack_core.training.init import word2vec_embeddings

    set_ = ShardSet(shards)
    kwargs = dict(std=0.02, epochs=5, window=3, max_tokens=0, seed=0)
    first = word2vec_embeddings(set_.train, 320, 32, set_.eos_token_id, cache_dir=None, **kwargs)
    again = word2vec_embeddings(set_.train, 320, 32, set_.eos_token_id, cache_dir=None, **kwargs)
    assert torch.equal(first, again)  # deterministic without the cache (fixed seed and hash)
    seen = np.setdiff1d(np.unique(np.asarray(set_.train)), [set_.eos_token_id])  # EOS: N(0, std)
    norms = first[torch.from_numpy(seen.astype(np.int64))].norm(dim=-1)
    assert torch.allclose(norms, torch.full_like(norms, 0.02 * 32 ** 0.5), rtol=1e-4)
    tok = set_.tokenizer()
    cat, dog, bread = (tok.encode(w)[0] for w in (" cat", " dog", " bread"))
    cos = torch.nn.functional.cosine_similarity
    assert cos(first[cat], first[dog], dim=0) > cos(first[cat], first[bread], dim=0)

    out = tmp_path / "w2v"
    run(tiny(shards, out, "train.max_steps=1", "train.init_embeddings=word2vec",
             "train.init_w2v_epochs=5", "train.init_w2v_window=3"))
    caches = list(shards.glob("init-word2vec-*.npy"))
    assert len(caches) == 1 and f"cached as {caches[0]}" in capsys.readouterr().out  # log names it
    model, _ = load_backpack(out)
    step0 = word2vec_embeddings(set_.train, model.config.vocab_size, 32, set_.eos_token_id,
                                cache_dir=shards, identity=str(set_.manifest["tokenizer_sha256"]),
                                std=0.02, epochs=5, window=3, max_tokens=0, seed=1337)
    moved = (model.wte.weight - step0).abs().max()
    assert 0 < moved < 0.01  # one step of lr <= 3e-3 away from the word2vec start


def test_init_senses_starts_every_sense_at_its_tokens_embedding(shards, tmp_path, capsys):
    """train.init_senses=embeddings: before step 0 the sense network is fitted so that all k
    senses of a token point where its embedding E[x] points (a random sense network: near 0);
    E itself is not changed by the fit; transformer runs and warm starts refuse the option."""
    from backpack_core.model.backpack import Backpack
    from backpack_core.training.config import resolve_model_config
    from backpack_core.training.init import fit_senses_to_embeddings

    cfg, data = tiny(shards, tmp_path / "unused"), ShardSet(shards)
    torch.manual_seed(0)
    model = Backpack(resolve_model_config(cfg, data.vocab_size, data.eos_token_id))
    table = model.wte.weight.detach().clone()
    fit = fit_senses_to_embeddings(model, steps=150, lr=3e-3, seed=0)
    assert abs(fit["cosine_before"]) < 0.2 and fit["cosine_after"] > 0.9, fit
    assert 0.7 < fit["norm_ratio_after"] < 1.3, fit
    assert torch.equal(model.wte.weight, table)  # E is the target, never moved
    with torch.no_grad():
        senses = model.eval().sense_vectors(torch.arange(model.config.vocab_size))  # (vocab, k, d)
    cos = torch.nn.functional.cosine_similarity(senses, table[:, None, :], dim=-1)
    assert cos.min() > 0.5 and cos.mean() > 0.9  # every sense of every token, not an average

    out = tmp_path / "fitted"
    run(tiny(shards, out, "train.max_steps=1", "train.init_senses=embeddings",
             "train.init_senses_steps=150", "train.init_senses_lr=3e-3"))
    assert "senses fitted to their token's embedding in 150 steps" in capsys.readouterr().out
    trained, _ = load_backpack(out)  # one training step away from the fitted start
    with torch.no_grad():
        senses = trained.sense_vectors(torch.arange(trained.config.vocab_size))
        cos = torch.nn.functional.cosine_similarity(senses, trained.wte.weight[:, None, :], dim=-1)
    assert cos.mean() > 0.8

    base = tmp_path / "base"
    run(tiny(shards, base, "train.max_steps=1"))
    for extra, expected in ((f"train.init_from={base}", "already sets the senses"),
                            ("model.model_kind=transformer", "needs a Backpack"),
                            ("train.init_senses=sideways", "must be one of random, embeddings")):
        args = ["--config", "tiny", f"data.dir={shards}", f"train.out_dir={tmp_path / 'x'}"]
        if not extra.startswith("train.init_senses="):
            args.append("train.init_senses=embeddings")
        err = main_error([*args, extra], capsys)
        assert expected in err, err


def test_embedding_lr_scale_slows_only_the_embeddings_and_resumes_exactly(shards, tmp_path, capsys):
    """train.embedding_lr_scale: E (wte) learns at lr x scale, every other weight as before; 0
    keeps E where it started; an interrupted run with the option resumes bit for bit."""
    from backpack_core.model.backpack import Backpack
    from backpack_core.training.trainer import initialize

    frozen, slow, full = (tmp_path / n for n in ("frozen", "slow", "full"))
    run(tiny(shards, frozen, "train.max_steps=6", "train.embedding_lr_scale=0"))
    run(tiny(shards, slow, "train.max_steps=6", "train.embedding_lr_scale=0.1"))
    run(tiny(shards, full, "train.max_steps=6"))
    w = {n: load_backpack(d)[0].state_dict() for n, d in (("frozen", frozen), ("slow", slow), ("full", full))}
    cfg, data = tiny(shards, tmp_path / "unused"), ShardSet(shards)
    torch.manual_seed(cfg.train.seed)  # the trainer's initial weights, rebuilt as it builds them
    model = Backpack(resolve_model_config(cfg, data.vocab_size, data.eos_token_id))
    initialize(model, cfg, data, None)
    w["start"] = model.state_dict()
    assert torch.equal(w["frozen"]["wte.weight"], w["start"]["wte.weight"])
    moved = {n: float((w[n]["wte.weight"] - w["start"]["wte.weight"]).abs().max()) for n in ("slow", "full")}
    assert 0 < moved["slow"] < 0.3 * moved["full"], moved
    other = next(k for k in w["start"] if k.startswith("sense_network") and k.endswith("weight"))
    assert not torch.equal(w["frozen"][other], w["start"][other])  # the rest still learns

    settings = ("train.max_steps=12", "train.ckpt_every=4", "train.embedding_lr_scale=0.1")
    whole, part = tmp_path / "whole", tmp_path / "part"
    run(tiny(shards, whole, *settings))
    run(tiny(shards, part, *settings), on_step=lambda step: step == 5 and signal.raise_signal(signal.SIGTERM))
    assert saved_step(part) == 5 and main(["--resume", str(part)]) == 0
    assert losses(part) == losses(whole)
    capsys.readouterr()  # the runs' own output
    err = main_error(["--config", "tiny", f"data.dir={shards}", f"train.out_dir={tmp_path / 'x'}",
                      "train.embedding_lr_scale=-1"], capsys)
    assert "embedding_lr_scale" in err and "between 0 and 10" in err


def test_sense_warmup_ramps_only_the_sense_network_and_resumes_exactly(shards, tmp_path, capsys):
    """train.sense_warmup_steps: the sense network's groups get lr x min(1, (step + 1) / N) on top
    of the schedule, every other group the schedule's lr; a run with it resumes bit for bit;
    a negative value, or one on a Transformer twin, is refused in one line."""
    from backpack_core.model.backpack import Backpack
    from backpack_core.training.optim import build_optimizer, set_lr

    cfg, data = tiny(shards, tmp_path / "unused", "train.sense_warmup_steps=10"), ShardSet(shards)
    model = Backpack(resolve_model_config(cfg, data.vocab_size, data.eos_token_id))
    optimizer = build_optimizer(model, cfg.train, torch.device("cpu"))
    senses = {id(p) for p in model.sense_network.parameters()}
    for step, ramp in ((0, 0.1), (4, 0.5), (9, 1.0), (50, 1.0)):
        set_lr(optimizer, 1e-3, step)
        for group in optimizer.param_groups:
            in_senses = {id(p) in senses for p in group["params"]}
            assert len(in_senses) <= 1  # a group is all sense network or none of it
            want = 1e-3 * (ramp if in_senses == {True} else 1.0)
            assert math.isclose(group["lr"], want), (step, group["lr"], want)
    assert sum(len(g["params"]) for g in optimizer.param_groups) == len(list(model.parameters()))

    settings = ("train.max_steps=12", "train.ckpt_every=4", "train.sense_warmup_steps=8")
    whole, part, plain = tmp_path / "whole", tmp_path / "part", tmp_path / "plain"
    run(tiny(shards, whole, *settings))
    run(tiny(shards, plain, "train.max_steps=12"))
    run(tiny(shards, part, *settings), on_step=lambda step: step == 5 and signal.raise_signal(signal.SIGTERM))
    assert saved_step(part) == 5 and main(["--resume", str(part)]) == 0
    assert losses(part) == losses(whole) != losses(plain)
    capsys.readouterr()  # the runs' own output
    base = ["--config", "tiny", f"data.dir={shards}", f"train.out_dir={tmp_path / 'x'}"]
    err = main_error([*base, "train.sense_warmup_steps=-1"], capsys)
    assert "sense_warmup_steps must be >= 0" in err
    err = main_error([*base, "model.model_kind=transformer", "train.sense_warmup_steps=5"], capsys)
    assert "needs a Backpack" in err


def test_warm_start_from_a_trained_model(shards, tmp_path, capsys):
    """train.init_from: the weights of a trained model, a new optimizer and the warm-up again
    (sense dropout may differ); another shape is a one-line error."""
    base = tmp_path / "base"
    run(tiny(shards, base, "train.max_steps=10"))
    trained, _ = load_backpack(base)
    warm = tmp_path / "warm"
    # sense dropout is training noise, not shape: a warm start may add it
    run(tiny(shards, warm, "train.max_steps=1", "train.warmup_steps=5", f"train.init_from={base}",
             "model.sense_pdrop=0.1"))
    first = records(warm)[0]
    assert first["lr"] == pytest.approx(lr_at(0, lr=3e-3, min_lr=3e-4, warmup_steps=5,
                                              max_steps=1, schedule="cosine"))
    restarted, _ = load_backpack(warm)
    assert restarted.config.sense_pdrop == 0.1 and trained.config.sense_pdrop == 0
    # one step at the warm-up's small lr: close to the trained weights, far from a fresh init
    fresh = tmp_path / "fresh"
    run(tiny(shards, fresh, "train.max_steps=1", "train.warmup_steps=5"))
    new, _ = load_backpack(fresh)
    near = (restarted.wte.weight - trained.wte.weight).abs().max()
    far = (new.wte.weight - trained.wte.weight).abs().max()
    assert near < 1e-3 < far
    err = main_error(["--config", "tiny", f"data.dir={shards}", f"train.out_dir={tmp_path / 'x'}",
                      "model.n_embd=48", f"train.init_from={base}"], capsys)
    assert "another shape" in err and "n_embd" in err
    err = main_error(["--config", "tiny", f"data.dir={shards}", f"train.out_dir={tmp_path / 'y'}",
                      "train.init_embeddings=word2vec", f"train.init_from={base}"], capsys)
    assert "choose one" in err


def test_campaign_resumes_a_checkpoint_else_warm_starts(shards, tmp_path):
    """data.campaign: --resume when the run directory holds a complete checkpoint; else a warm
    start from the committed model when it has the shards' tokenizer; else the config's own
    initialisation (the twin: always that)."""
    from data.campaign import campaign_command

    committed = tmp_path / "committed"  # a model trained on these shards: same tokenizer
    run(tiny(shards, committed, "train.max_steps=2"))
    run_dir = tmp_path / "campaign"
    fresh = campaign_command(run_dir, False, str(shards), ["train.max_tokens=1e6"], warmup=7,
                             init_from=str(committed))
    assert fresh[-7:] == [f"data.dir={shards}", f"train.out_dir={run_dir}", "train.threads=1",
                          f"train.init_from={committed}", "train.init_embeddings=random",
                          "train.warmup_steps=7", "train.max_tokens=1e6"]
    assert "--config" in fresh and "--resume" not in fresh
    # the shipped model has another tokenizer than the tiny shards: no warm start
    other = campaign_command(run_dir, False, str(shards), [], init_from=str(REPO / "data/backpack-mini"))
    assert not any("init_from" in a for a in other) and other[-1] == "train.threads=1"
    twin = campaign_command(tmp_path / "campaign-twin", True, str(shards), [], init_from=str(committed))
    assert "transformer-mini-cpu" in twin and not any("init_from" in a for a in twin)
    run(tiny(shards, run_dir, "train.max_steps=2"))
    assert campaign_command(run_dir, False, str(shards), ["train.max_steps=4"])[-3:] == [
        "--resume", str(run_dir), "train.max_steps=4"]


def test_pilot_report_measures_a_twin_without_senses(shards, tmp_path):
    """A Transformer twin's run has a curve and a perplexity but no senses: its row leaves the
    sense figures empty instead of failing on the first benchmark."""
    from data.pilot_report import _sense_cells, measure

    out = tmp_path / "twin"
    assert run(tiny(shards, out, "model.model_kind=transformer", "train.max_steps=4",
                    "train.eval_every=4")).exit_code == 0
    row = measure(out, wv=None, val_words=1, at_tokens=None, full_val=False)
    assert torch.is_grad_enabled()  # no global state left behind for whoever trains next
    assert row["simlex999"] is None and row["readable"] is None
    assert row["val_ppl_at"][1] == pytest.approx(row["ckpt_val_ppl"], rel=1e-4)
    assert _sense_cells(row) == "- | - | -"


def test_pilot_report_refuses_a_model_directory_that_is_not_a_run(tmp_path, monkeypatch, capsys):
    """A saved model without its run's files (run_config.json, the curve) is refused in one line
    before the word2vec loads, not with a traceback from the middle of the measurement."""
    from data import pilot_report

    model_only = tmp_path / "model"
    model_only.mkdir()
    (model_only / "model.safetensors").write_bytes(b"")
    monkeypatch.setattr(sys, "argv", ["pilot_report", str(model_only), "--word2vec", "absent.kv"])
    with pytest.raises(SystemExit) as exit_:
        pilot_report.main()
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "not a training run directory (no run_config.json, metrics.jsonl)" in err
    assert "Traceback" not in err
