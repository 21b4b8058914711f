#!/usr/bin/env bash
# Issue 25, lever 3: the default model's recipe as ONE long run instead of warm restarts. The learning rate is planned
# over all its steps (120 epochs x 50 = 6000 steps of batch 2, ~8 hours of one CPU core), not over one sitting's time
# limit, and the mask loss is the balanced one from its first step. The same command starts it and continues it:
#   OMP_NUM_THREADS=1 bash recipes/default_model/train_long.sh [OUT (runs/default_long)] [extra maskmed train options]
# Stop it whenever the machine is wanted (Ctrl+C or SIGTERM: exit 5, the state of the last finished epoch is kept in
# OUT/training_state.safetensors, best.maskmed is the best validation so far); run the command again to go on from
# there (--resume, given when OUT holds a state). If OUT or its state file is gone, the command starts again from the
# shipped model at step 0.
# s0009 (the held-out validation CT) is NOT in the data lists: never add it.
set -euo pipefail
OUT="${1:-runs/default_long}"
shift $(( $# < 1 ? $# : 1 ))
RESUME=()
if [ -f "$OUT/training_state.safetensors" ]; then RESUME=(--resume); fi
exec bash "$(dirname "$0")/train_cpu.sh" "$OUT" none "${RESUME[@]}" --epochs 120 --learning-rate 5e-4 \
    --synthetic-ratio 0.75 --synthetic-prob 0.4 --mirror-axes none --mask-loss balanced "$@"
