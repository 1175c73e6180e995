"""One error handler for every command-line tool (the analyses and the trainer).

A user error (bad input, a missing or damaged file, a limit, a full disk) prints one line,
`PROG: error: WHAT WAS WRONG AND WHAT IS ACCEPTED`, and exits with 2; never a traceback. With
`--json`, stdout is always one valid JSON document: the result, or `{"error": ..., "kind": ...}`.
An unexpected exception (a bug) is reported in one line too, exit code 1, with its traceback
only when BACKPACK_DEBUG=1. This module imports neither torch nor transformers.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

EXIT_USAGE = 2
EXIT_INTERNAL = 1
EXIT_INTERRUPTED = 130

# Exception class name (anywhere in its MRO) -> the "kind" of a JSON error; first match wins.
KINDS = (("OutputError", "output"), ("BrokenPipeError", "output"),
         ("UsageError", "usage"), ("LimitError", "limit"), ("DiskFullError", "disk_full"),
         ("NonFiniteLoss", "nonfinite"), ("CheckpointError", "checkpoint"),
         ("ConfigError", "config"), ("DataError", "data"), ("EditError", "edit"),
         ("WordError", "word"), ("UnicodeError", "input"), ("ValueError", "input"),
         ("OSError", "file"))


class UsageError(ValueError):
    """Bad command-line arguments (what argparse would print before exiting)."""


class OutputError(OSError):
    """stdout cannot be written: a closed pipe, a full disk (/dev/full)."""


class ArgumentParser(argparse.ArgumentParser):
    """argparse that raises UsageError instead of exiting, and refuses arguments that are not
    valid UTF-8 (the shell passes bytes; Python keeps undecodable ones as lone surrogates)."""

    def error(self, message: str):
        raise UsageError(f"{message} (see {self.prog} --help)")

    def parse_args(self, args=None, namespace=None):
        parsed = super().parse_args(args, namespace)
        for name, value in vars(parsed).items():
            for item in value if isinstance(value, list) else [value]:
                if isinstance(item, str):
                    check_utf8(item, "--" + name.replace("_", "-"))
        return parsed


def check_utf8(text: str, what: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        raw = text[err.start].encode("utf-8", "surrogateescape")
        raise UsageError(f"{what} is not valid UTF-8 text: byte {raw!r} at character {err.start}; "
                         "give text in UTF-8") from None


def error_kind(err: BaseException) -> str:
    names = {cls.__name__ for cls in type(err).__mro__}
    for name, kind in KINDS:
        if name in names:
            return kind
    return "internal"


def error_message(err: BaseException) -> str:
    """One line: what went wrong. OSErrors name the file and the system's reason."""
    if isinstance(err, OSError) and err.strerror and err.filename and not err.args[1:2] == (str(err),):
        text = f"{err.strerror}: {err.filename}"
        if isinstance(err, PermissionError):
            text += " (choose a directory you can write to, or change its permissions)"
    else:
        text = str(err) or type(err).__name__
    return " ".join(text.split())


def json_safe(obj: Any) -> Any:
    """`obj` with NaN/Inf floats as null, tuples as lists and numpy/torch scalars as numbers:
    what json.dumps(allow_nan=False) accepts."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k) if not isinstance(k, str) else k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if obj is None or isinstance(obj, (str, int, bool)):
        return obj
    if hasattr(obj, "tolist"):  # numpy / torch scalars and arrays
        return json_safe(obj.tolist())
    return str(obj)


def json_text(obj: Any) -> str:
    """Strict JSON (no NaN), built whole before anything is printed: never a cut-off fragment."""
    return json.dumps(json_safe(obj), ensure_ascii=False, allow_nan=False)


def write_stdout(text: str) -> None:
    """Write and flush `text` to stdout; OutputError (one line, no traceback) when it cannot be
    written."""
    try:
        sys.stdout.write(text)
        sys.stdout.flush()
    except OSError as err:
        reason = "the pipe was closed" if isinstance(err, BrokenPipeError) else err.strerror or err
        raise OutputError(f"cannot write the output (stdout): {reason}") from None


def print_json(obj: Any) -> None:
    write_stdout(json_text(obj) + "\n")


def _drop_stdout() -> None:
    """Point stdout at /dev/null: what is still buffered for a closed pipe or a full disk must
    not fail again when the interpreter flushes it at exit ("Exception ignored ...")."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):
        pass


def wants_json(argv: Sequence[str] | None) -> bool:
    return "--json" in (sys.argv[1:] if argv is None else list(argv))


def run_main(main: Callable[[Sequence[str] | None], int | None], argv: Sequence[str] | None = None,
             prog: str = "backpack", json_errors: bool | None = None) -> int:
    """Run `main(argv)` and turn any exception into one line on stderr (and, with --json, an
    error object on stdout); returns the exit code."""
    as_json = wants_json(argv) if json_errors is None else json_errors
    try:
        code = int(main(argv) or 0)
        write_stdout("")  # flush what main printed: a failed write is reported here, not at exit
        return code
    except KeyboardInterrupt:
        message, kind, code = "interrupted", "interrupted", EXIT_INTERRUPTED
    except SystemExit:
        raise  # --help, or a main that chose its exit code
    except Exception as err:  # every error becomes one line
        kind = error_kind(err)
        message, code = error_message(err), EXIT_USAGE
        if kind == "internal":
            if os.environ.get("BACKPACK_DEBUG"):
                raise
            message = (f"internal error: {type(err).__name__}: {message} (this is a bug; rerun with "
                       "BACKPACK_DEBUG=1 for the traceback and report it)")
            code = EXIT_INTERNAL
        if isinstance(err, BrokenPipeError) and not isinstance(err, OutputError):  # a plain print()
            message = "cannot write the output: the pipe was closed"
    if kind == "output":  # stdout is gone: say so on stderr only
        _drop_stdout()
        as_json = False
    if os.environ.get("RANK", "0") == "0":  # under torchrun every rank meets it: say it once
        try:
            print(f"{prog}: error: {message}" if prog else f"error: {message}", file=sys.stderr)
            if as_json:
                print_json({"error": message, "kind": kind})
        except OSError:  # stdout or stderr itself cannot be written: the exit code still says it
            _drop_stdout()
    return code
