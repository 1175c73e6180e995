"""Wiring shared by the dashboard's pages: the model, per-session state and the URL.

- The model is loaded once per process and shared by every session: `st.cache_resource` keyed by
  (source, device, dtype). It is never modified (edits are applied functionally).
- A text's `ContextSession` (one forward pass: contextualization, senses, logits) is cached the
  same way, per (model, text): read-only, so sessions share it, and an edit only re-runs the
  fast path (`views.steer_view`).
- What belongs to one user lives in `st.session_state`: the chosen model, the text, the edit set,
  generations. It never leaks into another session.
- The view's state goes into the URL (`st.query_params`): the text, the edit set (JSON,
  base64url) and the page's selections, so a link reproduces the view.

Environment: BACKPACK_MODEL (the default model: a directory or hub id; unset = the shipped model
data/backpack-mini), BACKPACK_DEVICE (default auto: cuda if present, else cpu), BACKPACK_DTYPE
(default float32: exact attributions), BACKPACK_THREADS (torch CPU threads of the server process;
on a shared, busy CPU 1 is several times faster than oversubscribed cores).
"""

from __future__ import annotations

import base64
import binascii
import functools
import json
import logging
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import streamlit as st

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:  # `streamlit run app/Home.py` from anywhere
    sys.path.insert(0, str(REPO_ROOT))

import views  # noqa: E402  (app/views.py: the view model)

from backpack_core.common import limits, progress  # noqa: E402
from backpack_core.edit.specs import EditError  # noqa: E402
from backpack_core.interpret.session import ContextSession  # noqa: E402
from backpack_core.model import access  # noqa: E402
from backpack_core.model.loading import DEFAULT_MODEL_DIR, HubId, load_backpack  # noqa: E402

MODEL_ENV, DEVICE_ENV, DTYPE_ENV = "BACKPACK_MODEL", "BACKPACK_DEVICE", "BACKPACK_DTYPE"
THREADS_ENV = "BACKPACK_THREADS"
DEFAULT_TEXT = ("The MacBook is made by Apple. He moved to the United States. She went to the bank "
                "to deposit money. The bank by the river has money.")
EMPTY_EDITS: dict[str, Any] = {"version": 1, "edits": []}
MODELS_PAGE = "app_pages/models.py"
SHIPPED = "shipped"  # the shipped model's name in a URL
DTYPES = ("float32", "bfloat16", "float16")
log = logging.getLogger("backpack_workbench.app")


def _set_threads() -> None:
    try:
        threads = progress.threads_override()
    except ValueError as err:
        print(f"{err}: ignored", file=sys.stderr)
        return
    if threads is not None:
        import torch

        torch.set_num_threads(threads)


_set_threads()  # once per process: this module is imported once


def request_threads(work_tokens: int = 0):
    """A block running on the threads a request of `work_tokens` tokens should use
    (`progress.choose_threads`: 1 for small work or on a busy machine, BACKPACK_THREADS when set).
    Every page runs inside request_threads(0); the atlas and the evaluation ask for more."""
    try:
        n = progress.choose_threads(work_tokens)
    except ValueError:  # a malformed BACKPACK_THREADS, reported once at start: torch's default
        import torch

        n = torch.get_num_threads()
    return progress.torch_threads(n)


def run_with_stop(name: str, total_label: str, work: Callable[[Callable[[int, int], None]], Any],
                  work_tokens: int) -> Any:
    """Run long work with a progress bar that says the time left and a Stop button. A click on
    Stop reruns the page, which interrupts the work at its next progress report; the next run
    then says that it was stopped (`stopped_message`). work(progress) -> result."""
    import time

    st.session_state[f"_running:{name}"] = {"done": 0, "total": None}
    stop = st.empty()  # shown while the work runs, removed when it ends
    stop.button("Stop", key=f"{name}:stop", icon=":material/stop_circle:",
                help="stop this run (at the end of the current batch)")
    bar = st.progress(0.0, text=f"{total_label}: starting…")
    start = time.perf_counter()

    def report(done: int, total: int) -> None:
        st.session_state[f"_running:{name}"] = {"done": done, "total": total}
        left = progress.time_left(done, total, time.perf_counter() - start)
        bar.progress(min(1.0, done / total),
                     text=f"{total_label}: batch {done} of {total}{'; ' + left if left else ''}")

    try:
        with request_threads(work_tokens):
            result = work(report)
    finally:
        bar.empty()
        stop.empty()
    st.session_state.pop(f"_running:{name}", None)
    return result


