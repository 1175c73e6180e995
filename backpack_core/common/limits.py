"""Bounds on the work one request may ask for, in one place: the command-line tools, the app and
the core all refuse past them with a message naming the limit (`LimitError`).

    MAX_WORD_CHARS        a word looked up (senses, edits, ?word= links)
    MAX_TEXT_CHARS        a text read by a forward pass (before tokenizing; the model reads at
                          most n_positions tokens of it anyway)
    MAX_EDITS             edits in one edit set
    MAX_EDIT_SET_BYTES    an edit set as JSON: uploads, the JSON box, files
    MAX_LINK_CHARS        a shared link's query string (the app's view in the URL)
    MAX_CORPUS_CHARS      a corpus tokenized at once (sense atlas, evaluating edits): tokenizing
                          takes about 160 bytes of memory per character; a file's --max-tokens
                          prefix is read and tokenized on its own
    MAX_ATLAS_TOP_N       top contexts kept per (word, sense) in a sense atlas: its tables take
                          24 bytes x vocab x senses x N
    MAX_BATCH_WINDOWS     windows read in one forward pass by the corpus commands (--batch-size):
                          each holds its (senses, seq, seq) weights and (seq, vocab) logits
    MAX_JSON_DEPTH        nesting of any JSON read (data files, edit sets, prompts lines,
                          config.json): deeper input is refused, never a RecursionError
    MAX_DATA_FILE_BYTES   a JSON data file (careers, topics, candidate edits, config.json, a run
                          config), read at most this far (a device such as /dev/zero has no size)
    MAX_EDIT_NUMBER       the magnitude of any number in an edit (factor, value, vector entry,
                          weight): past about 1e38 float32 overflows to inf and the results
                          are NaN; bounded as the sweep strengths are (1e6)
    MAX_TOPIC_SAMPLES     generations of one topic-control run (prompts x samples per prompt)
    MAX_TOPIC_SENSES      (word, sense) pairs topic control turns up: their candidates are
                          scored against the whole vocabulary, 2 x 20 x N x vocab floats
    MAX_PATCH_TOKENS      a prompt pair patched position by position (analyses.patch, the
                          Context page): (layers + 1) x tokens partial contextualizer passes
    MAX_REQUEST_TOKENS    corpus tokens one dashboard request reads (a sense atlas, an edit
                          evaluation): 200,000 tokens took 722 s on a busy 2-core CPU; 50,000
                          is a few minutes there (the command-line tools are not bound by it)
    model size            a config's parameters must fit the memory available (checked before
                          anything is allocated): `check_model_fits`

An operator may change the numbers with environment variables of the same name prefixed
BACKPACK_ (e.g. BACKPACK_MAX_EDITS=5000).
"""

from __future__ import annotations

import os


class LimitError(ValueError):
    """A request is larger than a limit; the message names the limit and the size asked for."""


def _limit(name: str, default: int) -> int:
    value = os.environ.get(f"BACKPACK_{name}")
    if value is None:
        return default
    try:
        number = int(value)
    except ValueError:
        raise LimitError(f"BACKPACK_{name}={value!r} must be a positive integer") from None
    if number < 1:
        raise LimitError(f"BACKPACK_{name}={value!r} must be a positive integer")
    return number


MAX_WORD_CHARS = _limit("MAX_WORD_CHARS", 200)
MAX_TEXT_CHARS = _limit("MAX_TEXT_CHARS", 200_000)
MAX_EDITS = _limit("MAX_EDITS", 1_000)
MAX_EDIT_SET_BYTES = _limit("MAX_EDIT_SET_BYTES", 1_000_000)
MAX_LINK_CHARS = _limit("MAX_LINK_CHARS", 16_000)
MAX_CORPUS_CHARS = _limit("MAX_CORPUS_CHARS", 20_000_000)
MAX_ATLAS_TOP_N = _limit("MAX_ATLAS_TOP_N", 100)
MAX_BATCH_WINDOWS = _limit("MAX_BATCH_WINDOWS", 64)
MAX_JSON_DEPTH = _limit("MAX_JSON_DEPTH", 100)
MAX_DATA_FILE_BYTES = _limit("MAX_DATA_FILE_BYTES", 10_000_000)
MAX_EDIT_NUMBER = _limit("MAX_EDIT_NUMBER", 1_000_000)
MAX_TOPIC_SAMPLES = _limit("MAX_TOPIC_SAMPLES", 1_000)
MAX_TOPIC_SENSES = _limit("MAX_TOPIC_SENSES", 1_000)
MAX_PATCH_TOKENS = _limit("MAX_PATCH_TOKENS", 128)
MAX_REQUEST_TOKENS = _limit("MAX_REQUEST_TOKENS", 50_000)


def check_size(size: int, limit: int, what: str, unit: str, setting: str,
               error: type[Exception] = LimitError) -> None:
    """Refuse `size` (of `what`, counted in `unit`) above `limit` (environment: `setting`)."""
    if size > limit:
        raise error(f"{what} is too long: {size:,} {unit}; the limit is {limit:,} {unit} "
                    f"(BACKPACK_{setting})")


