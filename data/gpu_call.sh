#!/bin/bash
# Issue 22's GPU campaign as one call on a GPU host (docs/TRAINING.md, "On a lent GPU"):
#   bash data/gpu_call.sh SECONDS [VOCAB=DIR ...] [-- data.gpu_campaign options, e.g. --only bp128,tw128]
# Each VOCAB=DIR (default 32k=gpu/shards-32k, the shipped vocabulary) holds one vocabulary's shards
# with their word2vec caches; a train.bin.xz there is unpacked first, and a missing tokenizer.json
# is taken from data/backpack-mini when the shards were made with it (2.3 MB less to carry).
# The runs go to /tmp/gpu; their models, metrics and logs come out as one tar in pieces of 15 MiB
# under $OUT (default out/gpu), then tests/test_cuda.py runs.
set -uo pipefail
cd "$(dirname "$0")/.."
SECONDS_BUDGET="${1:?give the deadline in seconds, e.g. 420}"
shift
SHARDS=()
while [ $# -gt 0 ] && [ "$1" != "--" ]; do SHARDS+=("$1"); shift; done
[ $# -gt 0 ] && shift  # the "--"
[ ${#SHARDS[@]} -eq 0 ] && SHARDS=(32k=gpu/shards-32k)
OUT="${OUT:-out/gpu}"
mkdir -p "$OUT"
T0=$(date +%s)
for item in "${SHARDS[@]}"; do
  dir="${item#*=}"
  if [ -f "$dir/train.bin.xz" ] && [ ! -f "$dir/train.bin" ]; then
    python3 -c "
import lzma, shutil, sys
with lzma.open(sys.argv[1] + '/train.bin.xz') as f, open(sys.argv[1] + '/train.bin', 'wb') as g:
    shutil.copyfileobj(f, g, 1 << 24)
" "$dir" || exit 1
  fi
  if [ ! -f "$dir/tokenizer.json" ]; then
    python3 -c "
import shutil, sys
from pathlib import Path
from data.campaign import same_tokenizer
d, shipped = Path(sys.argv[1]), Path('data/backpack-mini')
if not same_tokenizer(shipped, d):
    sys.exit(f'{d} has no tokenizer.json and its shards were not made with {shipped}\'s tokenizer '
             '(the manifest names another): carry the shards\' own tokenizer.json')
for f in ('tokenizer.json', 'tokenizer_config.json'):
    shutil.copy(shipped / f, d / f)
" "$dir" || exit 1
  fi
done
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__, 'cuda', torch.cuda.is_available())"
python3 -m data.gpu_campaign --shards "${SHARDS[@]}" --out /tmp/gpu --seconds "$SECONDS_BUDGET" "$@" 2>&1 | tee "$OUT/campaign.log"
echo "campaign done at $(( $(date +%s) - T0 )) s"
rm -rf /tmp/pack && mkdir -p /tmp/pack
cp /tmp/gpu/*.log /tmp/gpu/summary.json /tmp/pack/
for run in /tmp/gpu/*/; do
  r=$(basename "$run")
  [ -f "$run/model.safetensors" ] || continue
  mkdir -p "/tmp/pack/$r"
  for f in config.json model.safetensors metrics.jsonl run_config.json tokenizer.json tokenizer_config.json; do
    [ -e "$run/$f" ] && cp -L "$run/$f" "/tmp/pack/$r/"
  done
done
tar -C /tmp/pack -cf - . | split -b 15M - "$OUT/runs.tar.part-"
timeout 45 python3 -m pytest -q -p no:cacheprovider tests/test_cuda.py 2>&1 | tail -n 15 | tee "$OUT/cuda-tests.log"
ls -la "$OUT"; echo "all done at $(( $(date +%s) - T0 )) s"
