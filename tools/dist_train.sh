#!/usr/bin/env bash
# Usage: tools/dist_train.sh CONFIG GPUS [tools/train.py options...]
# Multi-node: NNODES=2 NODE_RANK=0 MASTER_ADDR=host PORT=29500 tools/dist_train.sh ...
exec bash "$(dirname "$0")/dist_launch.sh" "$2" train.py "$1" "${@:3}"