def check_word(word: str, error: type[Exception] = LimitError) -> None:
    """The word's length as typed: the one space that marks the start of a word (" science",
    added by --word) is not counted."""
    check_size(len(word) - word.startswith(" "), MAX_WORD_CHARS, "the word", "characters",
               "MAX_WORD_CHARS", error)


def check_text(text: str, what: str = "the text", error: type[Exception] = LimitError) -> None:
    check_size(len(text), MAX_TEXT_CHARS, what, "characters", "MAX_TEXT_CHARS", error)


def check_edit_count(n: int, error: type[Exception] = LimitError) -> None:
    if n > MAX_EDITS:
        raise error(f"the edit set has {n:,} edits; the limit is {MAX_EDITS:,} edits per set "
                    "(BACKPACK_MAX_EDITS)")


def check_edit_set_bytes(n: int, error: type[Exception] = LimitError) -> None:
    check_size(n, MAX_EDIT_SET_BYTES, "the edit set", "bytes", "MAX_EDIT_SET_BYTES", error)


def check_link(query: str, error: type[Exception] = LimitError) -> None:
    check_size(len(query), MAX_LINK_CHARS, "the link", "characters", "MAX_LINK_CHARS", error)


def check_corpus_chars(n: int, what: str = "the corpus", error: type[Exception] = LimitError) -> None:
    """A text of n characters about to be tokenized as one corpus."""
    if n > MAX_CORPUS_CHARS:
        raise error(f"{what} is too long: {n:,} characters; the limit is {MAX_CORPUS_CHARS:,} "
                    "characters (BACKPACK_MAX_CORPUS_CHARS); read a part with --max-tokens")


def check_atlas_top_n(n: int, error: type[Exception] = LimitError) -> None:
    if n > MAX_ATLAS_TOP_N:
        raise error(f"{n:,} top contexts per (word, sense) is more than the limit of "
                    f"{MAX_ATLAS_TOP_N:,} (BACKPACK_MAX_ATLAS_TOP_N)")


def check_edit_number(number: float, name: str, error: type[Exception] = LimitError) -> None:
    """A (finite) number of an edit, at most MAX_EDIT_NUMBER in magnitude."""
    if abs(number) > MAX_EDIT_NUMBER:
        raise error(f"'{name}' is {number:g}: numbers in an edit must be between {-MAX_EDIT_NUMBER:,} "
                    f"and {MAX_EDIT_NUMBER:,} (BACKPACK_MAX_EDIT_NUMBER; past about 1e38 the model's "
                    "numbers overflow and every result is NaN)")


def check_topic_request(samples: int, top_senses: int, error: type[Exception] = LimitError) -> None:
    """A topic-control run of `samples` generations turning up `top_senses` (word, sense) pairs."""
    if samples > MAX_TOPIC_SAMPLES:
        raise error(f"{samples:,} samples (prompts x --samples) is more than the limit of "
                    f"{MAX_TOPIC_SAMPLES:,} (BACKPACK_MAX_TOPIC_SAMPLES)")
    if top_senses > MAX_TOPIC_SENSES:
        raise error(f"{top_senses:,} topic senses is more than the limit of {MAX_TOPIC_SENSES:,} "
                    "(BACKPACK_MAX_TOPIC_SENSES)")


def check_patch_tokens(n: int, error: type[Exception] = LimitError) -> None:
    check_size(n, MAX_PATCH_TOKENS, "the prompt to patch", "tokens", "MAX_PATCH_TOKENS", error)


def check_batch_windows(n: int, error: type[Exception] = LimitError) -> None:
    if n > MAX_BATCH_WINDOWS:
        raise error(f"a batch of {n:,} windows is more than the limit of {MAX_BATCH_WINDOWS:,} "
                    "windows per forward pass (BACKPACK_MAX_BATCH_WINDOWS)")


# ----------------------------------------------------------------------------------------------
# Model size against memory
# ----------------------------------------------------------------------------------------------

def available_memory(device=None) -> int:
    """Bytes a new model may take on `device`: free GPU memory for cuda, else the RAM the OS
    reports available (MemAvailable), else the physical RAM."""
    if device is not None and getattr(device, "type", str(device).split(":")[0]) == "cuda":
        import torch

        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 2**63 - 1


def _gib(n: float) -> str:
    return f"{n / 2**30:,.1f} GiB"


def check_model_fits(n_parameters: int, bytes_per_parameter: int, device=None,
                     what: str = "this model") -> None:
    """Refuse a model whose parameters (times bytes_per_parameter: 4 to hold fp32 weights, 16 to
    train with AdamW) exceed the available memory, before anything is allocated."""
    needed = n_parameters * bytes_per_parameter
    free = available_memory(device)
    if needed > free:
        raise LimitError(f"{what} has {n_parameters:,} parameters: about {_gib(needed)} at "
                         f"{bytes_per_parameter} bytes each, more than the {_gib(free)} of memory "
                         f"available{' on ' + str(device) if device is not None else ''} (the limit); "
                         "check n_layer, n_embd, vocab_size and n_positions")
