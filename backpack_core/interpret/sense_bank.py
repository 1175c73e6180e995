"""The sense bank: every word's sense vectors (vocab, k, d), for reverse lookup ("sense search").

Sense vectors are context-free, so the bank is computed once per model (in chunks, with a
progress bar) and cached on disk as safetensors under `$BACKPACK_CACHE` or
`~/.cache/backpack-workbench/`, keyed by a sha256 of the model's config and of the weights the
senses depend on (the token embedding and the sense network). A query is one matrix-vector
product over the flattened (vocab * k, d) bank:

    scores[(x, l)] = C(x)_l . direction,   direction = sum of E[w] over the target words

which is exactly the logit contribution sense l of word x makes to the targets per unit of
contextualization weight: the (word, sense) pairs that most promote them.

    bank = SenseBank.for_model(model)                 # built once, then loaded from disk
    sense_search(model, tokenizer, " science", top=20, bank=bank).hits
"""

from __future__ import annotations

import hashlib
import os
import secrets
import sys
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from backpack_core.model.fingerprint import cpu_bytes as _cpu_bytes
from backpack_core.model.fingerprint import weights_fingerprint
from backpack_core.model.vocab import WordError, resolve_word, token_text

if TYPE_CHECKING:  # pragma: no cover
    from backpack_core.model.backpack import Backpack
    from backpack_core.model.tokenizer import Tokenizer

BANK_FORMAT = 1
# Token ids whose senses are recomputed from the model on every load of a cached bank, drawn
# afresh each time (all of them for a vocabulary this small): about 66 ms for the shipped model,
# against 0.7 s to build its whole bank (8192 x 16 x 128), measured on the shared 2-core CPU.
SPOT_CHECK_ROWS = 1024
KEY_FILE = ".sense-bank.key"  # the secret of a cache directory's signatures (0600, made once)
# Banks larger than this many numbers are stored in float16 (the published 170M model's bank
# holds 617M numbers: 2.5 GB in float32); smaller ones in float32, exactly.
FLOAT32_LIMIT = 2**28


