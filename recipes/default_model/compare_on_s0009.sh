#!/usr/bin/env bash
# Section 4 of the default-model issue, scored on the held-out CT s0009 (never trained on): `maskmed train` runs at
# one time budget and seed from the same start model on the same prepared cache, then `maskmed evaluate` of each
# run's last model on s0009 (Dice on the CT's own grid), one JSON per run, and one table.
#   What each data recipe adds: (a) real CTs only, (b) + contrast-phase augmentation, (c) + CT synthesised from the
#   label maps (the shipped recipe), (d) synthesised CT only (every patch drawn from a label map, real or label-only).
#   The paper's claim on the best data recipe (d), each with INIT's encoder and a FRESH transformer, pixel decoder
#   and head (--init-encoder-only), so that no head starts ahead: (e) decoupled head + FSA transformer (MaskMed),
#   (f) the point-wise conv head + FSA, (g) decoupled head without the FSA transformer.
#   Mirroring, on the shipped recipe (c) from INIT: (h) mirrored along z, y and x (nnU-Net's default, as the shipped
#   model was trained), (i) never mirrored (--mirror-axes none, as TotalSegmentator).
# Usage, from the repository root with ../shared/data beside it:
#   [RUNS="e_decoupled_fsa f_conv_fsa g_decoupled_no_fsa"] \
#   bash recipes/default_model/compare_on_s0009.sh CACHE/manifest.json INIT.maskmed OUT MINUTES [extra train options]
# CACHE: a cache prepared by the default recipe (train_cpu.sh writes OUT/cache/manifest.json, or use
# --prepare-only); INIT: the start model (its plans and classes must be the cache's). RUNS: which runs (default:
# all, a to i); a run whose OUT/NAME.s0009.json exists is kept, not rerun. Every run trains the whole model on the
# cache's cases (--no-freeze-encoder --rehearsal 0: not a user's fine-tune). The table lists every finished run in OUT.
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
BEST_DATA="${RECIPES[d_synthetic_only]} --init-encoder-only"
RECIPES[e_decoupled_fsa]="$BEST_DATA --head decoupled"
RECIPES[f_conv_fsa]="$BEST_DATA --head conv"
RECIPES[g_decoupled_no_fsa]="$BEST_DATA --head decoupled --no-transformer"
RECIPES[h_mirrored]="${RECIPES[c_synthetic]} --mirror-axes zyx"
RECIPES[i_not_mirrored]="${RECIPES[c_synthetic]} --mirror-axes none"
ORDER="a_real b_contrast c_synthetic d_synthetic_only e_decoupled_fsa f_conv_fsa g_decoupled_no_fsa h_mirrored i_not_mirrored"
mkdir -p "$OUT"
for name in ${RUNS:-$ORDER}; do
    if [ -z "${RECIPES[$name]+set}" ]; then echo "unknown run $name; choose from: $ORDER" >&2; exit 2; fi
    if [ -s "$OUT/$name.s0009.json" ]; then continue; fi
    # One epoch that the time limit ends: the only validation is at the end, so every recipe gets the same
    # training time; the last model is the one scored (no choice by validation).
    # shellcheck disable=SC2086
    python3 -m maskmed_core.cli train "$MANIFEST" -o "$OUT/$name" --init "$INIT" ${RECIPES[$name]} \
        --augmentation strong --batch-size 2 --learning-rate 1e-3 --epochs 1 --steps-per-epoch 100000 \
        --workers 0 --device cpu --seed 0 --time-limit "$MINUTES" --json --no-freeze-encoder --rehearsal 0 "$@" \
        > "$OUT/$name.log"
    python3 -m maskmed_core.cli evaluate "$OUT/$name/last.maskmed" "$DATA/totalseg_subjects/s0009_ct.nii.gz" \
        "$DATA/totalseg_subjects/s0009_totalseg.nii.gz" --label-mapping "$DATA/amos15_from_totalseg_v2.json" \
        --device cpu --json > "$OUT/$name.s0009.json"
done
# The table: steps each recipe got in its time, mean Dice over the classes present in s0009, the large organs and the
# two vessels that only their side tells apart.
python3 - "$OUT" $ORDER <<'PY'
import json
import sys
from pathlib import Path

out = Path(sys.argv[1])
organs = ("liver", "spleen", "right kidney", "left kidney", "aorta", "inferior vena cava")
print("| recipe | steps | mean Dice | " + " | ".join(organs) + " |")
print("| --- " * (3 + len(organs)) + "|")
for name in (name for name in sys.argv[2:] if (out / f"{name}.s0009.json").is_file()):
    result = json.loads((out / f"{name}.s0009.json").read_text().strip().splitlines()[-1])
    events = [json.loads(line) for line in (out / f"{name}.log").read_text().splitlines() if line.startswith("{")]
    steps = max((e["step"] for e in events if e.get("event") == "step"), default=0)
    dice = " | ".join(f"{result['classes'][organ]['dice']:.3f}" for organ in organs)
    print(f"| {name} | {steps} | {result['mean_dice']:.3f} | {dice} |")
PY