def stopped_message(name: str) -> str | None:
    """'Stopped after 3 of 40 batches.' once after a run of `name` was interrupted; else None."""
    run = st.session_state.pop(f"_running:{name}", None)
    if run is None:
        return None
    if run["total"]:
        return f"Stopped after {run['done']} of {run['total']} batches: nothing was kept."
    return "Stopped before the first batch: nothing was kept."


# ----------------------------------------------------------------------------------------------
# The model: shared, loaded once per process
# ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ModelChoice:
    source: str | None  # None: the shipped model
    device: str = "auto"
    dtype: str = "float32"

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.source or "", self.device, self.dtype)

    @property
    def name(self) -> str:
        """The model as a visitor sees it: relative to its allowed root, never a server path."""
        return access.display_source(self.source) if self.source \
            else f"shipped ({DEFAULT_MODEL_DIR.name})"

    @property
    def label(self) -> str:
        return f"{self.name} · {self.device} · {self.dtype}"

    def url_params(self) -> dict[str, str]:
        """The choice in the URL (`model`, `device`, `dtype`): only what differs from the default."""
        default = default_choice()
        out = {}
        if self.source != default.source:
            out["model"] = self.source or SHIPPED
        if self.device != default.device:
            out["device"] = self.device
        if self.dtype != default.dtype:
            out["dtype"] = self.dtype
        return out


def default_choice() -> ModelChoice:
    return ModelChoice(os.environ.get(MODEL_ENV) or None, os.environ.get(DEVICE_ENV) or "auto",
                       os.environ.get(DTYPE_ENV) or "float32")


def model_choice() -> ModelChoice:
    """This session's model (the Models page changes it), else the environment's default."""
    choice = st.session_state.get("model_choice")
    return choice if isinstance(choice, ModelChoice) else default_choice()


@st.cache_resource(show_spinner="Loading the model…", max_entries=4)
def _load(source: str, device: str, dtype: str):
    """(Backpack, Tokenizer), once per process and key. Errors are not cached."""
    return load_backpack(source or None, device=device, dtype=dtype)


def choose_model(choice: ModelChoice) -> None:
    """Make `choice` this session's model (it must have loaded: call load_model first)."""
    st.session_state["model_choice"] = choice


def _local_dir(source: str) -> bool:
    """A local directory (never a hub id, even where a path of that name exists)."""
    if isinstance(source, HubId):
        return False
    try:
        return Path(source).expanduser().is_dir()
    except (OSError, ValueError):  # a name too long for the system
        return False


def restore_model(params: dict[str, str]) -> None:
    """Take the model, device and dtype from a shared link, once per session. Only the shipped
    model, the default one and local directories load from a link (a hub id would download:
    choose it on the Models page); a choice that does not load is refused with a message."""
    if st.session_state.get("_url_read:model"):
        return
    st.session_state["_url_read:model"] = True
    if not any(k in params for k in ("model", "device", "dtype")):
        return
    from backpack_core.model.loading import available_devices

    default = default_choice()
    source = params.get("model", default.source or SHIPPED)
    source = None if source == SHIPPED else source
    device, dtype = params.get("device", default.device), params.get("dtype", default.dtype)
    problem = None
    if source not in (None, default.source):
        try:  # only what the operator allows (BACKPACK_MODEL_ROOTS), said without probing the path
            source = access.allowed_source(source)
        except access.AccessError as err:
            problem = " ".join(str(err).split())
    if problem:
        pass
    elif source not in (None, default.source) and not _local_dir(source):
        problem = f"{source!r} is not a local model directory (a hub id loads from the Models page)"
    elif device not in available_devices():
        problem = f"device {device!r} is not available here ({', '.join(available_devices())})"
    elif dtype not in DTYPES:
        problem = f"dtype {dtype!r} is not one of {', '.join(DTYPES)}"
    else:
        choice = ModelChoice(source, device, dtype)
        try:
            load_model(choice)
        except (ValueError, OSError) as err:
            problem = " ".join(str(err).split())
        else:
            choose_model(choice)
    if problem:
        st.session_state["_url_model_problem"] = f"The model in the link was not loaded: {problem}."


