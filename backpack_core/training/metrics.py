"""What a run reports: `metrics.jsonl` (one JSON object a line) and a concise console line.

    {"step", "loss", "lr", "grad_norm", "tokens", "tokens_per_s", "mfu", "mem_gib"}   training
    {"step", "val_loss", "val_ppl"}                                                    evaluation

tokens_per_s counts all ranks. MFU = flops_per_token (the Backpack's own count: contextualizer,
sense network, sense weights and mixing, output layer; `backpack_core.model.backpack.flops_per_token`)
x tokens/s / (peak FLOP/s x GPUs). The peak comes from the table below (dense bf16, or TF32 when
training in fp32) or train.peak_tflops; on a CPU or an unknown GPU MFU is null, not a guess.
mem_gib is the peak of GPU memory allocated, or on a CPU the peak resident memory of the process.
"""

from __future__ import annotations

import json
import os
import resource
import sys
from pathlib import Path

import torch

# (name fragment of torch.cuda.get_device_name, dense bf16 TFLOP/s, dense TF32 TFLOP/s),
# vendor datasheet figures; the first matching fragment wins.
PEAK_TFLOPS = (
    ("H100 PCIe", 756.0, 378.0),
    ("H100 NVL", 835.0, 418.0),
    ("GH200", 989.0, 495.0),
    ("H200", 989.0, 495.0),
    ("H100", 989.0, 495.0),  # SXM ("H100 80GB HBM3")
    ("B200", 2250.0, 1100.0),
    ("A100", 312.0, 156.0),
    ("L40S", 362.0, 183.0),
    ("L4", 121.0, 60.0),
)


def peak_flops(device: torch.device, bf16: bool, override_tflops: float = 0.0) -> float | None:
    """Peak FLOP/s of one accelerator, or None when unknown (CPU, unlisted GPU)."""
    if override_tflops > 0:
        return override_tflops * 1e12
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for fragment, bf16_tflops, tf32_tflops in PEAK_TFLOPS:
        if fragment in name:
            return (bf16_tflops if bf16 else tf32_tflops) * 1e12
    return None


def mfu(flops_per_token: float, tokens_per_s: float, peak: float | None, n_devices: int) -> float | None:
    """Model FLOPs utilization in [0, 1], rounded; None when the peak is unknown."""
    return round(flops_per_token * tokens_per_s / (peak * n_devices), 4) if peak else None


def memory_gib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def record_step(line: bytes) -> int | None:
    """The step of one metrics.jsonl line, or None when the line is not a record (cut short by a
    crash, edited, not UTF-8, not an object with an integer step)."""
    try:
        record = json.loads(line.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None
    step = record.get("step") if isinstance(record, dict) else None
    return step if isinstance(step, int) and not isinstance(step, bool) else None


class MetricsLog:
    """Appends records to out_dir/metrics.jsonl (rank 0 only). Resuming at step N first drops the
    records past N, which the resumed run writes again, and malformed lines (with a one-line
    warning naming them); a fresh run starts an empty file."""

    def __init__(self, path: Path, enabled: bool, resume_step: int | None):
        self.path, self.enabled = path, enabled
        if not enabled:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        kept, malformed = [], []
        if resume_step is not None and path.is_file():
            for number, raw in enumerate(path.read_bytes().splitlines(), 1):
                step = record_step(raw)
                if step is None:
                    if raw.strip():
                        malformed.append(number)
                elif step <= resume_step:
                    kept.append(raw.decode("utf-8"))
        if malformed:
            shown = ", ".join(map(str, malformed[:10])) + (", ..." if len(malformed) > 10 else "")
            print(f"warning: {path}: skipped {len(malformed)} malformed line(s) (line {shown}); "
                  "the other records are kept", file=sys.stderr, flush=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text("".join(f"{line}\n" for line in kept))
        os.replace(tmp, path)

    def write(self, record: dict) -> None:
        if self.enabled:
            with open(self.path, "a") as f:
                f.write(json.dumps(record) + "\n")


def _si(x: float) -> str:
    for unit, scale in (("M", 1e6), ("k", 1e3)):
        if x >= scale:
            return f"{x / scale:.1f}{unit}"
    return f"{x:.0f}"


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


def train_line(record: dict, max_steps: int, epoch: float, eta_s: float) -> str:
    mfu = f"{100 * record['mfu']:.1f}%" if record["mfu"] is not None else "-"
    return (f"step {record['step']:>{len(str(max_steps))}}/{max_steps} | loss {record['loss']:.4f} | "
            f"lr {record['lr']:.2e} | {_si(record['tokens_per_s'])} tok/s | mfu {mfu} | "
            f"mem {record['mem_gib']:.2f} GiB | epoch {epoch:.2f} | eta {_duration(eta_s)}")


def eval_line(record: dict) -> str:
    return f"step {record['step']} | val loss {record['val_loss']:.4f} | val ppl {record['val_ppl']:.2f}"
