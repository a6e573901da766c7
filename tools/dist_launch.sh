#!/usr/bin/env bash
# torchrun over one of the tools: dist_launch.sh PROCESSES SCRIPT [SCRIPT arguments...]
# (tools/dist_train.sh and tools/dist_test.sh call this).
# Multi-node: NNODES=2 NODE_RANK=0 MASTER_ADDR=host PORT=29500 tools/dist_train.sh ...
set -e
PROCESSES=$1
SCRIPT=$2
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
PORT=${PORT:-29500}
MASTER_ADDR=${MASTER_ADDR:-"127.0.0.1"}
PYTHON=${PYTHON:-python}

PYTHONPATH="$(dirname "$0")/..":$PYTHONPATH \
"$PYTHON" -m torch.distributed.run \
    --nnodes="$NNODES" \
    --node_rank="$NODE_RANK" \
    --master_addr="$MASTER_ADDR" \
    --nproc_per_node="$PROCESSES" \
    --master_port="$PORT" \
    "$(dirname "$0")/$SCRIPT" \
    "${@:3}" \
    --launcher pytorch