def load_model(choice: ModelChoice):
    """(model, tokenizer) for a choice; CheckpointError / ValueError / OSError if it fails."""
    model, tokenizer = _load(*choice.key)
    if not model.config.is_backpack:
        raise ValueError(f"{choice.source or 'the model'} is a Transformer twin: it has no senses "
                         "to inspect or edit; choose a Backpack")
    return model, tokenizer


def require_model():
    """(model, tokenizer, choice), or a clear message in the page and a stop."""
    choice = model_choice()
    try:
        model, tokenizer = load_model(choice)
    except (ValueError, OSError) as err:
        st.error(f"Could not load the model {views.plain(choice.label)}: {views.plain(err)}")
        st.page_link(MODELS_PAGE, label="Choose a model on the Models page", icon=":material/settings:")
        st.stop()
    return model, tokenizer, choice


@st.cache_resource(show_spinner="Reading the text…", max_entries=16)
def _session(key: tuple[str, str, str], text: str | tuple[int, ...], _model, _tokenizer
             ) -> ContextSession:
    return ContextSession(_model, _tokenizer, text)


def context_session(text: str) -> ContextSession:
    """The cached ContextSession of `text` under this session's model (ValueError: empty text,
    longer than the context)."""
    model, tokenizer, choice = require_model()
    if not text.strip():
        raise ValueError("the text is empty: enter a text to read")
    return _session(choice.key, text, model, tokenizer)


def text_session(page: str, text: str) -> ContextSession:
    """The cached ContextSession of `text`. A text longer than the model's context is not
    refused: the page offers its last tokens (the default) or one window of a sliding window
    (`backpack_core.model.windows`), and the session reads those tokens. ValueError: empty."""
    from backpack_core.model.windows import text_window, window_starts

    model, tokenizer, choice = require_model()
    if not text.strip():
        raise ValueError("the text is empty: enter a text to read")
    ids = tokenizer.encode(text)
    n_ctx = model.config.n_positions
    if len(ids) <= n_ctx:
        return _session(choice.key, text, model, tokenizer)
    cols = st.columns([3, 2])
    mode = cols[0].radio(
        f"The text is {len(ids):,} tokens long; the model reads {n_ctx:,} at once. Read",
        ["last", "window"], horizontal=True, key=f"{page}:long-text",
        format_func={"last": f"its last {n_ctx:,} tokens", "window": "one window of a sliding window"}.get)
    start = 0
    if mode == "window":
        starts = window_starts(len(ids), n_ctx)
        start = cols[1].select_slider("Window (tokens; a new one every half context)", starts,
                                      key=f"{page}:window",
                                      format_func=lambda s: f"{s:,}–{s + n_ctx - 1:,}")
    window = text_window(ids, n_ctx, mode, start)
    st.caption(f"Reading {window.describe()}; the positions below count from the first token read.")
    return _session(choice.key, tuple(window.token_ids), model, tokenizer)


@st.cache_resource(show_spinner="Building the sense bank (every word's senses; once per model)…",
                   max_entries=2)
def _sense_bank(key: tuple[str, str, str], _model):
    from backpack_core.interpret.sense_bank import SenseBank

    return SenseBank.for_model(_model, progress=False)


def sense_bank():
    model, _, choice = require_model()
    return _sense_bank(choice.key, model)


@st.cache_resource(show_spinner="Loading the Transformer twin…", max_entries=2)
def _twin(source: str, device: str, dtype: str):
    from backpack_core.interpret.twin import load_twin

    return load_twin(source, device=device, dtype=dtype)


def load_twin(source: str):
    """(twin, tokenizer) from a directory the operator allows (BACKPACK_MODEL_ROOTS), on this
    session's device and dtype; ValueError / OSError if it is refused or fails to load."""
    choice = model_choice()
    return _twin(access.allowed_source(source), choice.device, choice.dtype)


