"""What a server (the app) may open on behalf of its visitors: an allow-list of model roots.

A visitor of the dashboard may pick a model directory, a run's metrics file or a hub id; the
server must not become a way to read its own files. The operator sets:

    BACKPACK_MODEL_ROOTS   directories (os.pathsep-separated) under which models and runs may be
                           opened. Default: the shipped model's directory, ./runs under the
                           server's working directory, and the directory of BACKPACK_MODEL.
    BACKPACK_ALLOW_HUB     hub ids a visitor may load: unset or "0" = none (the default), "1" =
                           any, or a comma-separated list of ids (e.g. stanfordnlp/backpack-gpt2).
                           BACKPACK_MODEL, set by the operator, is always allowed.
    BACKPACK_SERVER_EXPORT "0" turns off exports of edited models to the server's disk (a full
                           model directory per export, written under the roots above); unset or
                           "1" = allowed (a researcher's own dashboard). Zip downloads, made in a
                           temporary directory and removed, stay on.

Paths are resolved (symlinks and `..` followed) before the check, and a refused path gets the
same message whether or not it exists, as does a name no file can have (a NUL byte, a component
longer than the system allows): nothing about the server's files is revealed. A hub id the
operator allows is accepted as one (`loading.HubId`: downloaded, never read as a local path of
that name) whether or not such a path exists on the server.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from backpack_core.model.loading import DEFAULT_MODEL_DIR, REPO_ROOT, HubId

ROOTS_ENV = "BACKPACK_MODEL_ROOTS"
HUB_ENV = "BACKPACK_ALLOW_HUB"
MODEL_ENV = "BACKPACK_MODEL"
EXPORT_ENV = "BACKPACK_SERVER_EXPORT"
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
NAME_MAX = 255  # bytes in one path component (Linux, macOS)


class AccessError(ValueError):
    """A path or hub id outside what the operator allows; says so without revealing more."""


def model_roots() -> list[Path]:
    """The directories under which this server opens models and runs (resolved)."""
    value = os.environ.get(ROOTS_ENV, "").strip()
    if value:
        roots = [Path(p).expanduser() for p in value.split(os.pathsep) if p.strip()]
    else:
        roots = [DEFAULT_MODEL_DIR, Path.cwd() / "runs", REPO_ROOT / "runs"]
        operator_model = os.environ.get(MODEL_ENV, "").strip()
        if operator_model and Path(operator_model).expanduser().is_dir():
            roots.append(Path(operator_model).expanduser())
    return [p.resolve() for p in roots]


def server_export_allowed() -> bool:
    """Whether visitors may export edited models to the server's disk (BACKPACK_SERVER_EXPORT:
    unset, "1", "true", "yes" or "on"; any other value turns them off, the safe reading)."""
    return os.environ.get(EXPORT_ENV, "1").strip().lower() in ("", "1", "true", "yes", "on")


def _refused(what: str) -> AccessError:
    return AccessError(f"{what} is outside the model directories this server may open; the "
                       f"operator sets them with {ROOTS_ENV}")


def allowed_path(path: str | os.PathLike, what: str = "this path") -> Path:
    """`path`, resolved, if it lies under an allowed root; else AccessError (same message
    whether or not it exists)."""
    try:
        resolved = Path(path).expanduser().resolve()
    except (OSError, ValueError, RuntimeError):  # a NUL byte, a name too long, a symlink loop
        raise _refused(what) from None
    if any(len(os.fsencode(part)) > NAME_MAX for part in resolved.parts):
        raise _refused(what)  # no file has such a name: refused as any other, even under a root
    if any(resolved == root or resolved.is_relative_to(root) for root in model_roots()):
        return resolved
    raise _refused(what)


def _is_dir(path: Path) -> bool:
    """path.is_dir(), False for a name no file can have (a NUL byte, a component too long)."""
    try:
        return path.resolve().is_dir()
    except (OSError, ValueError, RuntimeError):
        return False


def hub_allowed(hub_id: str) -> bool:
    if hub_id == os.environ.get(MODEL_ENV, "").strip():
        return True
    value = os.environ.get(HUB_ENV, "").strip()
    if value in ("", "0", "false", "no"):
        return False
    if value in ("1", "true", "yes", "*"):
        return True
    return hub_id in {v.strip() for v in value.split(",")}


def allowed_source(source: str | None) -> str | None:
    """A model source a visitor asked for (None: the default model), checked: a local directory
    under the roots, or a hub id the operator allows. Returns what to load."""
    if source is None or not str(source).strip():
        return None
    text = str(source).strip()
    if text == os.environ.get(MODEL_ENV, "").strip():
        return text  # the operator's own default
    looks_local = text.startswith((".", "/", "~", os.sep)) or not HUB_ID.match(text)
    if looks_local:
        return str(allowed_path(text, "this model directory"))
    if _is_dir(Path(text).expanduser()):  # a run under the roots named like a hub id: runs/x
        try:
            return str(allowed_path(text, "this model directory"))
        except AccessError:
            pass  # outside the roots: answered as the hub id it looks like, never as a path
    if hub_allowed(text):
        return HubId(text)  # downloaded: a local path of the same name is never read
    raise AccessError(f"loading models from the hub is not enabled on this server (the operator "
                      f"allows hub ids with {HUB_ENV}); choose the shipped model or a local run")


def display_source(source: str | os.PathLike | None) -> str:
    """A model source (or a run's file) as a visitor may see it: a path named relative to the
    allowed root that holds it (`backpack-mini`, `runs/backpack-mini-cpu/metrics.jsonl`), never
    the server's absolute path; a hub id as it is; None: the shipped model's name. A path under
    no allowed root shows its last part only."""
    if source is None or not str(source).strip():
        return DEFAULT_MODEL_DIR.name
    text = str(source).strip()
    path = Path(text).expanduser()
    local = text.startswith((".", "/", "~", os.sep)) or not HUB_ID.match(text) or path.is_dir()
    if not local:
        return text
    resolved = path.resolve()
    inside = [root for root in model_roots() if resolved == root or resolved.is_relative_to(root)]
    if not inside:
        return resolved.name or text
    root = max(inside, key=lambda r: len(r.parts))  # the closest root
    return str(Path(root.name) / resolved.relative_to(root))
