#!/usr/bin/env bash
# Everything that needs a GPU, as ONE prepared run for a lent device machine (see the device tool's README).
#
#   1. build the CUDA backend of the deformable attention op, run its tests, benchmark it against the reference;
#   2. then, side by side on the one GPU: train the default model (`small`) and the paper-scale `base` preset with
#      the same recipe and the same training-time limit, and run the head ablation (benchmarks/ablation.py);
#   3. leave the logs, figures and the trained small model (split into parts under 16 MiB) in $OUT.
#
# The machine has torch, numpy, scipy and matplotlib but not SimpleITK or MONAI, and it cannot reach ../shared:
# before the run, put their wheels in .whl/ and a copy of ../shared/data in .gpu/shared_data/ (both ignored
# through .git/info/exclude) and carry both:
#
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux2014_x86_64 -d .whl SimpleITK monai
#   mkdir -p .gpu/shared_data && cp -r ../shared/data/ct ../shared/data/*.json .gpu/shared_data/
#   run(command="bash benchmarks/device_session.sh", carry=[".whl", ".gpu"], timeout_s=570)
#
# Knobs (environment): DEADLINE (seconds the whole script may take, default 540: the trainings are shortened so
# that it ends, files collected, before then), TRAIN_MINUTES (training-time limit of each default-model run,
# default 4, or less to meet DEADLINE), ABLATION_STEPS (default 250), RUNS (default "small base ablation": which
# of the three side-by-side jobs to run), WORKERS (loader workers of each default-model run, default 3),
# DEVICE (cuda; cpu only for a dry run), SKIP_OPS=1 (no op build/tests/benchmarks; the model then uses the reference).
set -u
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/device_session_out}
DEVICE=${DEVICE:-cuda}
DEADLINE=${DEADLINE:-540}
TRAIN_MINUTES=${TRAIN_MINUTES:-4}
ABLATION_STEPS=${ABLATION_STEPS:-250}
RUNS=${RUNS:-small base ablation}
WORKERS=${WORKERS:-3}
WORK=${WORK:-/tmp/maskmed_device}
LOGS=$WORK/logs
mkdir -p "$OUT" "$LOGS"
SECONDS=0
stamp() { echo "[$(printf '%4d' "$SECONDS") s] $*" | tee -a "$LOGS/timeline.txt"; }

if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo "could not install the carried wheels"; exit 1; }
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi
if [ -d .gpu/shared_data ] && [ ! -e ../shared/data ]; then
  mkdir -p ../shared && cp -r .gpu/shared_data ../shared/data
fi
export MASKMED_CACHE_DIR=$WORK/cache
stamp "start: $(python3 -c 'import torch, sys; print("torch", torch.__version__, "python", sys.version.split()[0])')"
(nvidia-smi || true) >"$LOGS/nvidia-smi.txt" 2>&1

if [ "${SKIP_OPS:-0}" != 1 ]; then
  stamp "build the CUDA op"
  TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} timeout 300 python3 -c "
from maskmed_core.ops.build import build_ops
for report in build_ops(('cuda',)): print(report)" 2>&1 | tee "$LOGS/build.txt"
  python3 -m maskmed_core.cli info 2>&1 | tee "$LOGS/info.txt"
  stamp "op tests"
  timeout 120 python3 -m pytest -q -ra -p no:cacheprovider Testing/test_ops_deform_attn.py 2>&1 | tail -25 \
    | tee "$LOGS/op_tests.txt"
  stamp "op benchmark"
  timeout 100 python3 -m benchmarks.deform_attn --device "$DEVICE" --sizes both --repeats 10 2>&1 \
    | tee "$LOGS/op_benchmark.txt"
  timeout 45 python3 -m benchmarks.deform_attn --device "$DEVICE" --sizes small --dtype bfloat16 --repeats 10 \
    --no-memory 2>&1 | tee "$LOGS/op_benchmark_bf16.txt"
fi

# Side by side: each process gets one CPU thread (the 16 cores are shared by 8 trainings and their loaders).
export OMP_NUM_THREADS=1
# Whatever the op phase took: leave ~2 min after the training-time limit (start-up, preprocessing, the final
# validation and export) and 25 s to collect the files before DEADLINE.
TRAIN_MINUTES=$(python3 -c "print(round(min($TRAIN_MINUTES, ($DEADLINE - $SECONDS - 145) / 60), 2))")
HARD_LIMIT=$((DEADLINE - SECONDS - 25))
RECIPE=(recipes/default_model/dataset.json --label-mapping ../shared/data/amos15_from_totalseg_v2.json
        --spacing 3 3 3 --patch-size 64 96 96 --augmentation strong --batch-size 4 --learning-rate 1e-3
        --epochs 40 --steps-per-epoch 50 --val-every 5 --workers "$WORKERS" --device "$DEVICE"
        --time-limit "$TRAIN_MINUTES" --json)
stamp "runs: $RUNS (training-time limit $TRAIN_MINUTES min; ablation $ABLATION_STEPS steps per run)"
for preset in small base; do
  case " $RUNS " in *" $preset "*)
    timeout "$HARD_LIMIT" python3 -m maskmed_core.cli train "${RECIPE[@]}" --preset "$preset" -o "$WORK/runs/$preset" \
      >"$LOGS/train_$preset.jsonl" 2>"$LOGS/train_$preset.err" &
  esac
done
case " $RUNS " in *" ablation "*)
timeout "$HARD_LIMIT" python3 -m benchmarks.ablation --device "$DEVICE" --jobs 6 --steps "$ABLATION_STEPS" \
  --work-dir "$WORK/ablation" --output "$LOGS/ablation.json" >"$LOGS/ablation.txt" 2>"$LOGS/ablation.err" &
esac
wait
stamp "trainings done"

for run in small base; do
  [ -f "$LOGS/train_$run.jsonl" ] || continue
  tail -n 1 "$LOGS/train_$run.jsonl" > "$LOGS/summary_$run.json" 2>/dev/null
  cp "$WORK/runs/$run/training_log.jsonl" "$LOGS/training_log_$run.jsonl" 2>/dev/null
  cp "$WORK/runs/$run/training_curves.png" "$LOGS/training_curves_$run.png" 2>/dev/null
done
for result in "$WORK"/ablation/*/*/result.json; do  # each finished ablation run, also if the whole one was cut
  [ -f "$result" ] || continue
  run_dir=$(dirname "$result")
  cp "$result" "$LOGS/ablation_$(basename "$(dirname "$run_dir")")_$(basename "$run_dir").json"
done
if [ -f "$WORK/runs/small/best.maskmed" ]; then
  sha256sum "$WORK/runs/small/best.maskmed" > "$LOGS/small_best.sha256"
  split -b 15M -d "$WORK/runs/small/best.maskmed" "$OUT/small_best.maskmed.part"
fi
stamp "end"
tar -czf "$OUT/logs.tar.gz" -C "$WORK" logs
cat "$LOGS/timeline.txt"
