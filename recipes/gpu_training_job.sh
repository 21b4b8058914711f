#!/usr/bin/env bash
# Train MaskMed on a bare GPU machine (torch, numpy, scipy; no SimpleITK, no MONAI, no data) in minutes, from a
# preprocessed training cache made beforehand on any machine:
#
#   # on your machine: preprocess (real cases, label-only cases, a held-out case) into a cache with its manifest
#   maskmed train DATASET -o runs/prep --cache-dir /tmp/cache --prepare-only [--init MODEL] [--label-mapping ...] \
#       [--synthetic-labels ...] [--holdout IMAGE LABELS]
#   tar -cJf cache.tar.xz -C /tmp cache            # arrays + JSON; compresses well (label maps)
#   mkdir -p .whl && pip download --no-deps --only-binary=:all: -d .whl monai   # MONAI travels as its wheel (~3 MB)
#   # then, on the GPU machine, from the repository root (tracked tree + cache.tar.xz + .whl, under 64 MiB):
#   bash recipes/gpu_training_job.sh cache.tar.xz OUT MINUTES [--device cuda] [maskmed train options ...]
#
# What it does, each step logged with its time in OUT/timeline.txt:
#   1. installs the carried wheels (.whl/*.whl) into a private folder; MONAI is needed for augmentation;
#   2. unpacks the cache (a .tar, .tar.gz, .tar.xz or a folder holding manifest.json);
#   3. with --device cuda: builds the CUDA op (maskmed build-ops) and runs its tests (Testing/test_ops_deform_attn.py);
#   4. trains from the cache for MINUTES of training time (--time-limit), then scores the best model on the cache's
#      held-out case (holdout_evaluation.json);
#   5. leaves in OUT: the best model file (split into OUT/best.maskmed.part-* when over 15 MiB: rejoin with
#      cat OUT/best.maskmed.part-* > best.maskmed), training_log.jsonl, training_curves.png,
#      holdout_evaluation.json, train_stdout.jsonl and the logs; every file under 16 MiB.
# Extra options go to `maskmed train` (e.g. --batch-size 4 --workers 12 --init maskmed_core/resources/default.maskmed).
# `--device cpu` runs the same steps without the GPU ones (the test suite dry-runs it that way).
set -euo pipefail
if [ $# -lt 3 ]; then
  echo "usage: bash recipes/gpu_training_job.sh CACHE(.tar.xz|folder) OUT MINUTES [--device cuda|cpu] [train options]" >&2
  exit 2
fi
CACHE_SOURCE=$1
OUT=$2
MINUTES=$3
shift 3
DEVICE=cuda
if [ "${1:-}" = "--device" ]; then
  DEVICE=$2
  shift 2
fi
export PYTHONUNBUFFERED=1
WORK=$(mktemp -d "${TMPDIR:-/tmp}/maskmed_job.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$OUT"
SECONDS=0
stamp() { echo "[$(printf '%5d' "$SECONDS") s] $*" | tee -a "$OUT/timeline.txt"; }

stamp "start: $(python3 -c 'import sys, torch; print("torch", torch.__version__, "python", sys.version.split()[0])')"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$WORK/site" .whl/*.whl
  export PYTHONPATH="$WORK/site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
else
  export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
if ! python3 -c "import monai" 2>/dev/null; then
  echo "MONAI is missing: carry its wheel in .whl/ (pip download --no-deps --only-binary=:all: -d .whl monai)" >&2
  exit 3
fi

if [ -d "$CACHE_SOURCE" ]; then
  CACHE=$CACHE_SOURCE
else
  stamp "unpack $CACHE_SOURCE"
  mkdir -p "$WORK/cache"
  tar -xf "$CACHE_SOURCE" -C "$WORK/cache"
  CACHE=$(dirname "$(find "$WORK/cache" -name manifest.json | head -n 1)")
fi
if [ ! -f "$CACHE/manifest.json" ]; then
  echo "no manifest.json in $CACHE_SOURCE: prepare it with maskmed train ... --prepare-only" >&2
  exit 3
fi

if [ "$DEVICE" = cuda ]; then
  stamp "build the CUDA op"
  python3 -m maskmed_core.cli build-ops 2>&1 | tee "$OUT/build_ops.txt"
  python3 -m maskmed_core.cli info > "$OUT/info.txt" 2>&1 || true
  stamp "op tests"
  python3 -m pytest -q -ra -p no:cacheprovider Testing/test_ops_deform_attn.py 2>&1 | tail -20 | tee "$OUT/op_tests.txt"
fi

stamp "train for $MINUTES min on $DEVICE"
set +e
# The whole model trains on the cache's cases only, also with --init (a user's fine-tune would freeze the encoder
# and add the rehearsal maps); options given to the job come after these and win.
python3 -m maskmed_core.cli train "$CACHE/manifest.json" -o "$WORK/run" --device "$DEVICE" \
  --time-limit "$MINUTES" --json --no-freeze-encoder --rehearsal 0 "$@" \
  > "$OUT/train_stdout.jsonl" 2> "$OUT/train_stderr.txt"
STATUS=$?
set -e
stamp "training exit code $STATUS"

for name in training_log.jsonl training_curves.png holdout_evaluation.json; do
  if [ -f "$WORK/run/$name" ]; then cp "$WORK/run/$name" "$OUT/"; fi
done
if [ -f "$WORK/run/best.maskmed" ]; then
  if [ "$(stat -c %s "$WORK/run/best.maskmed")" -gt $((15 * 1024 * 1024)) ]; then
    split -b 15M -d "$WORK/run/best.maskmed" "$OUT/best.maskmed.part-"
  else
    cp "$WORK/run/best.maskmed" "$OUT/"
  fi
  sha256sum "$WORK/run/best.maskmed" | cut -d' ' -f1 > "$OUT/best.maskmed.sha256"
fi
if [ -f "$OUT/holdout_evaluation.json" ]; then
  python3 -c "
import json, sys
r = json.load(open(sys.argv[1]))
print('held-out case, %s: mean Dice %.3f over %d classes' % (r['grid'], r['mean_dice'] or 0, r['classes_in_reference']))
for name, s in r['classes'].items():
    print('  %-24s %.3f  %s' % (name, s['dice'], '-' if s['hd95'] is None else '%.1f mm' % s['hd95']))
" "$OUT/holdout_evaluation.json" | tee -a "$OUT/timeline.txt"
fi
stamp "done"
exit $STATUS
