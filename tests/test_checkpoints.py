"""Checkpoints are atomic as a unit (issue 12 item 6) and training faults end cleanly (issue 13):
a kill at every file boundary of a save, a second SIGTERM during a save, a full disk and a NaN
loss each leave a run that resumes to exactly the uninterrupted run's weights."""

from __future__ import annotations

import errno
import io
import json
import os
import shutil
import signal
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from backpack_core.training import checkpoint
from backpack_core.training.checkpoint import DiskFullError, find_checkpoint, saved_step
from backpack_core.training.trainer import NonFiniteLoss, main, run
from tests.test_train import one_thread, records, shards, tiny  # noqa: F401  (fixtures)

SETTINGS = ("train.max_steps=5", "train.ckpt_every=2", "train.eval_every=0", "model.resid_pdrop=0.1")
FILE_OPS = ("replace", "rename", "symlink", "fsync", "unlink", "remove")


@pytest.fixture(scope="module")
def reference(shards, tmp_path_factory) -> dict:  # noqa: F811
    out = tmp_path_factory.mktemp("ref") / "run"
    run(tiny(shards, out, *SETTINGS))
    return load_file(str(out / "model.safetensors"))


def same_weights(out: Path, reference: dict) -> bool:
    got = load_file(str(out / "model.safetensors"))
    return got.keys() == reference.keys() and all(torch.equal(got[k], reference[k]) for k in got)


def in_child(fn) -> int:
    """Run fn() in a forked process (it may die there as a kill would); its wait status."""
    pid = os.fork()
    if pid == 0:  # the child: never return into pytest
        code = 1
        try:
            fn()
            code = 0
        finally:
            os._exit(code)
    return os.waitpid(pid, 0)[1]


def die_at_file_op(k: int, during_step: int):
    """Patch the file operations so the process dies (os._exit, as kill -9) just before the k-th
    of them in the save of `during_step`."""
    count, armed = [0], [False]
    save = checkpoint.save_checkpoint

    def save_armed(out_dir, model, optimizer, tokenizer, state, d):
        armed[0] = state["step"] == during_step
        return save(out_dir, model, optimizer, tokenizer, state, d)

    def wrap(fn):
        def op(*args, **kwargs):
            if armed[0]:
                if count[0] == k:
                    os._exit(137)
                count[0] += 1
            return fn(*args, **kwargs)
        return op

    checkpoint.save_checkpoint = save_armed
    import backpack_core.training.trainer as train_module
    train_module.save_checkpoint = save_armed
    for name in FILE_OPS:
        setattr(os, name, wrap(getattr(os, name)))
    shutil.rmtree = wrap(shutil.rmtree)


def test_kill_at_every_file_boundary_of_a_save_resumes_consistently(shards, tmp_path, reference):  # noqa: F811
    """Kill -9 before each file operation of the step-4 save: --resume always continues from a
    complete checkpoint (step 2 or 4) and reaches the uninterrupted run's weights bit for bit."""
    resumed_from = []
    for k in range(200):
        out = tmp_path / f"k{k}"

        def train_and_die(out=out, k=k):
            die_at_file_op(k, during_step=4)
            run(tiny(shards, out, *SETTINGS))

        status = in_child(train_and_die)
        if os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0:
            break  # k is past the last file operation of the save
        assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 137, status
        step = saved_step(out)
        assert step in (2, 4), (k, step)
        resumed_from.append(step)
        assert main(["--resume", str(out)]) == 0
        assert same_weights(out, reference), f"kill before file operation {k}: weights differ"
        assert len(list((out / "checkpoints").glob("step-*"))) <= 2  # the newest and the previous
    assert k > 10 and resumed_from.count(2) and resumed_from.count(4), resumed_from


