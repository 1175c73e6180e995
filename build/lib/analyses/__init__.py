"""Command-line analyses: thin wrappers over `backpack_core` (run with `python -m analyses.NAME`).

Each tool parses its arguments, calls one core function and renders text or, with `--json`,
the result's `to_dict()`. Known input errors end with a one-paragraph message and exit code 2.
"""
