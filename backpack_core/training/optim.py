"""AdamW, as the paper trained: weight decay on matrices (linear weights and embeddings), none on
biases and norm weights (every 1-D parameter). Fused kernels on CUDA.

`train.embedding_lr_scale` (default 1) gives the tied embedding matrix E (`wte.weight`) its own
group whose learning rate (and so its decoupled weight decay) is the schedule's times that
scale: a word2vec-started E then keeps its geometry while the rest of the model learns
(docs/TRAINING.md, "Initialisation"). At 1 the groups are the usual two, so runs saved before the
option existed resume unchanged.

`train.sense_warmup_steps` (default 0) puts the sense network's parameters in groups of their
own whose learning rate is the schedule's times min(1, (step + 1) / sense_warmup_steps): a
second, longer warm-up for the senses alone, so that senses started at their embedding are not
undone in the first steps (docs/TRAINING.md, "Tenth session")."""

from __future__ import annotations

import torch
from torch import nn

from backpack_core.training.config import TrainConfig


def param_groups(model: nn.Module, weight_decay: float, embedding_lr_scale: float = 1.0,
                 sense_warmup_steps: int = 0) -> list[dict]:
    """Parameters with 2+ dimensions decay; biases and norm weights do not. With
    embedding_lr_scale != 1, E (`wte.weight`) is a third group, decaying, whose "lr_scale"
    multiplies every learning rate set_lr gives it. With sense_warmup_steps > 0, the sense
    network's parameters are two more groups (decaying, not), each with "warmup_steps"."""
    wte = getattr(model, "wte", None)
    embedding = wte.weight if embedding_lr_scale != 1.0 and wte is not None else None
    sense_network = getattr(model, "sense_network", None)
    senses = ({id(p) for p in sense_network.parameters()}
              if sense_warmup_steps and sense_network is not None else set())
    decay, no_decay, sense_decay, sense_no_decay = [], [], [], []
    for p in model.parameters():
        if p.requires_grad and p is not embedding:
            if id(p) in senses:
                (sense_decay if p.dim() >= 2 else sense_no_decay).append(p)
            else:
                (decay if p.dim() >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay, "lr_scale": 1.0},
              {"params": no_decay, "weight_decay": 0.0, "lr_scale": 1.0}]
    if embedding is not None and embedding.requires_grad:
        groups.append({"params": [embedding], "weight_decay": weight_decay,
                       "lr_scale": embedding_lr_scale})
    if senses:
        groups += [{"params": sense_decay, "weight_decay": weight_decay, "lr_scale": 1.0,
                    "warmup_steps": sense_warmup_steps},
                   {"params": sense_no_decay, "weight_decay": 0.0, "lr_scale": 1.0,
                    "warmup_steps": sense_warmup_steps}]
    return groups


def build_optimizer(model: nn.Module, cfg: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    groups = param_groups(model, cfg.weight_decay, cfg.embedding_lr_scale, cfg.sense_warmup_steps)
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas),
                             eps=cfg.eps, fused=True if device.type == "cuda" else None)


def set_lr(optimizer: torch.optim.Optimizer, lr: float, step: int | None = None) -> None:
    """The schedule's learning rate at `step`, times each group's lr_scale (1 where a group has
    none) and, for a group with "warmup_steps", min(1, (step + 1) / warmup_steps)."""
    for group in optimizer.param_groups:
        ramp = group.get("warmup_steps", 0)
        extra = min(1.0, (step + 1) / ramp) if ramp and step is not None else 1.0
        group["lr"] = lr * group.get("lr_scale", 1.0) * extra
