#!/bin/sh
# The image's entry commands, smoke-run from the repository root: the Dockerfile runs this at the
# end of the build (as the image's user), and tests/test_docker.py runs the same script in a fresh
# virtual environment. The dashboard (CMD) and its HEALTHCHECK are tested from the Dockerfile.
set -eu
cd "$(dirname "$0")/.."

# the shipped model is in the image and loads
python -c 'from backpack_core import load_backpack; load_backpack(device="cpu")'
python -m analyses.sense_topk --help > /dev/null
python -m backpack_core.train --help > /dev/null
torchrun --help > /dev/null
streamlit --version
echo "smoke.sh: entry commands OK"
