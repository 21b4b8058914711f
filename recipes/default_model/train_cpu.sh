#!/usr/bin/env bash
# The default model's recipe on a CPU: 4 real CTs + CT synthesised from 7 label maps without images (and from the
# real cases' own label maps), contrast-phase and small-field-of-view augmentation (the strong preset), warm-started
# from the bundled model (the shipped file: six runs, 100, 110, 120, 120, 125 and 100 minutes, the last four with a
# larger synthesised share and a lower learning rate, the last three without mirroring, given as extra options; see
# README.md). The whole model trains and the data is these lists only: --no-freeze-encoder --rehearsal 0 undo what
# `--init` means for a user's fine-tune (a frozen encoder, rehearsal on the shipped label maps), which this
# continuation of the default model's own training is not.
# s0009 (the held-out validation CT) is NOT in these lists: never add it.
# Usage, from the repository root with ../shared/data beside it:
#   bash recipes/default_model/train_cpu.sh [OUT (runs/default)] [MINUTES (80)] [extra maskmed train options]
# MINUTES 'none': no time limit, the learning rate planned over the steps alone (--epochs x --steps-per-epoch), for
# one long run continued with --resume over several sittings (train_long.sh).
set -euo pipefail
OUT="${1:-runs/default}"
MINUTES="${2:-80}"
shift $(( $# < 2 ? $# : 2 ))
TIME_LIMIT=(--time-limit "$MINUTES")
if [ "$MINUTES" = none ]; then TIME_LIMIT=(); fi
DATA="../shared/data"
SUBJECTS="$DATA/totalseg_subjects"
python3 -m maskmed_core.cli train recipes/default_model/dataset.json -o "$OUT" \
    --init maskmed_core/resources/default.maskmed \
    --label-mapping "$DATA/amos15_from_totalseg_v2.json" \
    --synthetic-labels "$SUBJECTS/s0000_totalseg.nii.gz" "$SUBJECTS/s0001_totalseg.nii.gz" \
        "$SUBJECTS/s0004_totalseg.nii.gz" "$SUBJECTS/s0006_totalseg.nii.gz" \
        "$SUBJECTS/s0011_totalseg.nii.gz" "$SUBJECTS/s0327_totalseg.nii.gz" "$SUBJECTS/s0328_totalseg.nii.gz" \
    --synthetic-ratio 0.6 --synthetic-prob 0.3 --contrast-prob 0.4 \
    --augmentation strong --batch-size 2 --learning-rate 1e-3 --epochs 60 --steps-per-epoch 50 --val-every 6 \
    --workers 1 --device cpu "${TIME_LIMIT[@]}" --json \
    --no-freeze-encoder --rehearsal 0 "$@"