# ----------------------------------------------------------------------------------------------
# Per-session state
# ----------------------------------------------------------------------------------------------

def text_area(page: str, label: str = "Text", height: int = 110, help: str | None = None) -> str:
    """The session's text, shared by the pages; each page has its own widget (key `page:text`)."""
    key = f"{page}:text"
    if key not in st.session_state:
        st.session_state[key] = st.session_state.get("text", DEFAULT_TEXT)
    value = st.text_area(label, key=key, height=height, help=help, max_chars=limits.MAX_TEXT_CHARS)
    st.session_state["text"] = value
    return value


def text_changed(page: str, text: str) -> bool:
    """True once each time this page sees a text other than the one it last read (then the
    position and any message about the old text are reset)."""
    key = f"_text_seen:{page}"
    seen = st.session_state.get(key)
    st.session_state[key] = text
    return seen is not None and seen != text


def persist(key: str, default: Any = None, shared: str | None = None) -> None:
    """Make a widget's value survive page changes (call before drawing the widget, and give the
    widget no default of its own). Streamlit forgets a widget's value when a run does not draw
    it; a copy kept under `_kept:<shared or key>` after every run restores it. Pages that give
    the same `shared` name share the value (the position of the Context and Steer pages)."""
    shadow = f"_kept:{shared or key}"
    if key not in st.session_state and (shadow in st.session_state or default is not None):
        st.session_state[key] = st.session_state.get(shadow, default)
    st.session_state.setdefault("_persisted", {})[key] = shadow


def _keep_persisted() -> None:
    """After a run: copy the persisted widgets' values to their shadows."""
    for key, shadow in st.session_state.get("_persisted", {}).items():
        if key in st.session_state:
            st.session_state[shadow] = st.session_state[key]


def edit_set() -> dict[str, Any]:
    """This session's edit set (a JSON-able dict, schema version 1)."""
    if "edit_set" not in st.session_state:
        st.session_state["edit_set"] = json.loads(json.dumps(EMPTY_EDITS))
    return st.session_state["edit_set"]


def set_edit_set(data: dict[str, Any]) -> None:
    st.session_state["edit_set"] = data


def memo(name: str, session: ContextSession, key: Any, compute: Callable[[], Any]) -> Any:
    """compute(), or its value from this browser session's last rerun with the same text
    session and `key` (JSON-able: edits, position, ...). One value per name: a rerun that
    changes neither (a click elsewhere, a generation) reuses the derived view instead of
    recomputing it (issue 14: the Steer page's per-rerun cost)."""
    store = st.session_state.setdefault("_memo", {})
    stamp = json.dumps(key, sort_keys=True, ensure_ascii=False, default=str)
    hit = store.get(name)
    if hit is not None and hit[0] is session and hit[1] == stamp:
        return hit[2]
    value = compute()
    store[name] = (session, stamp, value)  # holds the session: its id is never reused meanwhile
    return value


# ----------------------------------------------------------------------------------------------
# URL state
# ----------------------------------------------------------------------------------------------

def encode_edits(data: dict[str, Any]) -> str:
    """Edit set -> base64url of its compact JSON (no padding)."""
    raw = json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def decode_edits(value: str) -> dict[str, Any]:
    """base64url JSON -> edit-set dict (EditError if it is not one)."""
    try:
        raw = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
    except (binascii.Error, ValueError):
        raise EditError("the edit set in the link is not valid base64url") from None
    return views.read_edit_set(raw)


def read_url_once(page: str) -> dict[str, str]:
    """The query parameters, the first time this page runs in this session (a shared link);
    {} afterwards, so that the widgets own the state from then on."""
    flag = f"_url_read:{page}"
    if st.session_state.get(flag):
        return {}
    st.session_state[flag] = True
    return link_params()


def link_params() -> dict[str, str]:
    """The query parameters, or {} with a warning in the sidebar when the link is longer than
    the server's limit (MAX_LINK_CHARS): an oversized link is refused whole, not read."""
    params = {k: st.query_params[k] for k in st.query_params}
    try:
        limits.check_link(urlencode(params))
    except limits.LimitError as err:
        st.session_state["_url_problem"] = f"The link was not used: {err}."
        return {}
    return params


