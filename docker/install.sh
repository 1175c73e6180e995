#!/bin/sh
# The image's install steps, kept in this one script: the Dockerfile runs it on the base image's
# Python, and tests/test_docker.py runs the same script in a fresh virtual environment.
#
#   sh docker/install.sh [PYTHON]        PYTHON: the interpreter to install into (default python3)
#
#   INSTALL_FLASH_ATTN=1    also install flash-attn (GPU only; builds from source when no prebuilt
#                           wheel matches, which needs nvcc: the -devel base image). Default 0.
#   FLASH_ATTN_VERSION      the flash-attn release to install (default 2.8.3).
#
# requirements.txt is installed at the versions CI tests (constraints.txt) with the torch that
# PYTHON already has kept exactly as it is (the base image's CUDA build): a constraints file
# written here pins torch to the installed version, so pip never downloads another torch; if some
# requirement needed a different one, pip stops with a resolution error instead of silently
# swapping the CUDA build for a PyPI one.
set -eu

PY="${1:-python3}"
HERE="$(cd "$(dirname "$0")" && pwd)"
REQUIREMENTS="$HERE/../requirements.txt"
TESTED="$HERE/../constraints.txt"
INSTALL_FLASH_ATTN="${INSTALL_FLASH_ATTN:-0}"
FLASH_ATTN_VERSION="${FLASH_ATTN_VERSION:-2.8.3}"

torch_version() {
    "$PY" -c 'import importlib.metadata as m; print(m.version("torch"))'
}

"$PY" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python >= 3.11 is required")'
if ! before="$(torch_version)"; then
    echo "install.sh: torch is not installed for $PY; install it first (the base image's)" >&2
    exit 1
fi
echo "install.sh: keeping torch $before ($PY)"

constraints="$(mktemp)"
trap 'rm -f "$constraints"' EXIT
echo "torch==$before" > "$constraints"

"$PY" -m pip install -c "$constraints" -c "$TESTED" -r "$REQUIREMENTS"

case "$INSTALL_FLASH_ATTN" in
    1|true|yes)
        # --no-build-isolation: flash-attn's build imports the installed torch; these are its
        # other build requirements.
        "$PY" -m pip install -c "$constraints" packaging psutil ninja wheel setuptools
        "$PY" -m pip install -c "$constraints" --no-build-isolation "flash-attn==$FLASH_ATTN_VERSION"
        ;;
    0|false|no|"") ;;
    *) echo "install.sh: INSTALL_FLASH_ATTN must be 0 or 1, not '$INSTALL_FLASH_ATTN'" >&2; exit 1 ;;
esac

after="$(torch_version)"
if [ "$after" != "$before" ]; then
    echo "install.sh: torch changed from $before to $after" >&2
    exit 1
fi
echo "install.sh: done; torch $after kept"