def test_second_sigterm_during_a_save_leaves_a_resumable_run(shards, tmp_path, reference):  # noqa: F811
    out = tmp_path / "run"

    def train_signalled_twice():
        fsync, signalled = os.fsync, []

        def first_signal(step: int) -> None:
            if step == 3:
                signalled.append(step)
                signal.raise_signal(signal.SIGTERM)  # finish the step, save, stop...

        def second_signal_mid_save(fd):
            fsync(fd)
            if signalled:  # ...and again during the step-3 save: die at once
                signal.raise_signal(signal.SIGTERM)

        os.fsync = second_signal_mid_save
        run(tiny(shards, out, *SETTINGS), on_step=first_signal)

    status = in_child(train_signalled_twice)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGTERM, status
    assert saved_step(out) == 2 and list((out / "checkpoints").glob(".partial-*"))
    assert main(["--resume", str(out)]) == 0
    assert same_weights(out, reference)
    assert not list((out / "checkpoints").glob(".partial-*"))  # cleaned by the next save


def test_disk_full_keeps_the_last_good_checkpoint_and_says_how_much_space(shards, tmp_path, reference,  # noqa: F811
                                                                          monkeypatch, capsys):
    out = tmp_path / "run"
    import safetensors.torch

    real_save = safetensors.torch.save_file

    def full_after_step_2(tensors, path, metadata=None):
        if saved_step(out) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_save(tensors, path, metadata=metadata)

    monkeypatch.setattr(safetensors.torch, "save_file", full_after_step_2)
    with pytest.raises(DiskFullError, match=r"step 4 .* needs about [\d.]+ MB, .*\(step 2\) is kept"):
        run(tiny(shards, out, *SETTINGS))
    assert saved_step(out) == 2 and not list((out / "checkpoints").glob(".partial-*"))
    monkeypatch.setattr(safetensors.torch, "save_file", real_save)

    # The space check before writing: refuses with the figures, one line, no traceback.
    usage = shutil.disk_usage(out)
    monkeypatch.setattr(checkpoint.shutil, "disk_usage", lambda p: usage._replace(free=1000))
    assert main(["--resume", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: not enough disk space") and "needs about" in err and "Traceback" not in err
    assert saved_step(out) == 2
    monkeypatch.undo()
    assert main(["--resume", str(out)]) == 0 and same_weights(out, reference)


def test_nonfinite_loss_is_reported_with_its_step_and_never_trained_through(shards, tmp_path, capsys):  # noqa: F811
    blowup = ("train.max_steps=6", "train.ckpt_every=1", "train.lr=1e30", "train.min_lr=0",
              "train.warmup_steps=0", "train.grad_clip=0")
    out = tmp_path / "stop"
    with pytest.raises(NonFiniteLoss, match=r"non-finite training loss \(nan\).* at step 2; "
                                            r"training stopped .*last checkpoint \(step 1\)"):
        run(tiny(shards, out, *blowup))
    assert saved_step(out) == 1 and [r["step"] for r in records(out) if "nonfinite" in r] == [2]
    assert main(["--config", "tiny", *[a for a in tiny_args(shards, tmp_path / "cli")], *blowup]) == 2
    assert capsys.readouterr().err.startswith("error: non-finite training loss")

    out = tmp_path / "skip"
    with pytest.raises(NonFiniteLoss, match=r"3 steps in a row skipped"):
        run(tiny(shards, out, *blowup, "train.on_nonfinite=skip", "train.max_skipped=2"))
    skipped = [r for r in records(out) if "nonfinite" in r]
    assert [r["step"] for r in skipped] == [2, 3, 4] and {r["action"] for r in skipped} == {"skip"}
    assert saved_step(out) == 3  # steps 2 and 3 were skipped, not applied: weights still step 1's
    state = checkpoint.read_train_state(find_checkpoint(out)[0])
    assert state["step"] == 3
    w3 = load_file(str(out / "model.safetensors"))
    w1 = load_file(str(tmp_path / "stop" / "model.safetensors"))
    assert all(torch.equal(w1[k], w3[k]) for k in w1)


def tiny_args(shards: Path, out: Path) -> list[str]:  # noqa: F811
    return [f"data.dir={shards}", f"train.out_dir={out}", "train.log_every=1"]


def train_error(argv: list[str], capsys) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    return err


def test_unwritable_out_dir_is_refused_before_training(shards, tmp_path, capsys):  # noqa: F811
    base = ["--config", "tiny", f"data.dir={shards}", "train.max_steps=2"]
    (tmp_path / "file").write_text("")
    err = train_error([*base, f"train.out_dir={tmp_path / 'file' / 'run'}"], capsys)
    assert "is not writable (Not a directory)" in err
    if os.geteuid() != 0:  # root writes anywhere
        (tmp_path / "ro").mkdir(mode=0o500)
        assert "is not writable (Permission denied)" in train_error(
            [*base, f"train.out_dir={tmp_path / 'ro' / 'run'}"], capsys)


def test_damaged_run_config_on_resume(shards, tmp_path, capsys):  # noqa: F811
    out = tmp_path / "run"
    run(tiny(shards, out, "train.max_steps=2"))
    text = (out / "run_config.json").read_text()
    (out / "run_config.json").write_text(text[: len(text) // 2])
    assert "run_config.json is damaged (not valid JSON" in train_error(["--resume", str(out)], capsys)
    (out / "run_config.json").write_text("[]")
    assert "is not a run config" in train_error(["--resume", str(out)], capsys)


def test_huge_model_config_is_refused_before_allocation(shards, tmp_path, capsys):  # noqa: F811
    err = train_error(["--config", "tiny", f"data.dir={shards}", f"train.out_dir={tmp_path / 'r'}",
                       "train.max_steps=2", "model.n_layer=1000000000"], capsys)
    assert "the configured model has" in err and "(the limit)" in err


def test_read_only_out_dir_is_refused_before_training(shards, tmp_path, capsys, monkeypatch):  # noqa: F811
    """As root (our CI) chmod does not stop writes: a refused write is simulated."""
    real = Path.write_bytes

    def read_only(self, data):
        if self.name.startswith(".write-test-"):
            raise PermissionError(13, "Permission denied", str(self))
        return real(self, data)

    monkeypatch.setattr(Path, "write_bytes", read_only)
    err = train_error(["--config", "tiny", f"data.dir={shards}", "train.max_steps=2",
                       f"train.out_dir={tmp_path / 'ro'}"], capsys)
    assert "is not writable (Permission denied)" in err


def fail_writes_in_save_of_step_4(monkeypatch, out: Path, failing: str, how: str) -> None:
    """Make the write of `failing` (a file of the step-4 checkpoint) fail as the real writer fails.
    how="fsize": a file-size limit (RLIMIT_FSIZE) just below that file's size, so safetensors and
    torch meet a real refused write (EFBIG) and report it their own way; how="enospc": a full
    disk as the writers report it (safetensors: SafetensorError "... (os error 28)"; torch.save:
    RuntimeError with the file's OSError as its context)."""
    import resource

    import safetensors
    import safetensors.torch

    import backpack_core.training.trainer as train_module

    real_save, real_file_save = train_module.save_checkpoint, safetensors.torch.save_file

    def save(out_dir, model, optimizer, tokenizer, state, d):
        if state["step"] != 4:
            return real_save(out_dir, model, optimizer, tokenizer, state, d)
        previous = find_checkpoint(out)[0]
        sizes = sorted((previous / name).stat().st_size for name in ("model.safetensors", "train_state.pt"))
        if how == "fsize":
            limit = sizes[0] - 1 if failing == "model.safetensors" else (sizes[0] + sizes[1]) // 2
            handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
            try:
                return real_save(out_dir, model, optimizer, tokenizer, state, d)
            finally:
                resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
                signal.signal(signal.SIGXFSZ, handler)
        if failing == "model.safetensors":
            def full(tensors, path, metadata=None):
                raise safetensors.SafetensorError(
                    "Error while serializing: I/O error: No space left on device (os error 28)")
            monkeypatch.setattr(safetensors.torch, "save_file", full)
        else:
            class FullFile(io.BytesIO):
                def write(self, data):
                    raise OSError(errno.ENOSPC, "No space left on device")

            monkeypatch.setattr(checkpoint, "open", lambda path, mode: FullFile(), raising=False)
        try:
            return real_save(out_dir, model, optimizer, tokenizer, state, d)
        finally:
            monkeypatch.setattr(safetensors.torch, "save_file", real_file_save)
            monkeypatch.delattr(checkpoint, "open", raising=False)

    monkeypatch.setattr(train_module, "save_checkpoint", save)


@pytest.mark.parametrize("how", ["fsize", "enospc"])
@pytest.mark.parametrize("failing", ["model.safetensors", "train_state.pt"])
def test_a_failed_write_of_weights_or_optimizer_is_one_line_and_leaves_no_partial(
        shards, tmp_path, reference, monkeypatch, capsys, failing, how):  # noqa: F811
    """Issue 20 item 15: the writers' own errors (not OSError) ended in "internal error", exit 1,
    with the .partial-step directory left behind."""
    out = tmp_path / "run"
    fail_writes_in_save_of_step_4(monkeypatch, out, failing, how)
    err = train_error(["--config", "tiny", *tiny_args(shards, out), *SETTINGS], capsys)
    if how == "enospc":
        assert err.startswith("error: not enough disk space to save the checkpoint of step 4")
    else:
        assert err.startswith("error: cannot write the checkpoint of step 4") and "File too large" in err
    assert "the last good checkpoint (step 2) is kept" in err, err
    assert saved_step(out) == 2 and not list((out / "checkpoints").glob(".partial-*"))
    monkeypatch.undo()
    assert main(["--resume", str(out)]) == 0 and same_weights(out, reference)


def flip_bytes(path: Path, n: int = 64) -> None:
    """Invert n bytes near the end of a file (tensor data, past any header)."""
    data = bytearray(path.read_bytes())
    for i in range(len(data) - 3 * n, len(data) - 2 * n):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def rewrite_manifest(ckpt: Path, **changes) -> None:
    """The manifest as a careful forger would leave it: sizes and checksums of the files now there."""
    import json

    manifest = json.loads((ckpt / "manifest.json").read_text())
    for name in manifest["files"]:
        manifest["files"][name] = (ckpt / name).stat().st_size
        manifest["sha256"][name] = checkpoint.sha256_file(ckpt / name)
    manifest.update(changes)
    (ckpt / "manifest.json").write_text(json.dumps(manifest))


def damage_checkpoint(ckpt: Path, previous: Path, damage: str) -> None:
    from safetensors.torch import save_file

    if damage == "weights-bit-flip":
        flip_bytes(ckpt / "model.safetensors")
    elif damage == "state-bit-flip":
        flip_bytes(ckpt / "train_state.pt")
    elif damage == "nan-weights-rechecksummed":
        weights = load_file(str(ckpt / "model.safetensors"))
        name = sorted(weights)[0]
        weights[name].view(-1)[0] = float("nan")
        save_file(weights, str(ckpt / "model.safetensors"), metadata={"format": "pt"})
        rewrite_manifest(ckpt)
    elif damage == "optimizer-of-another-step":
        shutil.copy(previous / "train_state.pt", ckpt / "train_state.pt")
        rewrite_manifest(ckpt)


@pytest.mark.parametrize("damage", ["weights-bit-flip", "state-bit-flip", "nan-weights-rechecksummed",
                                    "optimizer-of-another-step"])
def test_resume_checks_the_checkpoint_and_falls_back_to_the_previous_good_one(
        shards, tmp_path, reference, capsys, damage):  # noqa: F811
    """Issue 20 item 16: a damaged newest checkpoint was loaded unchecked (NaN: then blamed on the
    learning rate; a step mismatch advised --overwrite, which discards the good one)."""
    out = tmp_path / "run"
    run(tiny(shards, out, *SETTINGS))  # checkpoints of steps 4 and 5
    root = out / "checkpoints"
    damage_checkpoint(root / "step-00000005", root / "step-00000004", damage)
    capsys.readouterr()
    assert main(["--resume", str(out)]) == 0
    err = capsys.readouterr().err
    assert err.startswith("note: checkpoint ") and err.count("\n") == 1, err
    assert "is damaged" in err and "resuming from step 4 instead" in err
    assert same_weights(out, reference)  # step 5 trained again from step 4's good checkpoint
    assert saved_step(out) == 5 and (root / "damaged-step-00000005").is_dir()


def test_no_good_checkpoint_and_an_edited_manifest_step(shards, tmp_path, reference, capsys):  # noqa: F811
    out = tmp_path / "run"
    run(tiny(shards, out, *SETTINGS))
    root = out / "checkpoints"
    # The step in a manifest edited (with its checksums made right): not trusted, and the newest
    # checkpoint (step 5) is resumed, not step 4 as "step 9", which then pruned step 5.
    rewrite_manifest(root / "step-00000004", step=9)
    capsys.readouterr()
    assert main(["--resume", str(out)]) == 0
    assert "is already at step 5 of 5" in capsys.readouterr().out
    assert (root / "step-00000005").is_dir() and same_weights(out, reference)

    # Nothing good left: one line naming what is wrong with each, never advising --overwrite.
    shutil.copy(root / "step-00000004" / "train_state.pt", root / "step-00000005" / "train_state.pt")
    rewrite_manifest(root / "step-00000005")
    err = train_error(["--resume", str(out)], capsys)
    assert "no checkpoint in" in err and "can be resumed" in err and "--overwrite" not in err, err
    assert "step-00000005: the checkpoint in" in err and "weights at step 5, optimizer at step 4" in err
    assert "step-00000004: its manifest.json says step 9" in err


def test_malformed_metrics_lines_are_skipped_with_a_warning_on_resume(shards, tmp_path, capsys):  # noqa: F811
    """Issue 20 item 17: a metrics.jsonl line that is JSON but not a record (a list, NaN, a step
    that is not a number) made --resume fail with "internal error"; every good line is kept."""
    out = tmp_path / "run"
    run(tiny(shards, out, "train.max_steps=4", "train.ckpt_every=2", "train.eval_every=0"))
    good = (out / "metrics.jsonl").read_bytes().splitlines()
    bad = [b"[1, 2]", b"NaN", b'{"step": "three"}', b'{"step": null}', b"\xff\xfe not utf-8",
           b'{"step": 4, "loss": 1.', b"[" * 100_000]
    mixed = [good[0], *bad[:4], *good[1:3], *bad[4:], *good[3:]]
    (out / "metrics.jsonl").write_bytes(b"\n".join(mixed) + b"\n")
    capsys.readouterr()
    assert main(["--resume", str(out), "train.max_steps=6"]) == 0
    err = capsys.readouterr().err
    assert err.startswith(f"warning: {out / 'metrics.jsonl'}: skipped 7 malformed line(s) "
                          "(line 2, 3, 4, 5, 8, 9, 10)")
    assert err.count("\n") == 1, err
    lines = (out / "metrics.jsonl").read_bytes().splitlines()
    assert lines[:len(good)] == good
    assert [json.loads(x)["step"] for x in lines[len(good):]] == [5, 6, 6]  # 6: train and val


def test_a_second_trainer_on_the_same_run_directory_is_refused(shards, tmp_path, reference, capsys):  # noqa: F811
    """Issue 20 item 18: two trainers on one out_dir (the second with --overwrite) both ran,
    the second removing the first's checkpoints, their metrics interleaved."""
    out = tmp_path / "run"
    second = []

    def start_another(step: int) -> None:
        if step == 2:
            second.append(main(["--config", "tiny", *tiny_args(shards, out), *SETTINGS, "--overwrite"]))
            second.append(capsys.readouterr().err)

    run(tiny(shards, out, *SETTINGS), on_step=start_another)
    code, err = second
    assert code == 2 and err.count("\n") == 1, err
    assert err.startswith(f"error: {out} is in use by another training run (pid {os.getpid()}, "), err
    steps = [r["step"] for r in records(out) if "loss" in r]
    assert steps == [1, 2, 3, 4, 5] and same_weights(out, reference)  # the first run, undisturbed

    # The lock goes with its process, however it ends (here as kill -9 would, at step 3).
    def die_at_step_3():
        run(tiny(shards, tmp_path / "killed", *SETTINGS), on_step=lambda s: s == 3 and os._exit(137))

    assert os.WEXITSTATUS(in_child(die_at_step_3)) == 137
    assert main(["--resume", str(tmp_path / "killed")]) == 0
    assert same_weights(tmp_path / "killed", reference)
