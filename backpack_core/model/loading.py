"""Loading and saving checkpoints, safely: no code from a checkpoint ever runs.

Sources `load_backpack` / `load_model` accept:
- None: the shipped default model (`data/backpack-mini`);
- a local directory in our format: config.json + model.safetensors + tokenizer.json;
- a local directory in the published `stanfordnlp/backpack-gpt2` layout: its config.json and
  `pytorch_model.bin` (read with `torch.load(weights_only=True)`), GPT-2's tokenizer;
- a hub id (e.g. "stanfordnlp/backpack-gpt2"), downloaded when online. Never trust_remote_code.
"""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import torch

from backpack_core.common.files import atomic_write, parse_json, read_bounded, write_text_atomic
from backpack_core.common.limits import MAX_DATA_FILE_BYTES, check_model_fits
from backpack_core.model.backpack import Backpack
from backpack_core.model.config import ModelConfig, published_gpt2_details
from backpack_core.model.tokenizer import TOKENIZER_FILE, Tokenizer, gpt2_tokenizer

REPO_ROOT = Path(__file__).resolve().parent.parent.parent
# The shipped model: data/backpack-mini in a checkout (or an editable install); a wheel
# (`pip install .`) carries the same files as the package data `backpack_core/shipped_model`.
_CHECKOUT_MODEL_DIR = REPO_ROOT / "data" / "backpack-mini"
DEFAULT_MODEL_DIR = (_CHECKOUT_MODEL_DIR if _CHECKOUT_MODEL_DIR.is_dir()
                     else Path(__file__).resolve().parent.parent / "shipped_model")
WEIGHTS_FILE = "model.safetensors"
PUBLISHED_WEIGHTS = "pytorch_model.bin"
# A training run directory keeps its checkpoints in CHECKPOINTS_DIR; CURRENT_LINK names the latest.
CHECKPOINTS_DIR = "checkpoints"
CURRENT_LINK = "current"

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float": torch.float32,
          "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16, "half": torch.float16}


class CheckpointError(ValueError):
    """A checkpoint could not be found or read; the message says what to do."""


# ----------------------------------------------------------------------------------------------
# Devices and dtypes
# ----------------------------------------------------------------------------------------------

