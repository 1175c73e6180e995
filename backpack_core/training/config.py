"""A training run's configuration: a TOML file with [model], [data] and [train] sections, plus
command-line overrides `section.key=value` parsed to the type of the field they set.

    [model]   ModelConfig fields (backpack_core.model.config); vocab_size, bos/eos ids and n_positions
              default to the token shards' tokenizer (vocabulary rounded up to a multiple of 64)
              and to data.seq_len.
    [data]    dir (token shards from `python -m backpack_core.training.prepare`), seq_len.
    [train]   TrainConfig below.

A file may start with `extends = "other.toml"` (relative to itself): its sections are read first
and this file's keys replace theirs (Transformer twins extend their Backpack's file).
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from backpack_core.model.config import ModelConfig

# configs/ in a checkout; a wheel carries them as the package data `backpack_core/shipped_configs`
_CHECKOUT_CONFIG_DIR = Path(__file__).resolve().parent.parent.parent / "configs"
CONFIG_DIR = (_CHECKOUT_CONFIG_DIR if _CHECKOUT_CONFIG_DIR.is_dir()
              else Path(__file__).resolve().parent.parent / "shipped_configs")
SCHEDULES = ("linear", "cosine", "constant")
COMPILE_MIN_STEPS = 300  # train.compile=auto compiles runs at least this long
TRAIN_DTYPES = ("auto", "float32", "bfloat16")
NONFINITE_ACTIONS = ("stop", "skip")
INIT_EMBEDDINGS = ("random", "word2vec")
INIT_SENSES = ("random", "embeddings")
VOCAB_MULTIPLE = 64


class ConfigError(ValueError):
    """A bad config file, key or value; the message names the key and what is accepted."""


@dataclass
class DataConfig:
    dir: str = "data/shards/corpus"  # token shards (prepare's --out)
    seq_len: int = 512  # tokens per training sequence


@dataclass
class TrainConfig:
    batch_size: int = 16  # sequences per GPU (process) per micro-step
    grad_accum: int = 1  # micro-steps per optimizer step (ignored when global_batch is set)
    global_batch: int = 0  # sequences per optimizer step over all ranks; 0: batch*accum*world
    max_steps: int = 0  # optimizer steps; 0: from max_tokens
    max_tokens: int = 0  # training tokens; used when max_steps is 0
    lr: float = 6e-4  # peak learning rate
    min_lr: float = 6e-5  # learning rate at the end of the decay
    warmup_steps: int = 100  # linear warmup from 0 to lr
    schedule: str = "linear"  # decay after warmup: linear | cosine | constant
    weight_decay: float = 0.1  # AdamW; none on biases and norm weights
    # The tied embedding matrix E learns at lr x this (its weight decay scales with it): < 1 keeps a
    # word2vec-started E's geometry while the rest learns; 0 freezes E in effect. 1: as the rest.
    embedding_lr_scale: float = 1.0
    # The sense network's learning rate gets a second linear ramp, from 0 to the schedule's over
    # this many steps (on top of warmup_steps): senses started at their embedding
    # (init_senses = "embeddings") are not undone while the rest of the model warms up. 0: none.
    sense_warmup_steps: int = 0
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    grad_clip: float = 1.0  # max global gradient norm; 0: no clipping
    dtype: str = "auto"  # auto (bf16 autocast on GPU, fp32 on CPU) | float32 | bfloat16
    # torch.compile the model: true | false | auto (only runs of >= COMPILE_MIN_STEPS steps:
    # compiling costs ~60 s on CPU and gives ~1.3x per step, so it pays on long runs only)
    compile: bool | str = "auto"
    dedup_senses: bool = False  # sense vectors once per distinct token (faster on CPU); needs no dropout
    fsdp: bool = False  # shard parameters, gradients and optimizer state (FSDP2) instead of DDP
    seed: int = 1337  # initialization, data order and dropout
    device: str = "auto"  # auto | cpu | cuda (under torchrun: the local GPU)
    eval_every: int = 500  # steps between evaluations (and one at the end); 0: only at the end
    eval_batches: int = 20  # evaluation uses eval_batches * batch_size fixed val windows
    ckpt_every: int = 1000  # steps between checkpoints (and one at the end); 0: only at the end
    log_every: int = 10  # steps between metric lines
    out_dir: str = ""  # run directory; "": runs/<config file name>
    peak_tflops: float = 0.0  # accelerator peak for MFU; 0: look up the GPU (null on CPU)
    on_nonfinite: str = "stop"  # a NaN/Inf loss or gradient: stop (last checkpoint kept) | skip the update
    max_skipped: int = 10  # with on_nonfinite=skip: stop after this many skipped steps in a row
    threads: int = 0  # torch CPU threads of this process (torch.set_num_threads); 0: torch's default
    # Initial weights (docs/TRAINING.md, "Initialisation"): "random" (GPT-2's N(0, 0.02)), or
    # "word2vec": the tied embeddings from a skip-gram word2vec on the train split's token ids
    # (init_w2v_* below; computed once, cached in data.dir).
    init_embeddings: str = "random"
    init_w2v_epochs: int = 3  # word2vec passes over its tokens
    init_w2v_window: int = 5  # context window, tokens each side
    init_w2v_tokens: int = 0  # use the first N train tokens; 0: all
    init_w2v_std: float = 0.02  # rows get norm init_w2v_std * sqrt(n_embd), as N(0, std) rows
    # "embeddings": after E is set, fit the sense network (init_senses_steps Adam steps at
    # init_senses_lr, E fixed) so that every sense of every token starts at its embedding E[x];
    # "random": the sense network's own N(0, 0.02) start. Backpacks only.
    init_senses: str = "random"
    init_senses_steps: int = 300
    init_senses_lr: float = 1e-3
    # Warm start: a trained model directory (say data/backpack-mini) whose weights this run starts
    # from, with a new optimizer and the run's warm-up; same shape and tokenizer. "": none.
    init_from: str = ""


@dataclass
class RunConfig:
    model: dict[str, Any] = field(default_factory=dict)  # ModelConfig fields given
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    name: str = "run"  # the config file's stem

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "model": dict(self.model), "data": dataclasses.asdict(self.data),
                "train": {k: list(v) if isinstance(v, tuple) else v
                          for k, v in dataclasses.asdict(self.train).items()}}

    @property
    def out_dir(self) -> Path:
        return Path(self.train.out_dir or f"runs/{self.name}")


SECTIONS = {"model": ModelConfig, "data": DataConfig, "train": TrainConfig}


# ----------------------------------------------------------------------------------------------
# Values: TOML values and command-line strings -> the field's type
# ----------------------------------------------------------------------------------------------

def field_types(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _type_name(hint) -> str:
    if typing.get_origin(hint) in (types.UnionType, typing.Union):
        return " or ".join(_type_name(a) for a in typing.get_args(hint))
    if typing.get_origin(hint) is tuple:
        return f"{len(typing.get_args(hint))} comma-separated numbers"
    return {type(None): "none", bool: "true/false"}.get(hint, getattr(hint, "__name__", str(hint)))


def coerce(key: str, value: Any, hint) -> Any:
    """`value` (from TOML, or a string from the command line) as type `hint`, or ConfigError."""
    origin = typing.get_origin(hint)
    if origin in (types.UnionType, typing.Union):
        args = typing.get_args(hint)
        if type(None) in args and (value is None or (isinstance(value, str)
                                                     and value.lower() in ("none", "null"))):
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return coerce(key, value, arg)
            except ConfigError:
                pass
        raise ConfigError(f"{key} must be {_type_name(hint)}, got {value!r}")
    text = value.strip().strip("'\"") if isinstance(value, str) else None
    try:
        if origin is tuple:
            items = [v for v in text.strip("[]()").split(",") if v.strip()] if text is not None else value
            out = tuple(coerce(key, v, a) for v, a in zip(items, typing.get_args(hint), strict=True))
            return out
        if hint is bool:
            if isinstance(value, bool):
                return value
            if text is not None and text.lower() in ("true", "1", "yes", "on", "false", "0", "no", "off"):
                return text.lower() in ("true", "1", "yes", "on")
        elif hint is int:
            if isinstance(value, int) and not isinstance(value, bool):
                return value
            number = float(text.replace("_", "")) if text is not None else value
            if isinstance(number, float) and number.is_integer():  # 1e6, 2_000
                return int(number)
        elif hint is float:
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                return float(value)
            if text is not None:
                number = float(text.replace("_", ""))
                if math.isfinite(number):
                    return number
        elif hint is str:
            if isinstance(value, str):
                return text if text is not None else value
        else:  # pragma: no cover - a field type this parser does not know
            raise TypeError(hint)
    except (ValueError, TypeError, AttributeError):
        pass
    raise ConfigError(f"{key} must be {_type_name(hint)}, got {value!r}")


def _check_key(section: str, key: str) -> Any:
    """The type of section.key, or a ConfigError naming the close matches and accepted keys."""
    if section not in SECTIONS:
        raise ConfigError(f"unknown section {section!r}; use one of {sorted(SECTIONS)}")
    hints = field_types(SECTIONS[section])
    if key not in hints:
        close = difflib.get_close_matches(key, hints, n=1)
        hint = f" Did you mean {section}.{close[0]}?" if close else ""
        raise ConfigError(f"unknown key {section}.{key}.{hint} Accepted keys in [{section}]: "
                          + ", ".join(sorted(hints)))
    return hints[key]


# ----------------------------------------------------------------------------------------------
# Files and overrides
# ----------------------------------------------------------------------------------------------

def resolve_config_path(path: str | Path) -> Path:
    """A file path, or the name of a shipped config (`tiny` -> configs/tiny.toml)."""
    candidate = Path(path).expanduser()
    if candidate.is_file():
        return candidate
    shipped = CONFIG_DIR / (candidate.name if candidate.suffix == ".toml" else f"{candidate.name}.toml")
    if shipped.is_file():
        return shipped
    names = sorted(p.stem for p in CONFIG_DIR.glob("*.toml"))
    raise ConfigError(f"config file {path} not found; give a path or one of the shipped configs: "
                      + ", ".join(names))


def read_toml(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, dict[str, Any]]:
    """The sections of a config file, after following `extends`."""
    path = path.resolve()
    if path in seen:
        raise ConfigError(f"{path} extends itself (through {[str(p) for p in seen]})")
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path} is not valid TOML: {err}") from err
    sections: dict[str, dict[str, Any]] = {name: {} for name in SECTIONS}
    base = raw.pop("extends", None)
    if base is not None:
        base_path = (path.parent / base) if not Path(base).is_absolute() else Path(base)
        if not base_path.is_file():
            raise ConfigError(f"{path}: extends {base!r}, which does not exist")
        sections = read_toml(base_path, (*seen, path))
    for name, values in raw.items():
        if name not in SECTIONS or not isinstance(values, dict):
            raise ConfigError(f"{path}: unknown top-level entry {name!r}; a config has the sections "
                              f"{sorted(SECTIONS)} and optionally extends = \"other.toml\"")
        sections[name].update(values)
    return sections


def parse_override(text: str) -> tuple[str, str, str]:
    if "=" not in text or "." not in text.split("=", 1)[0]:
        raise ConfigError(f"override {text!r} is not of the form section.key=value "
                          "(e.g. train.lr=3e-4 or model.n_layer=4)")
    dotted, value = text.split("=", 1)
    section, key = dotted.strip().split(".", 1)
    return section, key, value


def build_run_config(sections: dict[str, dict[str, Any]], name: str) -> RunConfig:
    """Typed, validated config from section dicts (values already from TOML or strings)."""
    typed: dict[str, dict[str, Any]] = {}
    for section, values in sections.items():
        typed[section] = {key: coerce(f"{section}.{key}", value, _check_key(section, key))
                          for key, value in values.items()}
    cfg = RunConfig(model=typed.get("model", {}), data=DataConfig(**typed.get("data", {})),
                    train=TrainConfig(**typed.get("train", {})), name=name)
    validate(cfg)
    return cfg


def load_run_config(path: str | Path | None, overrides: list[str] = (),
                    saved: dict[str, Any] | None = None) -> RunConfig:
    """Read a config file (or a saved run_config.json dict, or only defaults) and apply
    `section.key=value` overrides.

    Setting train.max_steps on the command line clears a train.max_tokens from the file and the
    other way round: the budget said last wins.
    """
    if saved is not None:
        sections, name = {s: dict(saved.get(s, {})) for s in SECTIONS}, saved.get("name", "run")
    elif path is not None:
        file = resolve_config_path(path)
        sections, name = read_toml(file), file.stem
    else:
        sections, name = {s: {} for s in SECTIONS}, "run"
    for text in overrides:
        section, key, value = parse_override(text)
        _check_key(section, key)
        sections[section][key] = value
        if section == "train" and key in ("max_steps", "max_tokens"):
            sections["train"][{"max_steps": "max_tokens", "max_tokens": "max_steps"}[key]] = 0
    return build_run_config(sections, name)


def validate(cfg: RunConfig) -> None:
    t, problems = cfg.train, []
    for key in ("batch_size", "grad_accum", "log_every"):
        if getattr(t, key) < 1:
            problems.append(f"train.{key} must be >= 1, got {getattr(t, key)}")
    for key in ("global_batch", "max_steps", "max_tokens", "warmup_steps", "eval_every",
                "eval_batches", "ckpt_every"):
        if getattr(t, key) < 0:
            problems.append(f"train.{key} must be >= 0, got {getattr(t, key)}")
    if t.max_steps == 0 and t.max_tokens == 0:
        problems.append("set a training budget: train.max_steps or train.max_tokens")
    if t.max_steps and t.max_tokens:
        problems.append(f"train.max_steps ({t.max_steps}) and train.max_tokens ({t.max_tokens}) are "
                        "both set; set one of them to 0")
    if not t.lr > 0 or not 0 <= t.min_lr <= t.lr:
        problems.append(f"need train.lr > 0 and 0 <= train.min_lr <= train.lr, got lr={t.lr}, "
                        f"min_lr={t.min_lr}")
    if t.schedule not in SCHEDULES:
        problems.append(f"train.schedule must be one of {', '.join(SCHEDULES)}, got {t.schedule!r}")
    if isinstance(t.compile, str) and t.compile != "auto":
        problems.append(f"train.compile must be true, false or auto, got {t.compile!r}")
    if t.dtype not in TRAIN_DTYPES:
        problems.append(f"train.dtype must be one of {', '.join(TRAIN_DTYPES)}, got {t.dtype!r}")
    if not all(0 <= b < 1 for b in t.betas):
        problems.append(f"train.betas must be in [0, 1), got {list(t.betas)}")
    if t.weight_decay < 0 or t.grad_clip < 0 or t.eps <= 0 or t.peak_tflops < 0:
        problems.append("train.weight_decay, grad_clip and peak_tflops must be >= 0 and eps > 0")
    if t.device not in ("auto", "cpu", "cuda", "mps") and not t.device.startswith("cuda:"):
        problems.append(f"train.device must be auto, cpu, cuda, cuda:N or mps, got {t.device!r}")
    if t.on_nonfinite not in NONFINITE_ACTIONS:
        problems.append(f"train.on_nonfinite must be one of {', '.join(NONFINITE_ACTIONS)}, "
                        f"got {t.on_nonfinite!r}")
    if t.max_skipped < 1:
        problems.append(f"train.max_skipped must be >= 1, got {t.max_skipped}")
    if not 0.0 <= t.embedding_lr_scale <= 10.0:
        problems.append(f"train.embedding_lr_scale must be between 0 and 10 (1: E learns as the "
                        f"rest, 0: E stays as initialised), got {t.embedding_lr_scale}")
    if t.sense_warmup_steps < 0:
        problems.append(f"train.sense_warmup_steps must be >= 0 (0: the sense network warms up with "
                        f"the rest), got {t.sense_warmup_steps}")
    if t.sense_warmup_steps and cfg.model.get("model_kind", "backpack") != "backpack":
        problems.append(f"train.sense_warmup_steps={t.sense_warmup_steps} needs a Backpack "
                        "(a Transformer twin has no sense network); set it to 0")
    if t.threads < 0:
        problems.append(f"train.threads must be >= 0, got {t.threads}")
    if t.init_embeddings not in INIT_EMBEDDINGS:
        problems.append(f"train.init_embeddings must be one of {', '.join(INIT_EMBEDDINGS)}, "
                        f"got {t.init_embeddings!r}")
    if t.init_from and t.init_embeddings != "random":
        problems.append("train.init_from (a trained model) and train.init_embeddings="
                        f"{t.init_embeddings} both set the embeddings; choose one")
    if t.init_senses not in INIT_SENSES:
        problems.append(f"train.init_senses must be one of {', '.join(INIT_SENSES)}, "
                        f"got {t.init_senses!r}")
    if t.init_from and t.init_senses != "random":
        problems.append("train.init_from (a trained model) already sets the senses; "
                        f"train.init_senses={t.init_senses} cannot go with it")
    if t.init_senses != "random" and cfg.model.get("model_kind", "backpack") != "backpack":
        problems.append(f"train.init_senses={t.init_senses} needs a Backpack "
                        f"(model.model_kind={cfg.model.get('model_kind')!r} has no senses)")
    if t.init_senses_steps < 1 or not t.init_senses_lr > 0:
        problems.append("train.init_senses_steps must be >= 1 and init_senses_lr > 0, got "
                        f"{t.init_senses_steps} and {t.init_senses_lr}")
    if t.init_w2v_epochs < 1 or t.init_w2v_window < 1 or t.init_w2v_tokens < 0 or not t.init_w2v_std > 0:
        problems.append("train.init_w2v_epochs and init_w2v_window must be >= 1, init_w2v_tokens "
                        ">= 0 and init_w2v_std > 0")
    if cfg.data.seq_len < 2:
        problems.append(f"data.seq_len must be >= 2, got {cfg.data.seq_len}")
    dropout = {key: cfg.model.get(key, 0.0) for key in ("embd_pdrop", "resid_pdrop")}
    if t.dedup_senses and any(isinstance(p, (int, float)) and p > 0 for p in dropout.values()):
        problems.append(f"train.dedup_senses is exact only without dropout (all occurrences of a "
                        f"token would share one dropout mask), but model has {dropout}; set "
                        f"train.dedup_senses=false or the dropouts to 0")
    if problems:
        raise ConfigError("; ".join(problems))


# ----------------------------------------------------------------------------------------------
# What the data decides: the model's vocabulary and special tokens; the batch plan
# ----------------------------------------------------------------------------------------------

def resolve_model_config(cfg: RunConfig, vocab_size: int, eos_token_id: int) -> ModelConfig:
    """ModelConfig from [model], with the tokenizer's vocabulary (rounded up to a multiple of 64),
    its EOS as eos/bos, and n_positions = data.seq_len unless given."""
    values = dict(cfg.model)
    values.setdefault("vocab_size", -(-vocab_size // VOCAB_MULTIPLE) * VOCAB_MULTIPLE)
    values.setdefault("eos_token_id", eos_token_id)
    values.setdefault("bos_token_id", eos_token_id)
    values.setdefault("n_positions", cfg.data.seq_len)
    if values["vocab_size"] < vocab_size:
        raise ConfigError(f"model.vocab_size={values['vocab_size']} is smaller than the tokenizer's "
                          f"{vocab_size} tokens; leave it out to use the tokenizer's size")
    if values["n_positions"] < cfg.data.seq_len:
        raise ConfigError(f"data.seq_len={cfg.data.seq_len} is longer than model.n_positions="
                          f"{values['n_positions']}")
    try:
        return ModelConfig(**values)
    except ValueError as err:
        raise ConfigError(str(err)) from err


@dataclass
class BatchPlan:
    """How a step's global batch is split over ranks and micro-steps, and how long the run is."""

    micro_batch: int  # sequences per rank per micro-step
    grad_accum: int
    world_size: int
    seq_len: int
    max_steps: int

    @property
    def global_batch(self) -> int:
        return self.micro_batch * self.grad_accum * self.world_size

    @property
    def tokens_per_step(self) -> int:
        return self.global_batch * self.seq_len


def plan_batches(cfg: RunConfig, world_size: int) -> BatchPlan:
    t = cfg.train
    accum = t.grad_accum
    if t.global_batch:
        per_step = t.batch_size * world_size
        if t.global_batch % per_step:
            raise ConfigError(f"train.global_batch={t.global_batch} is not a multiple of train.batch_size"
                              f" ({t.batch_size}) x {world_size} processes")
        accum = t.global_batch // per_step
    plan = BatchPlan(t.batch_size, accum, world_size, cfg.data.seq_len, t.max_steps)
    if not t.max_steps:
        plan.max_steps = -(-t.max_tokens // plan.tokens_per_step)
    return plan


def should_compile(compile: bool | str, max_steps: int) -> bool:
    """train.compile as a decision: "auto" compiles runs of at least COMPILE_MIN_STEPS steps."""
    return max_steps >= COMPILE_MIN_STEPS if compile == "auto" else bool(compile)
