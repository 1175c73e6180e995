"""data/gpu_campaign.py without a GPU: the budget each run can finish by the deadline, a twin
held to its Backpack's tokens, and the refusals (a run the plan does not have, a vocabulary
without shards)."""

from __future__ import annotations

import json
from pathlib import Path

from data import gpu_campaign as gc


def logged_run(tmp_path: Path, name: str, match: str | None, rates: list[float], tokens: int,
               budget: int = 100_000_000) -> gc.Run:
    out = tmp_path / name
    out.mkdir()
    lines = [{"step": 50 * (i + 1), "tokens": tokens * (i + 1) // len(rates), "tokens_per_s": r}
             for i, r in enumerate(rates)] + [{"step": 100, "val_loss": 5.0}]
    (out / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    return gc.Run(name, "backpack-mini-cpu", match, [], "shards", out, tmp_path / f"{name}.log",
                  budget=budget, step_tokens=64 * 256)


def test_budgets_shrink_to_the_deadline_and_twins_follow_their_backpack(tmp_path):
    step = 64 * 256
    slow = logged_run(tmp_path, "bp", None, [1_000.0, 200_000.0], tokens=10_000_000)
    fast = logged_run(tmp_path, "tw", "bp", [1_000.0, 900_000.0], tokens=12_000_000)
    quick = logged_run(tmp_path, "solo", None, [1_000.0, 1e9], tokens=1_000_000)
    compiling = logged_run(tmp_path, "late", None, [1_000.0], tokens=0)
    assert compiling.rate() is None and slow.rate() == 200_000.0 and slow.tokens() == 10_000_000
    now, deadline = 1000.0, 1400.0  # 400 s left: 300 s of training after the margin and restart
    new = gc.smaller_budgets([slow, fast, quick, compiling], now, deadline)
    left = deadline - gc.STOP_MARGIN_S - now - gc.RESTART_S
    expected = (10_000_000 + int(0.9 * 200_000 * left)) // step * step
    assert new == {"bp": expected, "tw": expected}  # the twin's own budget would be larger
    assert expected % step == 0 and expected < slow.budget
    # past the deadline a run keeps what it has trained, and at least one step
    assert gc.feasible(slow, 2000.0, deadline) == 10_000_000 // step * step


def test_an_unknown_run_is_refused(tmp_path, capsys):
    base = ["--shards", "8k=x", "16k=y", "32k=z", "--out", str(tmp_path)]
    assert gc.main([*base, "--seconds", "400", "--only", "bp128,bp999"]) == 2
    assert "bp999" in capsys.readouterr().err
    assert gc.main([*base, "--seconds", "30"]) == 2
    assert "leaves no time to train" in capsys.readouterr().err
    # the plan's configs are read as the trainers will read them: a bad override is one line
    assert gc.main([*base, "--seconds", "400", "--set", "train.batch_size=0"]) == 2
    assert "batch_size" in capsys.readouterr().err
    config = gc.plan_config("bp192", "x", ["train.max_tokens=5e6"])
    assert (config.model["n_embd"], config.train.batch_size, config.train.max_tokens) == (192, 64, 5_000_000)
    config = gc.plan_config("bp128-16k", "y", [])
    assert (config.data.dir, config.model["n_embd"]) == ("y", 128)
    config = gc.plan_config("tw128-32k", "z", [])
    assert (config.data.dir, config.model["model_kind"], config.model["n_embd"]) == ("z", "transformer", 128)


def test_each_run_needs_its_vocabulary_s_shards(tmp_path, capsys):
    out = ["--out", str(tmp_path), "--seconds", "400"]
    assert gc.main(["--shards", "8k=x", *out]) == 2  # the default plan is the shipped 32k pair
    err = capsys.readouterr().err
    assert "bp128-32k" in err and "32k=DIR" in err and "--only" in err
    assert gc.main(["--shards", "x", *out]) == 2
    assert "VOCAB=DIR" in capsys.readouterr().err
    assert gc.main(["--shards", "8k=x", "16k=y", *out, "--only", "bp128-32k,tw128-32k"]) == 2
    err = capsys.readouterr().err
    assert "bp128-32k" in err and "32k=DIR" in err
    assert {gc.PLAN[n][1] for n in gc.DEFAULT_RUNS} == {"32k"}
    for name, (_, vocab, match, _) in gc.PLAN.items():  # a twin trains on its Backpack's tokens
        assert match is None or gc.PLAN[match][1] == vocab, name