def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """cuda if available, else mps, else cpu; or the one asked for (checked to exist)."""
    if device is None or device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"unknown device {device!r}; use cpu, cuda, cuda:N, mps or auto") from err
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("device 'cuda' was asked for but no CUDA GPU is available; use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            n = torch.cuda.device_count()
            raise ValueError(f"device {str(device)!r} does not exist: this machine has {n} CUDA "
                             f"GPU(s), cuda:0..cuda:{n - 1}")
    elif device.type == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise ValueError("device 'mps' was asked for but this machine has no Apple GPU (MPS); "
                             f"use one of {', '.join(available_devices())}")
    elif device.type != "cpu":
        raise ValueError(f"device {str(device)!r} is not supported; use one of "
                         f"{', '.join(available_devices())}")
    return device


def available_devices() -> list[str]:
    """The device choices this machine offers: auto, cpu, and cuda / mps where present."""
    devices = ["auto", "cpu"]
    if torch.cuda.is_available():
        devices.append("cuda")
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        devices.append("mps")
    return devices


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """float32 by default ("auto" or None), on every device, GPUs included: inspection,
    sessions, edits and generation then compute in fp32, so that attribution is exact (bf16 on
    request). Training chooses its own precision (bf16 autocast on GPUs, `train.dtype`)."""
    if dtype is None or dtype == "auto":
        return torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; use one of {sorted(DTYPES)} or auto")
    return DTYPES[dtype]


# ----------------------------------------------------------------------------------------------
# The published layout: an explicit map of names, and which weights are stored transposed
# ----------------------------------------------------------------------------------------------

def published_key_map(n_layer: int) -> dict[str, tuple[str, bool]]:
    """Our parameter name -> (published key, stored transposed as GPT-2 Conv1D (in, out))."""
    m: dict[str, tuple[str, bool]] = {
        "wte.weight": ("backpack.gpt2_model.wte.weight", False),
        "contextualizer.wpe.weight": ("backpack.gpt2_model.wpe.weight", False),
        "contextualizer.ln_f.weight": ("backpack.gpt2_model.ln_f.weight", False),
        "contextualizer.ln_f.bias": ("backpack.gpt2_model.ln_f.bias", False),
        "sense_weight_network.c_attn.weight": ("backpack.sense_weight_net.c_attn.weight", False),
        "sense_weight_network.c_attn.bias": ("backpack.sense_weight_net.c_attn.bias", False),
    }
    for i in range(n_layer):
        ours, theirs = f"contextualizer.h.{i}", f"backpack.gpt2_model.h.{i}"
        for norm in ("ln_1", "ln_2"):
            for p in ("weight", "bias"):
                m[f"{ours}.{norm}.{p}"] = (f"{theirs}.{norm}.{p}", False)
        for lin in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"):
            m[f"{ours}.{lin}.weight"] = (f"{theirs}.{lin}.weight", True)
            m[f"{ours}.{lin}.bias"] = (f"{theirs}.{lin}.bias", False)
    sn = "backpack.sense_network"
    for norm in ("ln", "block.ln_1", "block.ln_2"):
        for p in ("weight", "bias"):
            m[f"sense_network.{norm}.{p}"] = (f"{sn}.{norm}.{p}", False)
    for lin in ("block.mlp.c_fc", "block.mlp.c_proj", "final_mlp.c_fc", "final_mlp.c_proj"):
        m[f"sense_network.{lin}.weight"] = (f"{sn}.{lin}.weight", True)
        m[f"sense_network.{lin}.bias"] = (f"{sn}.{lin}.bias", False)
    return m


# Keys of the published pickle we deliberately do not read: aliases of wte / wpe, the tied
# output layer, and GPT-2's attention-mask buffers.
PUBLISHED_IGNORED_SUFFIXES = ("attn.bias", "attn.masked_bias")
PUBLISHED_ALIASES = ("backpack.word_embeddings.weight", "backpack.position_embeddings.weight",
                     "lm_head.weight")


def published_config(raw: dict) -> ModelConfig:
    """Our config from the published config.json (model_type gpt2 + num_senses...)."""
    missing = [k for k in ("n_embd", "n_layer", "n_head", "num_senses", "vocab_size")
               if k not in raw]
    if missing:
        raise CheckpointError(f"published config.json lacks {missing}")
    details = published_gpt2_details()
    return ModelConfig(
        vocab_size=raw["vocab_size"], n_positions=raw.get("n_positions", 512),
        n_embd=raw["n_embd"], n_layer=raw["n_layer"], n_head=raw["n_head"],
        n_inner=raw.get("n_inner"), num_senses=raw["num_senses"],
        sense_intermediate_scale=raw.get("sense_intermediate_scale", 4),
        activation_function=raw.get("activation_function", details["activation_function"]),
        scale_attn_by_inverse_layer_idx=raw.get("scale_attn_by_inverse_layer_idx",
                                                details["scale_attn_by_inverse_layer_idx"]),
        sense_mask_value=details["sense_mask_value"],
        embd_pdrop=raw.get("embd_pdrop", 0.1), attn_pdrop=raw.get("attn_pdrop", 0.1),
        resid_pdrop=raw.get("resid_pdrop", 0.1),
        layer_norm_epsilon=raw.get("layer_norm_epsilon", 1e-5),
        bos_token_id=raw.get("bos_token_id", 50256), eos_token_id=raw.get("eos_token_id", 50256),
    )


def convert_published_state_dict(raw: dict[str, torch.Tensor], n_layer: int
                                 ) -> dict[str, torch.Tensor]:
    """Published state dict -> ours, by the explicit map; refuses missing or unknown keys."""
    key_map = published_key_map(n_layer)
    known = {theirs for theirs, _ in key_map.values()} | set(PUBLISHED_ALIASES)
    unknown = [k for k in raw if k not in known and not k.endswith(PUBLISHED_IGNORED_SUFFIXES)]
    missing = [theirs for theirs, _ in key_map.values() if theirs not in raw]
    if missing or unknown:
        raise CheckpointError("not the published Backpack layout: "
                              f"missing keys {missing[:5]}, unexpected keys {unknown[:5]}")
    return {ours: (raw[theirs].t() if transposed else raw[theirs]).contiguous()
            for ours, (theirs, transposed) in key_map.items()}


# ----------------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------------

def _download(hub_id: str) -> Path:
    try:
        from huggingface_hub import snapshot_download
    except ImportError as err:
        raise CheckpointError(f"{hub_id!r} is not a local directory, and huggingface_hub is not "
                              "installed to download it") from err
    try:
        path = snapshot_download(hub_id, allow_patterns=[
            "config.json", WEIGHTS_FILE, PUBLISHED_WEIGHTS, TOKENIZER_FILE, "*.txt", "vocab.json"])
    except Exception as err:  # offline, unknown id, ...: say so plainly
        raise CheckpointError(f"could not download {hub_id!r} from the model hub ({err}). "
                              "Give a local directory instead.") from err
    return Path(path)


class HubId(str):
    """A model hub id the server's allow-list accepted (`access.allowed_source`): downloaded from
    the hub, never read as a local path of the same name (that would read the server's files,
    and answer differently for a name that exists there and one that does not)."""


def resolve_source(source: str | os.PathLike | None) -> Path:
    if isinstance(source, HubId):
        return _download(str(source))
    if source is None:
        if not (DEFAULT_MODEL_DIR / "config.json").is_file():
            raise CheckpointError(f"the shipped default model is missing at {DEFAULT_MODEL_DIR}; "
                                  "pass a model directory instead")
        return DEFAULT_MODEL_DIR
    path = Path(source).expanduser()
    current = path / CHECKPOINTS_DIR / CURRENT_LINK
    if current.is_dir():  # a training run: its latest checkpoint, resolved once (a trainer may
        return current.resolve()  # switch the link while we read)
    if path.is_dir():
        return path
    text = str(source)
    if path.exists() or text.startswith((".", "/", "~")) or text.count("/") != 1:
        raise CheckpointError(f"model {text!r} is not a directory. Give a directory with "
                              "config.json and model.safetensors (or pytorch_model.bin), "
                              "a hub id like 'stanfordnlp/backpack-gpt2', or nothing for the "
                              "shipped default model")
    return _download(text)


def _load_pickled_tensors(path: Path) -> dict[str, torch.Tensor]:
    """torch.load with weights_only=True: tensors and plain containers only, never code."""
    try:
        try:
            raw = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as err:
            if "mmap" not in str(err).lower() and "zip" not in str(err).lower():
                raise
            raw = torch.load(path, map_location="cpu", weights_only=True)  # legacy pickle
    except pickle.UnpicklingError as err:
        raise CheckpointError(f"refusing to load {path}: it holds objects other than tensors, "
                              f"and loading it would run code ({str(err).splitlines()[0]})") from err
    if not isinstance(raw, dict):
        raise CheckpointError(f"{path} does not hold a state dict")
    return raw


def load_backpack(source: str | os.PathLike | None = None, device=None, dtype=None
                  ) -> tuple[Backpack, Tokenizer]:
    """The core model (plain PyTorch, eval mode) and its tokenizer. No transformers import.

    dtype: None / "auto" is float32 on every device (see `resolve_dtype`); "bfloat16" or
    "float16" on request."""
    directory = resolve_source(source)
    device = resolve_device(device)
    dtype = resolve_dtype(dtype, device)
    raw_config = read_config(directory)

    if (directory / WEIGHTS_FILE).is_file():
        state = _load_safetensors(directory / WEIGHTS_FILE)
        published = any(k.startswith("backpack.gpt2_model.") for k in state)
        config = _model_config(raw_config, published, directory, device, dtype)
        if published:
            state = convert_published_state_dict(state, config.n_layer)
        else:
            state = {k.removeprefix("backpack."): v for k, v in state.items()}
    elif (directory / PUBLISHED_WEIGHTS).is_file():
        published = True
        raw = _load_pickled_tensors(directory / PUBLISHED_WEIGHTS)
        config = _model_config(raw_config, published, directory, device, dtype)
        state = convert_published_state_dict(raw, config.n_layer)
    else:
        raise CheckpointError(f"{directory} has neither {WEIGHTS_FILE} nor {PUBLISHED_WEIGHTS}")
    check_finite(state, directory)

    with torch.device("meta"):  # no memory, no init: the weights are assigned right after
        model = Backpack(config)
    try:
        model.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as err:
        raise CheckpointError(f"weights in {directory} do not fit its config.json: "
                              f"{str(err).splitlines()[0]} {' '.join(str(err).split()[-40:])}") from err
    model = model.to(device=device, dtype=dtype).eval()

    tokenizer = load_tokenizer(directory, published)
    if len(tokenizer) > config.vocab_size:
        raise CheckpointError(f"tokenizer has {len(tokenizer)} tokens but the model only "
                              f"{config.vocab_size}")
    return model, tokenizer


def read_config(directory: Path) -> dict:
    """config.json of a model directory as a dict, or CheckpointError saying what is wrong."""
    config_path = directory / "config.json"
    if not config_path.is_file():
        raise CheckpointError(f"{directory} has no config.json")
    try:
        raw_config = parse_json(read_bounded(config_path, MAX_DATA_FILE_BYTES, str(config_path),
                                             "MAX_DATA_FILE_BYTES", CheckpointError).decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{config_path} is not valid JSON: {err}") from err
    except OSError as err:
        raise CheckpointError(f"cannot read {config_path}: {err.strerror or err}") from err
    if not isinstance(raw_config, dict):
        raise CheckpointError(f"{config_path} must hold a JSON object of settings, got a "
                              f"{type(raw_config).__name__}")
    return raw_config


def _model_config(raw_config: dict, published: bool, directory: Path, device: torch.device,
                  dtype: torch.dtype) -> ModelConfig:
    """The checked config, and its size checked against memory before anything is built (a
    config asking for 10**9 layers is refused, not built)."""
    try:
        config = published_config(raw_config) if published else ModelConfig.from_dict(raw_config)
    except (ValueError, TypeError) as err:
        if isinstance(err, CheckpointError):
            raise
        raise CheckpointError(f"{directory / 'config.json'}: {err}") from err
    check_model_fits(config.parameter_count(), torch.finfo(dtype).bits // 8, device,
                     what=f"the model in {directory}")
    return config


def _load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except SafetensorError as err:
        raise CheckpointError(f"{path} is not a readable safetensors file (truncated, empty or "
                              f"damaged: {err}); copy the model again") from err
    except OSError as err:
        raise CheckpointError(f"cannot read {path}: {err.strerror or err}") from err


def check_finite(state: dict[str, torch.Tensor], directory: Path) -> None:
    """Refuse weights holding NaN or Inf: they would turn every output into NaN, silently."""
    bad = [name for name, t in state.items()
           if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    if bad:
        raise CheckpointError(f"the weights in {directory} hold NaN or infinite values in {len(bad)} "
                              f"tensor(s): {', '.join(bad[:5])}{' ...' if len(bad) > 5 else ''}; "
                              "the checkpoint is damaged (or the run diverged): use an earlier one")


def load_tokenizer(directory: Path, published: bool) -> Tokenizer:
    """tokenizer.json beside the weights; the published layout ships none: it is GPT-2's."""
    path = directory / TOKENIZER_FILE
    if path.is_file():
        try:
            return Tokenizer.load(directory)
        except Exception as err:  # the tokenizers library raises a bare Exception on bad JSON
            raise CheckpointError(f"{path} is not a valid tokenizer file "
                                  f"({str(err).splitlines()[0]}); copy it again from the model") from err
    if published:
        return gpt2_tokenizer()
    raise CheckpointError(f"the tokenizer of {directory} is missing: looked for {path}. A model in our "
                          "format keeps its tokenizer.json beside model.safetensors; copy it from "
                          "the model (or the training run's data.dir)")


def load_model(source: str | os.PathLike | None = None, device=None, dtype=None):
    """(BackpackLM, PreTrainedTokenizerFast): the transformers-facing model, e.g. for generate()."""
    from backpack_core.model.hf import BackpackLM

    backpack, tokenizer = load_backpack(source, device=device, dtype=dtype)
    return BackpackLM.from_backpack(backpack).eval(), tokenizer.to_transformers()


# ----------------------------------------------------------------------------------------------
# Saving (our format; same files as BackpackLM.save_pretrained)
# ----------------------------------------------------------------------------------------------

def save_backpack(model: Backpack, tokenizer: Tokenizer | None, directory: str | os.PathLike,
                  dtype: torch.dtype | None = None, extra_config: dict | None = None) -> Path:
    """Write config.json, model.safetensors (keys `backpack.*`) and tokenizer.json, atomically:
    each file goes to a temporary name in the directory and is renamed into place."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {f"backpack.{k}": (v.to(dtype) if dtype is not None and v.is_floating_point() else v
                               ).detach().cpu().contiguous()  # token ids and masks keep theirs
             for k, v in model.state_dict().items()}
    config = {"model_type": "backpack", "architectures": ["BackpackLM"],
              **model.config.to_dict(), **(extra_config or {})}
    atomic_write(directory / WEIGHTS_FILE, lambda p: save_file(state, str(p), metadata={"format": "pt"}))
    write_text_atomic(directory / "config.json", json.dumps(config, indent=2) + "\n")
    if tokenizer is not None:
        tokenizer.save(directory)
    return directory
