"""Shared command-line plumbing: common options, model loading, JSON output, error handling.

Importing this module imports no torch and no transformers; `load` imports the core lazily.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from typing import Any

from backpack_core.common import cli

EXIT_USAGE = cli.EXIT_USAGE


def parser(prog: str, description: str) -> argparse.ArgumentParser:
    """An ArgumentParser with the options every analysis takes: --model, --device, --dtype, --json.
    Bad arguments raise UsageError (reported by `run`, as JSON with --json)."""
    p = cli.ArgumentParser(prog=prog, description=description)
    p.add_argument("--model", default=None,
                   help="model directory or hub id (default: the shipped model, data/backpack-mini)")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:N, mps or auto")
    p.add_argument("--dtype", default="float32",
                   help="float32 (default: exact attributions), bfloat16, float16 or auto")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    return p


def add_threads(p: argparse.ArgumentParser, default: int | None = 1) -> None:
    """--threads: many small forward passes run fastest on one thread on a shared CPU."""
    p.add_argument("--threads", type=int, default=default,
                   help=f"torch threads (default {default or 'torch' + chr(39) + 's choice'})")


def read_json(path: str, what: str) -> Any:
    """A JSON data file, or one clear error naming the file and what is wrong with it (bounded in
    size and nesting: `backpack_core.common.files.read_json`)."""
    from backpack_core.common.files import read_json as read_bounded_json

    return read_bounded_json(path, what)


PLOT_SUFFIXES = (".html", ".htm", ".png")


def add_plot(p: argparse.ArgumentParser, what: str) -> None:
    """--plot FILE, the same for every command that draws a figure (see `write_plot`)."""
    p.add_argument("--plot", default=None, metavar="FILE",
                   help=f"also write a figure of {what}: FILE.html (Plotly; plotly.min.js is written "
                        "beside it once, so it opens offline) or FILE.png (drawn with Pillow)")


def check_plot(path: str | None) -> None:
    """--plot's file type and directory, checked before the model loads (one-line error)."""
    from pathlib import Path

    if path is None:
        return
    if Path(path).suffix.lower() not in PLOT_SUFFIXES:
        raise ValueError(f"--plot {path!r}: write a .html (Plotly) or .png (Pillow) file")
    if not Path(path).absolute().parent.is_dir():
        raise ValueError(f"--plot {path!r}: no such directory {str(Path(path).parent)!r}")


def write_plot(path: str, figure: Callable[[], Any], png: Callable[[str], None]) -> str:
    """The one way every command writes its figure: FILE.png drawn by `png(path)` with Pillow
    (analyses._png; no kaleido), else `figure()` (a Plotly Figure) as HTML that loads plotly.js
    from plotly.min.js beside it (written there once, 4.8 MB, shared by the figures of that
    directory), never from a CDN: it draws without a network. Returns the path."""
    from pathlib import Path

    check_plot(path)
    if Path(path).suffix.lower() == ".png":
        png(path)
    else:
        figure().write_html(path, include_plotlyjs="directory")
    return path


def emit(args: argparse.Namespace, data: Any, render: Callable[[Any], str],
         write_plot: Callable[[Any, str], None] | None = None) -> int:
    """Print `data` as JSON with --json, else as the command's readable rendering; with
    `write_plot` and --plot FILE, the figure is written first."""
    plot = getattr(args, "plot", None) if write_plot is not None else None
    if plot:
        write_plot(data, plot)
    if args.json:
        print_json(data)
    else:
        cli.write_stdout(render(data) + "\n" + (f"\nplot written to {plot}\n" if plot else ""))
    return 0


def check_windows(args: argparse.Namespace) -> None:
    """--max-tokens, --batch-size and --seq-len of the commands that read a corpus in windows."""
    if args.max_tokens is not None and args.max_tokens < 2:
        raise ValueError(f"--max-tokens must be >= 2, got {args.max_tokens}")
    if args.batch_size < 1 or (args.seq_len is not None and args.seq_len < 2):
        raise ValueError("--batch-size must be >= 1 and --seq-len >= 2")
    from backpack_core.common.limits import check_batch_windows

    check_batch_windows(args.batch_size)


def add_long_text(p: argparse.ArgumentParser) -> None:
    """--long-text and --window-start: what to read of a text longer than the model's context."""
    p.add_argument("--long-text", choices=("error", "last", "window"), default="error",
                   help="a text longer than the model's context: stop (default), read its last "
                        "tokens, or one window of a sliding window (--window-start)")
    p.add_argument("--window-start", type=int, default=0,
                   help="with --long-text window: the token offset of the window (default 0)")


def read_window(args: argparse.Namespace, model, tokenizer, prog: str):
    """The `backpack_core.model.windows.TextWindow` of --text that --long-text asks for; when it
    is not the whole text, says on stderr which part is read."""
    import sys

    from backpack_core.model.windows import text_window

    window = text_window(tokenizer.encode(args.text), model.config.n_positions, args.long_text,
                         args.window_start)
    if not window.whole:
        print(f"{prog}: reading {window.describe()} of the text (--long-text {args.long_text})",
              file=sys.stderr)
    return window


def add_apply_anyway(p: argparse.ArgumentParser) -> None:
    """--apply-anyway: for an edit pack made on another model with the same tokenizer."""
    p.add_argument("--apply-anyway", action="store_true",
                   help="apply an edit pack made on another model with the same tokenizer (edits "
                        "that do not fit are listed on stderr and left out)")


def checked_edits(edits, model, tokenizer, args: argparse.Namespace):
    """An edit set or pack checked against the loaded model (backpack_core.edit.export.check_pack):
    a pack made on another model is refused unless --apply-anyway; left-out edits go to stderr."""
    import sys

    from backpack_core.edit.export import check_pack

    checked = check_pack(edits, model, tokenizer, apply_anyway=getattr(args, "apply_anyway", False))
    for u in checked.unresolved:
        print(f"left out edit {u['index']} ({u['edit']}): {u['reason']}", file=sys.stderr)
    return checked.edit_set


def load(args: argparse.Namespace):
    """(Backpack, Tokenizer) from --model/--device/--dtype, without importing transformers."""
    from backpack_core.model.loading import load_backpack

    return load_backpack(args.model, device=args.device, dtype=args.dtype)


print_json = cli.print_json  # strict JSON (NaN as null), printed whole


def run(main: Callable[[Sequence[str] | None], int | None], argv: Sequence[str] | None = None,
        prog: str = "analyses") -> int:
    """Run `main(argv)` through the one error handler of every command (backpack_core.common.cli):
    user errors print one line to stderr and exit 2, with --json also {"error", "kind"} on
    stdout; no traceback."""
    return cli.run_main(main, argv, prog=prog)