def restore_text(page: str, params: dict[str, str]) -> None:
    """Take the text from a shared link."""
    if params.get("text"):
        st.session_state["text"] = params["text"]
        st.session_state.pop(f"{page}:text", None)


def restore_edits(params: dict[str, str], model, tokenizer) -> str | None:
    """Take the edit set from a shared link, checked against the model as an uploaded file is;
    returns the message for one that is refused (the session's edits are then left as they are)."""
    if not params.get("edits"):
        return None
    try:
        data = decode_edits(params["edits"])
        set_edit_set(views.read_edit_set(data, model, tokenizer))
    except EditError as err:
        return f"The edit set in the link was not loaded: {' '.join(str(err).split())}"
    return None


def write_url(**params: Any) -> None:
    """Make the URL reproduce the view: the session's model (when not the default) and the
    page's non-empty values, replacing the old ones."""
    values = {**model_choice().url_params(),
              **{k: str(v) for k, v in params.items() if v is not None and v != ""}}
    if dict(st.query_params) != values:
        st.query_params.from_dict(values)


def int_param(params: dict[str, str], name: str, default: int | None = None) -> int | None:
    try:
        return int(params[name])
    except (KeyError, ValueError):
        return default


# ----------------------------------------------------------------------------------------------
# Layout shared by the pages
# ----------------------------------------------------------------------------------------------

def sidebar() -> None:
    """Which model this session uses (device and dtype as loaded) and how many edits are active."""
    choice = model_choice()
    label = choice.label
    try:
        model, _ = load_model(choice)  # cached: the page loads it anyway
    except (ValueError, OSError):
        pass
    else:
        p = next(model.parameters())
        label = f"{choice.name} · {p.device.type} · {str(p.dtype).removeprefix('torch.')}"
    with st.sidebar:
        st.caption(f"**Model:** {views.plain(label)}")
        for problem in ("_url_problem", "_url_model_problem"):
            if st.session_state.get(problem):
                st.warning(views.plain(st.session_state[problem]))
        n = len(st.session_state.get("edit_set", EMPTY_EDITS).get("edits", []))
        if n:
            st.caption(f"**Edits:** {n} active (Steer page)")


def show_error(err: BaseException, what: str = "") -> None:
    """A known input error as one message (no traceback), shown as plain text: it may quote
    what the user typed."""
    message = views.plain(err)
    st.error(f"{views.plain(what)}: {message}" if what else message)


# ----------------------------------------------------------------------------------------------
# The error boundary: a one-line message in the page, the details in the server's log
# ----------------------------------------------------------------------------------------------

def failure_message(err: BaseException, where: str) -> str:
    """Log an unexpected error with its traceback (server side); the one line for the page."""
    log.error("unexpected error in %s", where, exc_info=err)
    first = (str(err).strip().splitlines() or [""])[0][:200]
    return (f"Something went wrong ({type(err).__name__}{': ' + first if first else ''}). The "
            "details are in the server's log; change the input, or reload the page.")


def run_page(navigation) -> None:
    """Run the chosen page inside the error boundary (st.stop and st.rerun pass through: they
    are not Exceptions). An error raised by a widget callback earlier in this run is shown too."""
    failed = st.session_state.pop("_callback_failure", None)
    if failed:
        st.error(views.plain(failed), icon=":material/error:")
    try:
        with request_threads(0):  # one thread unless BACKPACK_THREADS: small work, busy server
            navigation.run()
    except Exception as err:  # noqa: BLE001 - the boundary: anything a page did not handle
        message = failure_message(err, f"page {navigation.url_path or 'home'}")
        st.error(views.plain(message), icon=":material/error:")
    finally:
        _keep_persisted()


def guarded(callback):
    """A widget callback inside the error boundary: Streamlit runs callbacks before the page, so
    an error there would otherwise print a traceback in the page."""
    @functools.wraps(callback)
    def wrapper(*args, **kwargs):
        try:
            return callback(*args, **kwargs)
        except Exception as err:  # noqa: BLE001
            st.session_state["_callback_failure"] = failure_message(err, callback.__name__)
    return wrapper
