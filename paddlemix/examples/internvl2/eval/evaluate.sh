#!/bin/sh
# Evaluate an InternVL2 checkpoint like the official internvl_chat/evaluate.sh:
#
#   [GPUS=N] [PYTHON=python] sh evaluate.sh CHECKPOINT DATASET [--dynamic] [--max-num N] [evaluate.py options]
#
# Run from the folder that holds data/ (the official layout). GPUS>1 starts one process per device
# with paddle.distributed.launch; the answers are sharded over them and merged by rank 0.
set -eu

if [ "$#" -lt 2 ]; then
  echo "usage: [GPUS=N] sh $0 CHECKPOINT DATASET [--dynamic] [--max-num N] [evaluate.py options]" >&2
  exit 2
fi
CHECKPOINT=$1
DATASET=$2
shift 2
HERE=$(cd "$(dirname "$0")" && pwd)
PYTHON=${PYTHON:-python}
GPUS=${GPUS:-1}

if [ "$GPUS" -gt 1 ]; then
  # Check the dataset in one process first: a missing file is then one clear line, not N worker logs.
  "$PYTHON" "$HERE/evaluate.py" "$CHECKPOINT" "$DATASET" --check "$@"
  exec "$PYTHON" -m paddle.distributed.launch --devices "$(seq -s, 0 $((GPUS - 1)))" \
    "$HERE/evaluate.py" "$CHECKPOINT" "$DATASET" "$@"
fi
exec "$PYTHON" "$HERE/evaluate.py" "$CHECKPOINT" "$DATASET" "$@"