def cache_dir() -> Path:
    """$BACKPACK_CACHE, else ~/.cache/backpack-workbench."""
    env = os.environ.get("BACKPACK_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "backpack-workbench"


def cache_secret(directory: str | os.PathLike, create: bool = False) -> bytes | None:
    """The secret that signs the banks cached in `directory` (32 random bytes in its KEY_FILE,
    readable by its owner only), made on first use when `create`; None when there is none."""
    path = Path(directory) / KEY_FILE
    if create and not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{KEY_FILE}.{os.getpid()}.{threading.get_ident()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, secrets.token_bytes(32))
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(tmp, path)  # atomic: the first writer's secret wins, never half a one
        except FileExistsError:
            pass
        finally:
            os.unlink(tmp)
    try:
        secret = path.read_bytes()
    except OSError:
        return None
    return secret if len(secret) == 32 else None


# ----------------------------------------------------------------------------------------------
# Keying a bank to the weights it was computed from
# ----------------------------------------------------------------------------------------------

def _sense_parameters(model: Backpack) -> list[tuple[str, torch.Tensor]]:
    """The tensors sense vectors depend on: E, the sense network and carried edits, if any."""
    params = [("wte.weight", model.wte.weight)]
    params += [(f"sense_network.{n}", p) for n, p in model.sense_network.named_parameters()]
    if model.edit_overrides is not None:  # the sense rows an exported edited model carries
        params += [(f"edit_overrides.{n}", b) for n, b in model.edit_overrides.named_buffers()]
    return params


def model_fingerprint(model: Backpack) -> str:
    """sha256 over the config and the bytes of E and the sense network (their dtype included):
    the key of the model's sense bank (`weights_fingerprint`)."""
    return weights_fingerprint(model, _sense_parameters(model), f"sense-bank-{BANK_FORMAT}")


# ----------------------------------------------------------------------------------------------
# The bank
# ----------------------------------------------------------------------------------------------

@dataclass
class SenseHit:
    """Sense `sense` of token `token_id` scores `score` along the query direction."""

    token_id: int
    token: str
    sense: int
    score: float

    def to_dict(self) -> dict[str, Any]:
        return {"token": self.token, "token_id": self.token_id, "sense": self.sense,
                "score": self.score}


_MEMORY: OrderedDict[str, SenseBank] = OrderedDict()  # the last few banks, by key
_MEMORY_SIZE = 2
_MEMORY_LOCK = threading.Lock()  # app sessions may ask from several threads


_POOLS: dict[int, Any] = {}


def _pool(workers: int):
    """A thread pool of `workers` threads, made once per size."""
    from concurrent.futures import ThreadPoolExecutor

    with _MEMORY_LOCK:
        if workers not in _POOLS:
            _POOLS[workers] = ThreadPoolExecutor(workers, thread_name_prefix="sense-bank")
        return _POOLS[workers]


class SenseBank:
    """All sense vectors of a model's vocabulary: `senses` (vocab, k, d) on CPU."""

    def __init__(self, senses: torch.Tensor, key: str = ""):
        if senses.dim() != 3:
            raise ValueError(f"a sense bank is (vocab, k, d), got shape {tuple(senses.shape)}")
        self.senses = senses
        self.key = key
        self._norms: torch.Tensor | None = None
        self._bf16: torch.Tensor | None = None  # the candidate pass's copy of a float16 bank
        self._lock = threading.Lock()

    @property
    def vocab_size(self) -> int:
        return self.senses.shape[0]

    @property
    def num_senses(self) -> int:
        return self.senses.shape[1]

    @property
    def flat(self) -> torch.Tensor:
        """(vocab * k, d); row x * k + l is sense l of token x."""
        return self.senses.reshape(-1, self.senses.shape[-1])

    # -- building, saving, loading --

    @classmethod
    @torch.inference_mode()
    def build(cls, model: Backpack, chunk_size: int = 512, progress: bool = True,
              dtype: torch.dtype | None = None) -> SenseBank:
        """Compute C(x) for every token id, `chunk_size` tokens at a time."""
        from tqdm.auto import tqdm

        cfg = model.config
        if not cfg.is_backpack:
            raise ValueError("a Transformer twin has no senses to bank")
        numel = cfg.vocab_size * cfg.num_senses * cfg.n_embd
        dtype = dtype or (torch.float32 if numel <= FLOAT32_LIMIT else torch.float16)
        senses = torch.empty(cfg.vocab_size, cfg.num_senses, cfg.n_embd, dtype=dtype)
        device = model.wte.weight.device
        with tqdm(total=cfg.vocab_size, desc="sense bank", unit="tok", disable=not progress,
                  file=sys.stderr, leave=False) as bar:
            for start in range(0, cfg.vocab_size, chunk_size):
                ids = torch.arange(start, min(start + chunk_size, cfg.vocab_size), device=device)
                senses[start:start + len(ids)] = model.sense_vectors(ids).to("cpu", dtype)
                bar.update(len(ids))
        return cls(senses, model_fingerprint(model))

    def signature(self, secret: bytes) -> str:
        """HMAC-SHA256, keyed by the cache directory's secret, of the sha256s of the bank's two
        halves (hashed on two threads): stored in the cache file, checked on load. Without the
        secret, altered rows cannot be given a matching signature (a plain checksum can be
        recomputed by anyone who alters the file)."""
        import hmac

        data = _cpu_bytes(self.senses)
        half = len(data) // 2
        digests = _pool(2).map(lambda part: hashlib.sha256(part).digest(), (data[:half], data[half:]))
        return hmac.new(secret, b"".join(digests), "sha256").hexdigest()

    def save(self, path: str | os.PathLike) -> Path:
        """safetensors, written atomically (temporary file, then rename), with the model key and
        a checksum of the contents in the metadata."""
        from safetensors.torch import save_file

        from backpack_core.common.files import atomic_write

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tensors = {"senses": self.senses.contiguous()}
        metadata = {"key": self.key, "format": str(BANK_FORMAT),
                    "hmac_sha256": self.signature(cache_secret(path.parent, create=True))}
        atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))
        return path

    @classmethod
    def load(cls, path: str | os.PathLike, expected_key: str | None = None,
             expected_shape: tuple[int, int, int] | None = None) -> SenseBank:
        """Read a cache file; ValueError (saying why) unless it holds a bank with this key, this
        (vocab, k, d) shape, the checksum written beside it, and finite numbers only."""
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            if expected_key is not None and meta.get("key") != expected_key:
                raise ValueError(f"{path} holds the sense bank of another model")
            if "senses" not in f.keys():
                raise ValueError(f"{path} holds no 'senses' tensor")
            senses = f.get_tensor("senses")
        bank = cls(senses, meta.get("key", ""))
        if expected_shape is not None and tuple(senses.shape) != tuple(expected_shape):
            raise ValueError(f"{path} has shape {tuple(senses.shape)}, the model needs "
                             f"{tuple(expected_shape)} (vocab, k, d)")
        if not senses.is_floating_point():
            raise ValueError(f"{path} holds {senses.dtype} numbers, not floating point")
        if "hmac_sha256" not in meta:
            raise ValueError(f"{path} has no checksum (written by an older version)")
        secret = cache_secret(Path(path).parent)
        if secret is None:
            raise ValueError(f"{path} cannot be checked: its directory has no {KEY_FILE}")
        if meta["hmac_sha256"] != bank.signature(secret):
            raise ValueError(f"{path} does not match its checksum (altered or corrupt)")
        flat = bank.flat
        step = 1 << 20
        if not all(bool(flat[i:i + step].isfinite().all()) for i in range(0, flat.shape[0], step)):
            raise ValueError(f"{path} holds NaN or infinite numbers")
        return bank

    @torch.inference_mode()
    def spot_check(self, model: Backpack, n: int = SPOT_CHECK_ROWS) -> torch.Tensor:
        """ValueError unless the rows of `n` token ids (the first, the last and others drawn
        with a fresh seed on every call, so that nobody can know which; every id when the
        vocabulary has no more than n) match the model's sense vectors: catches permuted,
        foreign or altered rows that came with a matching signature. Returns the ids checked."""
        vocab = self.vocab_size
        if vocab <= n:
            ids = torch.arange(vocab)
        else:
            fresh = torch.Generator().manual_seed(secrets.randbits(63))
            drawn = torch.randperm(vocab - 2, generator=fresh)[:max(n - 2, 0)] + 1
            ids = torch.cat([torch.tensor([0, vocab - 1]), drawn]).sort().values
        device = model.wte.weight.device
        for chunk in ids.split(512):
            want = model.sense_vectors(chunk.to(device)).float().cpu()  # (n, k, d)
            got = self.senses[chunk].float()
            tol = 1e-2 * want.abs().amax().clamp_min(1e-6)  # float16 storage rounds to ~1e-3
            if not ((got - want).abs() <= tol).all():
                bad = int(chunk[((got - want).abs() > tol).flatten(1).any(1)][0])
                raise ValueError(f"its senses of token {bad} do not match the model's")
        return ids

    @staticmethod
    def path_for(key: str, directory: str | os.PathLike | None = None) -> Path:
        """The cache file of the bank with this key, in `directory` (default `cache_dir()`)."""
        base = Path(directory).expanduser() if directory is not None else cache_dir()
        return base / f"sense-bank-{key[:32]}.safetensors"

    @classmethod
    def for_model(cls, model: Backpack, directory: str | os.PathLike | None = None,
                  progress: bool = True, rebuild: bool = False) -> SenseBank:
        """The bank of `model`: from memory, else from the disk cache, else built and cached.

        A cache file that cannot be read, or whose shape, checksum or numbers are wrong, is
        rebuilt (one line on stderr says why); one that cannot be written only costs the rebuild
        next time (a warning on stderr)."""
        key = model_fingerprint(model)
        with _MEMORY_LOCK:
            if not rebuild and key in _MEMORY:
                _MEMORY.move_to_end(key)
                return _MEMORY[key]
        path = cls.path_for(key, directory)
        bank = None
        if not rebuild and path.is_file():
            try:
                cfg = model.config
                loaded = cls.load(path, expected_key=key,
                                  expected_shape=(cfg.vocab_size, cfg.num_senses, cfg.n_embd))
                loaded.spot_check(model)
                bank = loaded
            except Exception as err:  # corrupt, altered or foreign file: rebuild it
                print(f"sense bank: rebuilding the cached bank ({err})", file=sys.stderr)
        if bank is None:
            bank = cls.build(model, progress=progress)
            try:
                bank.save(path)
            except OSError as err:
                print(f"sense bank: could not cache it at {path} ({err})", file=sys.stderr)
        with _MEMORY_LOCK:
            _MEMORY[key] = bank
            while len(_MEMORY) > _MEMORY_SIZE:
                _MEMORY.popitem(last=False)
        return bank

    # -- queries --

    _ROWS = 1 << 14  # rows per chunk of a half-precision pass: 16k x d, never the whole bank
    _NORM_ROWS = 2048  # rows per chunk of the norms: 2048 x d in float32 stays in cache

    def norms(self) -> torch.Tensor:
        """(vocab, k) sense-vector norms (float32), computed once, without a float32 copy of a
        half-precision bank."""
        if self._norms is None:
            flat, step = self.flat, self._NORM_ROWS
            norms = torch.empty(flat.shape[0], dtype=torch.float32)

            def chunk(i: int) -> None:  # upcast then norm: ~7x faster than a half-input norm
                norms[i:i + step] = torch.linalg.vector_norm(flat[i:i + step].float(), dim=-1)

            self._map(chunk, range(0, flat.shape[0], step))
            self._norms = norms.view(self.vocab_size, self.num_senses)
        return self._norms

    @staticmethod
    def _map(fn, starts: range) -> None:
        """fn(i) for every chunk start: on a pool of torch.get_num_threads() threads when there
        are several (torch's half-precision kernels here use one core; torch releases the GIL)."""
        if torch.get_num_threads() > 1 and len(starts) > 1:
            list(_pool(torch.get_num_threads()).map(fn, starts))
        else:
            for i in starts:
                fn(i)

    def _direction(self, direction: torch.Tensor) -> torch.Tensor:
        direction = direction.detach().to("cpu", torch.float32).reshape(-1)
        if direction.shape[0] != self.senses.shape[-1]:
            raise ValueError(f"direction has {direction.shape[0]} numbers; the bank's senses have "
                             f"d = {self.senses.shape[-1]}")
        return direction

    def scores(self, direction: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """direction (d,) -> (vocab, k): C(x)_l . direction (or the cosine, with normalize),
        exactly in float32 (a half-precision bank is upcast chunk by chunk)."""
        direction = self._direction(direction)
        flat, step = self.flat, self._ROWS
        if flat.dtype == torch.float32:
            scores = flat @ direction
        else:
            scores = torch.cat([flat[i:i + step].float() @ direction
                                for i in range(0, flat.shape[0], step)])
        scores = scores.view(self.vocab_size, self.num_senses)
        if normalize:
            scores = scores / (self.norms() * direction.norm()).clamp_min(1e-12)
        return scores

    def candidate_rows(self) -> torch.Tensor:
        """The bank's (vocab * k, d) rows in bfloat16 for the candidate pass: a float16 bank is
        copied once (in cache-sized chunks, on the first query) and the copy kept beside it, a
        bfloat16 bank is its own. torch's bfloat16 matrix-vector product here is ~1.6x faster
        than its float16 one (which runs a slow conversion path); the copy costs as much memory
        as the bank (1.2 GB for the published-size model's)."""
        flat = self.flat
        if flat.dtype == torch.bfloat16:
            return flat
        with self._lock:
            if self._bf16 is None:
                rows, step = torch.empty(flat.shape, dtype=torch.bfloat16), self._NORM_ROWS

                def chunk(i: int) -> None:  # via float32: float16 -> bfloat16 directly is ~5x slower
                    rows[i:i + step] = flat[i:i + step].float()

                self._map(chunk, range(0, flat.shape[0], step))
                self._bf16 = rows
            return self._bf16

    def approximate_scores(self, direction: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """Like `scores`, but for a half-precision bank computed in bfloat16 (`candidate_rows`:
        one matrix-vector product per chunk, chunks spread over torch.get_num_threads() threads,
        no float32 copy), so within ~1e-2 relative: good for choosing candidates, not for
        display. `approximate_error` bounds how far each score can be from `scores`."""
        direction = self._direction(direction)
        if self.flat.dtype == torch.float32:
            return self.scores(direction, normalize)
        flat, step = self.candidate_rows(), self._ROWS
        scale = direction.abs().max().clamp_min(1e-30)  # unit max entry: no overflow
        half = (direction / scale).to(flat.dtype)
        scores = torch.empty(flat.shape[0], dtype=torch.float32)

        def chunk(i: int) -> None:
            scores[i:i + step] = flat[i:i + step] @ half

        self._map(chunk, range(0, flat.shape[0], step))  # 1.8x on 2 cores
        scores = scores.view(self.vocab_size, self.num_senses) * scale
        if normalize:  # the same division as `scores`
            return scores / (self.norms() * direction.norm()).clamp_min(1e-12)
        return scores

    def approximate_error(self, direction: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """(vocab, k) float32: a rigorous bound on |approximate_scores - scores| per row (zeros
        for a float32 bank, whose approximate scores are the exact ones).

        With u the unit roundoff of the candidate dtype (2**-8 for bfloat16), r a stored row
        and v = direction / max|direction| (what the candidate pass multiplies): rounding r and
        v to that dtype costs (2u + u^2) sum|r_i v_i|, the float32 sum of the d exact products
        gamma_d = d 2**-24 / (1 - d 2**-24) of its absolute sum, the rounding of the result u
        of it, and the float32 reference itself may err by gamma_d on each side (any summation
        order); sum|r_i v_i| <= |r| |v| (Cauchy-Schwarz, with the bank's norms). Entries below
        the smallest normal number (flushed to zero by some kernels) add at most
        sqrt(d) |r| tiny (direction), d tiny32 (products) and tiny (result). 1% on top covers
        the float32 arithmetic of the norms and of this bound. It assumes float32 accumulation,
        as torch's CPU kernels do; the tests check it on banks built to defeat it."""
        direction = self._direction(direction)
        if self.flat.dtype == torch.float32:
            return torch.zeros(self.vocab_size, self.num_senses)
        d = direction.shape[0]
        low = torch.finfo(self.candidate_rows().dtype)
        u, tiny = low.eps / 2, low.smallest_normal
        gamma = d * 2.0**-24 / (1 - d * 2.0**-24)
        relative = (2 * u + u * u) + (1 + u) ** 2 * (gamma + u * (1 + gamma)) + 2 * gamma
        scale = direction.abs().max().clamp_min(1e-30)
        unit_norm = float((direction / scale).norm())
        per_norm = relative * unit_norm + d ** 0.5 * tiny * (1 + u)  # times |r|
        absolute = d * torch.finfo(torch.float32).smallest_normal + tiny
        bound = (self.norms() * per_norm + absolute) * scale * 1.01
        if normalize:
            return bound / (self.norms() * direction.norm()).clamp_min(1e-12)
        return bound

    def _exact_rows(self, index: torch.Tensor, direction: torch.Tensor, normalize: bool
                    ) -> torch.Tensor:
        """Exact float32 scores of the flat rows `index` (n,), read `_ROWS` rows at a time."""
        out = torch.empty(index.shape[0], dtype=torch.float32)
        for i in range(0, index.shape[0], self._ROWS):
            rows = self.flat[index[i:i + self._ROWS]].float()
            out[i:i + self._ROWS] = rows @ direction
            if normalize:
                norms = torch.linalg.vector_norm(rows, dim=-1)
                out[i:i + self._ROWS] /= (norms * direction.norm()).clamp_min(1e-12)
        return out

    def query(self, direction: torch.Tensor, top: int = 20, exclude: list[int] | tuple = (),
              vocab_limit: int | None = None, largest: bool = True, normalize: bool = False,
              pool: int | None = None) -> list[tuple[int, int, float]]:
        """The `top` (token_id, sense, score) triples along `direction` (largest first, or
        smallest first with largest=False), skipping `exclude` ids and ids >= vocab_limit.

        Scores are exact float32, and so are the hits: a half-precision bank is searched in two
        passes, bfloat16 (`candidate_rows`) for every row, then an exact float32 re-score of
        every row that could still be in the top: with e_j the bound of `approximate_error`,
        row j is a candidate unless its best possible score a_j + e_j falls below the `top`-th
        largest worst possible score a_i - e_i (then `top` rows surely beat it). The same hits
        as the exact pass over the whole bank (rows whose float32 scores tie may swap); where
        scores are closer than bfloat16 can tell apart the candidates grow, up to the whole
        bank. `pool`: re-score at least the `pool` best approximate rows too (tests)."""
        direction = self._direction(direction)
        exact = self.flat.dtype == torch.float32
        scores = self.scores(direction, normalize) if exact else \
            self.approximate_scores(direction, normalize)
        if vocab_limit is not None and vocab_limit < self.vocab_size:
            scores = scores[:vocab_limit]
        fill = float("-inf") if largest else float("inf")
        if exclude:
            scores = scores.clone() if exact else scores
            scores[[i for i in exclude if i < scores.shape[0]]] = fill
        flat = scores.reshape(-1)
        k = self.num_senses
        if not exact:  # re-score exactly, in float32, every row that could be in the top
            error = self.approximate_error(direction, normalize)[:scores.shape[0]].reshape(-1)
            sign = 1.0 if largest else -1.0
            best, worst = flat + sign * error, flat - sign * error  # fill stays fill
            n = min(top, flat.shape[0])
            threshold = worst.topk(n, largest=largest).values[-1] if n else fill
            surely_out = best < threshold if largest else best > threshold
            keep = ~surely_out & (flat != fill)
            if pool:
                keep[flat.topk(min(pool, flat.shape[0]), largest=largest).indices] = True
                keep &= flat != fill
            index = keep.nonzero().squeeze(1)
            values, order = self._exact_rows(index, direction, normalize).topk(
                min(top, index.shape[0]), largest=largest)
            return [(i // k, i % k, v) for v, i in zip(values.tolist(), index[order].tolist())]
        n = min(top, flat.shape[0])
        values, index = flat.topk(n, largest=largest)
        return [(i // k, i % k, v) for v, i in zip(values.tolist(), index.tolist())
                if v != fill]


# ----------------------------------------------------------------------------------------------
# Sense search
# ----------------------------------------------------------------------------------------------

@dataclass
class SenseSearch:
    targets: list[str]  # how the targets read (words), or ["<direction>"]
    target_ids: list[int]
    hits: list[SenseHit]
    largest: bool = True
    normalize: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"targets": self.targets, "target_ids": self.target_ids,
                "order": "most promoting" if self.largest else "most suppressing",
                "normalize": self.normalize, "hits": [h.to_dict() for h in self.hits]}


def target_direction(model: Backpack, tokenizer: Tokenizer | None, targets: Any
                     ) -> tuple[torch.Tensor, list[int], list[str]]:
    """targets: a word, a token id, a list of them (summed output embeddings), or a raw
    direction tensor / list of d floats -> (direction (d,), target ids, labels)."""
    d = model.config.n_embd
    if isinstance(targets, torch.Tensor) and targets.is_floating_point():
        if targets.numel() != d:
            raise ValueError(f"a direction needs d = {d} numbers, got {targets.numel()}")
        return targets.detach().reshape(-1).float().cpu(), [], ["<direction>"]
    if isinstance(targets, (str, int)) or (isinstance(targets, torch.Tensor) and targets.dim() == 0):
        targets = [targets]
    targets = list(targets)
    if not targets:
        raise ValueError("no target words given")
    if all(isinstance(t, float) for t in targets):
        return target_direction(model, tokenizer, torch.tensor(targets))
    ids, labels = [], []
    for word in targets:
        resolved = resolve_word(tokenizer, word, model.config.vocab_size)
        if not resolved.is_single:
            raise WordError(f"target {resolved.describe()}; sense search needs one token per "
                            "target: give a piece, a token id, or several targets")
        ids.append(resolved.token_ids[0])
        labels.append(resolved.tokens[0])
    with torch.inference_mode():
        direction = model.wte.weight[torch.tensor(ids, device=model.wte.weight.device)].float().sum(0)
    return direction.cpu(), ids, labels


def sense_search(model: Backpack, tokenizer: Tokenizer | None, targets: Any, top: int = 20,
                 exclude_targets: bool = True, bank: SenseBank | None = None,
                 largest: bool = True, normalize: bool = False, progress: bool = True
                 ) -> SenseSearch:
    """The (word, sense) pairs across the vocabulary whose sense most promotes `targets`
    (a word, several words, or a direction): ranked by C(x)_l . sum_w E[w].

    exclude_targets drops the target words' own senses; only the tokenizer's real ids are
    ranked. `bank` defaults to `SenseBank.for_model(model)` (cached on disk)."""
    direction, ids, labels = target_direction(model, tokenizer, targets)
    bank = bank if bank is not None else SenseBank.for_model(model, progress=progress)
    limit = min(len(tokenizer), bank.vocab_size) if tokenizer is not None else None
    triples = bank.query(direction, top=top, exclude=ids if exclude_targets else (),
                         vocab_limit=limit, largest=largest, normalize=normalize)
    hits = [SenseHit(t, token_text(tokenizer, t) if tokenizer is not None else f"<{t}>", s, v)
            for t, s, v in triples]
    return SenseSearch(labels, ids, hits, largest, normalize)
