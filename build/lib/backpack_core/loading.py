"""Loading and saving checkpoints, safely: no code from a checkpoint ever runs.

Sources `load_backpack` / `load_model` accept:
- None: the shipped default model (`data/backpack-mini`);
- a local directory in our format: config.json + model.safetensors + tokenizer.json;
- a local directory in the published `stanfordnlp/backpack-gpt2` layout: its config.json and
  `pytorch_model.bin` (read with `torch.load(weights_only=True)`), GPT-2's tokenizer;
- a hub id (e.g. "stanfordnlp/backpack-gpt2"), downloaded when online. Never trust_remote_code.
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import tempfile
from pathlib import Path

import torch

from .config import ModelConfig, published_gpt2_details
from .model import Backpack
from .tokenizer import TOKENIZER_FILE, Tokenizer, gpt2_tokenizer

REPO_ROOT = Path(__file__).resolve().parent.parent
# The shipped model: data/backpack-mini in a checkout (or an editable install); a wheel
# (`pip install .`) carries the same files as the package data `backpack_core/shipped_model`.
_CHECKOUT_MODEL_DIR = REPO_ROOT / "data" / "backpack-mini"
DEFAULT_MODEL_DIR = (_CHECKOUT_MODEL_DIR if _CHECKOUT_MODEL_DIR.is_dir()
                     else Path(__file__).resolve().parent / "shipped_model")
WEIGHTS_FILE = "model.safetensors"
PUBLISHED_WEIGHTS = "pytorch_model.bin"

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
    except RuntimeError as err:
        raise ValueError(f"unknown device {device!r}; use cpu, cuda, cuda:N, mps or auto") from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was asked for but no CUDA GPU is available; use --device cpu")
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
    """bf16 on GPU and fp32 on CPU by default."""
    if dtype is None or dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
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


def resolve_source(source: str | os.PathLike | None) -> Path:
    if source is None:
        if not (DEFAULT_MODEL_DIR / "config.json").is_file():
            raise CheckpointError(f"the shipped default model is missing at {DEFAULT_MODEL_DIR}; "
                                  "pass a model directory instead")
        return DEFAULT_MODEL_DIR
    path = Path(source).expanduser()
    if path.is_dir():
        return path
    text = str(source)
    if path.exists() or text.startswith((".", "/", "~")) or text.count("/") != 1:
        raise CheckpointError(f"model {text!r} is not a directory. Give a directory with "
                              "config.json and model.safetensors (or pytorch_model.bin), "
                              "a hub id like 'stanfordnlp/backpack-gpt2', or nothing for the "
                              "shipped default model")
    return _download(text)


@contextlib.contextmanager
def _skip_init():
    """Build a model without initialising its weights (they are loaded right after). Random init
    on the meta device runs torch's reference kernels, whose first use imports torch._dynamo:
    seconds of start-up for nothing."""
    names = ("normal_", "uniform_", "kaiming_uniform_", "ones_", "zeros_", "constant_",
             "trunc_normal_", "xavier_uniform_")
    saved = {name: getattr(torch.nn.init, name) for name in names}
    try:
        for name in names:
            setattr(torch.nn.init, name, lambda tensor, *args, **kwargs: tensor)
        yield
    finally:
        for name, fn in saved.items():
            setattr(torch.nn.init, name, fn)


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
    """The core model (plain PyTorch, eval mode) and its tokenizer. No transformers import."""
    directory = resolve_source(source)
    config_path = directory / "config.json"
    if not config_path.is_file():
        raise CheckpointError(f"{directory} has no config.json")
    try:
        raw_config = json.loads(config_path.read_text())
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{config_path} is not valid JSON: {err}") from err

    if (directory / WEIGHTS_FILE).is_file():
        from safetensors.torch import load_file

        state = load_file(str(directory / WEIGHTS_FILE))
        if any(k.startswith("backpack.gpt2_model.") for k in state):
            config = published_config(raw_config)
            state = convert_published_state_dict(state, config.n_layer)
        else:
            config = ModelConfig.from_dict(raw_config)
            state = {k.removeprefix("backpack."): v for k, v in state.items()}
    elif (directory / PUBLISHED_WEIGHTS).is_file():
        raw = _load_pickled_tensors(directory / PUBLISHED_WEIGHTS)
        config = published_config(raw_config)
        state = convert_published_state_dict(raw, config.n_layer)
    else:
        raise CheckpointError(f"{directory} has neither {WEIGHTS_FILE} nor {PUBLISHED_WEIGHTS}")

    with torch.device("meta"), _skip_init():
        model = Backpack(config)
    try:
        model.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as err:
        raise CheckpointError(f"weights in {directory} do not fit its config.json: {err}") from err
    device = resolve_device(device)
    model = model.to(device=device, dtype=resolve_dtype(dtype, device)).eval()

    if (directory / TOKENIZER_FILE).is_file():
        tokenizer = Tokenizer.load(directory)
    else:  # the published checkpoint ships no tokenizer of ours: it is GPT-2's
        tokenizer = gpt2_tokenizer()
    if len(tokenizer) > config.vocab_size:
        raise CheckpointError(f"tokenizer has {len(tokenizer)} tokens but the model only "
                              f"{config.vocab_size}")
    return model, tokenizer


def load_model(source: str | os.PathLike | None = None, device=None, dtype=None):
    """(BackpackLM, PreTrainedTokenizerFast): the transformers-facing model, e.g. for generate()."""
    from .hf import BackpackLM

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
    state = {f"backpack.{k}": (v.to(dtype) if dtype is not None else v).detach().cpu().contiguous()
             for k, v in model.state_dict().items()}
    config = {"model_type": "backpack", "architectures": ["BackpackLM"],
              **model.config.to_dict(), **(extra_config or {})}
    _atomic_write(directory / WEIGHTS_FILE, lambda p: save_file(state, str(p),
                                                                metadata={"format": "pt"}))
    _atomic_write(directory / "config.json",
                  lambda p: p.write_text(json.dumps(config, indent=2) + "\n"))
    if tokenizer is not None:
        tokenizer.save(directory)
    return directory


def _atomic_write(path: Path, write) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; a model is for everyone to read
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
