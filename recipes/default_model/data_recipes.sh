#!/usr/bin/env bash
# Section 4 of the default-model issue: what each data recipe adds, at one budget and seed, scored on the held-out
# CT s0009 (never trained on). Four `maskmed train` runs from the same start model on the same prepared cache:
#   (a) real CTs only, (b) + contrast-phase augmentation, (c) + CT synthesised from the label maps (the shipped
#   recipe), (d) synthesised CT only (every patch drawn from a label map, real or label-only).
# then `maskmed evaluate` of each run's last model on s0009 (Dice on the CT's own grid), one JSON per run.
# Usage, from the repository root with ../shared/data beside it:
#   bash recipes/default_model/data_recipes.sh CACHE/manifest.json INIT.maskmed OUT MINUTES [extra train options]
# CACHE: a cache prepared by the default recipe (train_cpu.sh writes OUT/cache/manifest.json, or use
# --prepare-only); INIT: the start model (its plans and classes must be the cache's).
set -euo pipefail
MANIFEST="$1"
INIT="$2"
OUT="$3"
MINUTES="$4"
shift 4
DATA="../shared/data"
declare -A RECIPES=(
    [a_real]="--synthetic-ratio 0 --synthetic-prob 0 --contrast-prob 0"
    [b_contrast]="--synthetic-ratio 0 --synthetic-prob 0 --contrast-prob 0.4"
    [c_synthetic]="--synthetic-ratio 0.6 --synthetic-prob 0.3 --contrast-prob 0.4"
    [d_synthetic_only]="--synthetic-ratio 0.6 --synthetic-prob 1 --contrast-prob 0"
)
mkdir -p "$OUT"
for name in a_real b_contrast c_synthetic d_synthetic_only; do
    # One epoch that the time limit ends: the only validation is at the end, so every recipe gets the same
    # training time; the last model is the one scored (no choice by validation).
    # shellcheck disable=SC2086
    python3 -m maskmed_core.cli train "$MANIFEST" -o "$OUT/$name" --init "$INIT" ${RECIPES[$name]} \
        --augmentation strong --batch-size 2 --learning-rate 1e-3 --epochs 1 --steps-per-epoch 100000 \
        --workers 0 --device cpu --seed 0 --time-limit "$MINUTES" --json "$@" \
        > "$OUT/$name.log"
    python3 -m maskmed_core.cli evaluate "$OUT/$name/last.maskmed" "$DATA/totalseg_subjects/s0009_ct.nii.gz" \
        "$DATA/totalseg_subjects/s0009_totalseg.nii.gz" --label-mapping "$DATA/amos15_from_totalseg_v2.json" \
        --device cpu --json > "$OUT/$name.s0009.json"
done
# The table: steps each recipe got in its time, mean Dice over the classes present in s0009 and the large organs.
python3 - "$OUT" <<'PY'
import json
import sys
from pathlib import Path

out = Path(sys.argv[1])
organs = ("liver", "spleen", "right kidney", "left kidney")
print("| recipe | steps | mean Dice | " + " | ".join(organs) + " |")
print("| --- " * (3 + len(organs)) + "|")
for name in ("a_real", "b_contrast", "c_synthetic", "d_synthetic_only"):
    result = json.loads((out / f"{name}.s0009.json").read_text().strip().splitlines()[-1])
    events = [json.loads(line) for line in (out / f"{name}.log").read_text().splitlines() if line.startswith("{")]
    steps = max((e["step"] for e in events if e.get("event") == "step"), default=0)
    dice = " | ".join(f"{result['classes'][organ]['dice']:.3f}" for organ in organs)
    print(f"| {name} | {steps} | {result['mean_dice']:.3f} | {dice} |")
PY
