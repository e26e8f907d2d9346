#!/usr/bin/env bash
# One GPU call (~9.5 minutes on an H100/H200): a candidate quick prior, its chain's drift and
# calibration against the committed prior's, and the paper-scale posterior sampler measured
# against the GPU's peak.
#
#   scripts/gpu_run.sh prepare          here, once: pruned wheels of what the GPU image lacks
#                                       (galsim, LSSTDESC.Coord, astropy, pyerfa, astropy-iers-data,
#                                       diffusers, tarp, deprecation) -> .whl/gpu_site.tar.xz (ignored by git; carry it)
#   scripts/gpu_run.sh [run]            on the GPU machine (the device tool: carry [".whl"] and, for
#                                       the calibration's real PSFs and noise, the HSC target folder
#                                       under $DIFFDECON_DATA, e.g. "data/external/hsc_pdr3_cosmos")
#   scripts/gpu_run.sh run --profile smoke   the same chain on the CPU with tiny models (a minute or two)
#
# Steps of `run`:
#   1. the quick training set (12,000 synthetic galaxies) is drawn on all the machine's cores
#      (inside scripts/train.py, galaxies.build_dataset);
#   2. a candidate quick prior is trained through training.train with a dataclasses.replace'd
#      profile (scripts/train.py --candidate) into build/gpu_run/quick_candidate/, never
#      models/quick/; its EMA snapshots at the FID steps (4/7, 5/7, 6/7 of the run) and the final
#      EMA are exported there, and the folder comes back as quick_candidate.tar.part-* (< 16 MB each);
#   2b. on the same machine, bench/bench_prior_drift.py for the committed prior and the candidate
#      (the chain's drift under its own noising, results/prior_drift.json's measure) and
#      bench/bench_calibration.py for the candidate on its own draws at i = 22 (GPU_RUN_CAL_TRUTHS,
#      default 100), 20 and 18 (half as many) and on 48 held-out galaxies, each run bounded by the
#      time left before the benchmark's share (GPU_RUN_BENCH_S, 75 s): *_gpu.json, packed into eval_gpu.tar;
#   3. bench/bench_paper_sampler.py times MMPS and DPS steps of the paper profile (256 px, the
#      354 M-parameter UNet, sampler settings of validation.sampler_settings("paper")) for what is
#      left of the time budget: batch sizes up to the memory, bf16 autocast and float32,
#      torch.compile at the best batch; samples/s, s/step, peak memory and the fraction of the
#      bf16 peak (GPU_RUN_PEAK_TFLOPS, default 989: H100 SXM and H200 dense bf16 datasheet value).
#      It prints the extrapolated time of 256 samples at 100 MMPS steps and at 1000 DPS steps.
# Outputs go to $OUT when it is set (the device tool returns that folder), else to results/
# (smoke: build/gpu_run/out/, so that a CPU run never writes over GPU results).
#
# Why this candidate (defaults below, each overridable by an environment variable):
# * The committed quick prior (widths 32-64-96-128, one ResNet layer per level, 3.8 M
#   parameters, 4,200 steps x 256 images, cosine learning rate from 3e-4) converged early: its
#   training loss (running mean over 200 steps) fell 0.0203 -> 0.0141 -> 0.0123 -> 0.0119 at
#   steps 1000 / 2000 / 3000 / 4200, and its FID with galaxy-encoder features was flat from the
#   first snapshot (step 2400) to the last (6.81 -> 6.62, paired-bootstrap sd 0.17). Its samples
#   are more compact than the training set and lack spiral arms and bars. That is a model that
#   has stopped learning, not one that is short of steps: more capacity is the first change.
# * Arms and bars are structure on the scale of the galaxy, which a 64 px UNet forms in its
#   16 px and 8 px levels (where its attention is). Widening those levels (96 -> 128 and
#   128 -> 160) adds parameters where the global shape is made at little arithmetic cost: 5.77 M
#   parameters (+52 %) for 3.25 GFLOP per forward pass (+25 %; torch's flop counter), so CPU
#   sampling, which the quick profile's `make paper` budget is set by, costs about a quarter
#   more. Widening all levels alike (40-80-120-160: 5.9 M, +56 % FLOPs) or a second layer per
#   level (5.5 M, +45 % FLOPs) buys fewer parameters per FLOP, and 48-96-144-192 (8.5 M)
#   breaks the 30 MB budget of the float32 EMA weights (this one: 23 MB).
# * Size of what comes back: final EMA float32 plus three float16 snapshots is 10 bytes per
#   parameter, 58 MB here, inside the 64 MiB the device tool returns.
# * On an H100 the committed model's step took 0.07-0.09 s at batch 64 to 256 alike (overhead-
#   bound: results/bench_training_gpu.json), so a batch of 512 costs little more per step than
#   256: the candidate sees about twice the images per second. The number of steps is not
#   fixed here: a 30-step probe measures the step time and the run gets the steps that fit in
#   GPU_RUN_TRAIN_S (240 s), a multiple of 7 so the FID snapshots fall on whole steps. Learning
#   rate 3e-4 with 100 warm-up steps and cosine decay, shifts from the start, v prediction and
#   EMA as the committed run (the profile's fields), so the comparison isolates width and data seen.
# * Measured on an H200 (2026-12-04): 0.114 s per step at batch 512, training set in 31 s. A
#   180 s run (1,449 steps) ended above the committed prior's loss at the same step, its
#   denoiser removing 6-9 times more faint light (docs/calibration.md): too short. The
#   committed run's length, 4,200 steps, is about 480 s: GPU_RUN_TRAIN_S=480 in a call of its
#   own (the evaluation is then skipped for want of time and runs on the CPU afterwards).
# * The committed run's own snapshots (docs/calibration.md, results/prior_mean_error_*.json): its
#   faint-light error fell 17-29 % from step 2,400 to 3,000, 8-13 % to 3,600 and -2 to 6 % over
#   the last 600 steps (learning rate below 1.5e-5): a longer schedule, not a resumed run, is what to try
#   (the committed widths for about 6,000 steps in the same time: GPU_RUN_CHANNELS="32 64 96 128"
#   GPU_RUN_BATCH=256).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)

MODE=run
if [[ $# -gt 0 && $1 != --* ]]; then MODE=$1; shift; fi
PROFILE=${GPU_RUN_PROFILE:-full}
while [[ $# -gt 0 ]]; do
  case $1 in
    --profile) PROFILE=$2; shift 2 ;;
    *) echo "gpu_run.sh: unknown argument '$1'; accepted: [prepare|run] [--profile full|smoke]" >&2; exit 2 ;;
  esac
done
if [[ $PROFILE != full && $PROFILE != smoke ]]; then
  echo "gpu_run.sh: --profile '$PROFILE'; accepted: full, smoke" >&2; exit 2
fi
SITE_TAR=.whl/gpu_site.tar.xz

prepare() {
  # Wheels for the GPU image's Python (3.12, x86-64), unpacked, pruned (test suites, galsim's
  # Roman and sensor data, diffusers' pipelines, debug symbols of galsim's extension) and
  # packed into one archive small enough to travel with the working tree.
  local tmp; tmp=$(mktemp -d)
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d "$tmp/wheels" \
    galsim==2.8.5 LSSTDESC.Coord==1.3.1 astropy==8.0.2 pyerfa astropy-iers-data diffusers==0.42.1 tarp==0.1.1 deprecation==2.1.0
  mkdir -p "$tmp/site"
  for w in "$tmp"/wheels/*.whl; do python3 -m zipfile -e "$w" "$tmp/site"; done
  (cd "$tmp/site" && find . -mindepth 2 -type d -name tests -not -path './astropy/tests' -prune -exec rm -rf {} + \
     && rm -rf galsim/share/roman galsim/share/sensors galsim/include diffusers/pipelines/*/ \
     && strip --strip-unneeded galsim/_galsim*.so)
  mkdir -p .whl
  tar -cJf "$SITE_TAR.tmp" -C "$tmp/site" . && mv "$SITE_TAR.tmp" "$SITE_TAR"
  rm -rf "$tmp"
  ls -la "$SITE_TAR"
}

if [[ $MODE == prepare ]]; then prepare; exit 0; fi
if [[ $MODE != run ]]; then echo "gpu_run.sh: mode '$MODE'; accepted: prepare, run" >&2; exit 2; fi

T0=$(date +%s)
if [[ -x .venv/bin/python ]]; then PY=${PYTHON:-.venv/bin/python}; else PY=${PYTHON:-python3}; fi
export PYTHONPATH="$ROOT/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 PYTHONHASHSEED=0
if [[ $PROFILE == smoke ]]; then
  OUTDIR=${OUT:-build/gpu_run/out}; DEVICE=cpu; BASE=smoke
  TOTAL_S=${GPU_RUN_TOTAL_S:-150}; TRAIN_S=${GPU_RUN_TRAIN_S:-10}; CHANNELS=${GPU_RUN_CHANNELS:-"16 32"}
  LAYERS=${GPU_RUN_LAYERS:-1}; BATCH=${GPU_RUN_BATCH:-16}; LR=${GPU_RUN_LR:-1e-4}; PROBE=9; THREADS=1
  BENCH_ARGS=(--profile smoke --device cpu --timed-steps 1 --precisions fp32 bf16 --other-batch-sizes 1)
  BENCH_JSON=bench_sampling_smoke_cpu.json
  BENCH_S=${GPU_RUN_BENCH_S:-40}; DRIFT_IMAGES=4; CAL_TRUTHS=2; CAL_HELDOUT=3
else
  OUTDIR=${OUT:-results}; DEVICE=cuda; BASE=quick
  TOTAL_S=${GPU_RUN_TOTAL_S:-575}; TRAIN_S=${GPU_RUN_TRAIN_S:-240}; CHANNELS=${GPU_RUN_CHANNELS:-"32 64 128 160"}
  LAYERS=${GPU_RUN_LAYERS:-1}; BATCH=${GPU_RUN_BATCH:-512}; LR=${GPU_RUN_LR:-3e-4}; PROBE=30; THREADS=8
  BENCH_ARGS=(--profile paper --device cuda --compile --compile-reserve-s "${GPU_RUN_COMPILE_RESERVE_S:-120}")
  BENCH_JSON=bench_sampling_gpu.json
  BENCH_S=${GPU_RUN_BENCH_S:-75}; DRIFT_IMAGES=100; CAL_TRUTHS=${GPU_RUN_CAL_TRUTHS:-100}; CAL_HELDOUT=48
fi
PEAK=${GPU_RUN_PEAK_TFLOPS:-989}
export DIFFDECON_CACHE=${DIFFDECON_CACHE:-$ROOT/build/gpu_run/cache}
CAND=build/gpu_run/${BASE}_candidate
mkdir -p "$OUTDIR" build/gpu_run
LOG=$OUTDIR/gpu_run.log
exec > >(tee -a "$LOG") 2>&1
echo "[gpu_run] $(date -u +%FT%TZ) profile $PROFILE, device $DEVICE, budget ${TOTAL_S} s, outputs in $OUTDIR"
[[ $DEVICE == cuda ]] && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
if ! "$PY" -c 'import galsim, diffusers, astropy' 2>/dev/null; then
  if [[ ! -f $SITE_TAR ]]; then
    echo "gpu_run.sh: $PY lacks galsim/diffusers/astropy and $SITE_TAR is absent:" \
         "run 'scripts/gpu_run.sh prepare' here and carry .whl" >&2; exit 3
  fi
  mkdir -p /tmp/diffdecon_site && tar -xJf "$SITE_TAR" -C /tmp/diffdecon_site
  export PYTHONPATH="$PYTHONPATH:/tmp/diffdecon_site"
fi
# report what imports (a failure is printed, not fatal: the steps that need the module fail alone)
"$PY" - <<'PYEOF'
import importlib
for name in ("torch", "numpy", "galsim", "astropy", "diffusers", "diffdecon"):
    try:
        m = importlib.import_module(name)
        print(f"[gpu_run] {name} {getattr(m, '__version__', '')} from {getattr(m, '__file__', '?')}")
    except Exception as err:  # noqa: BLE001
        print(f"[gpu_run] {name} does NOT import: {type(err).__name__}: {err}")
import torch
print(f"[gpu_run] cuda available: {torch.cuda.is_available()}")
PYEOF


# 1-2. training set and candidate prior (steps chosen by the probe to fit TRAIN_S)
rm -rf "$CAND"
T1=$(date +%s)
# --max-minutes is a backstop well above TRAIN_S: a stopped run is not exported
"$PY" scripts/train.py --profile "$BASE" --candidate "$CAND" --channels $CHANNELS --layers "$LAYERS" \
  --batch-size "$BATCH" --lr "$LR" --train-seconds "$TRAIN_S" --probe-steps "$PROBE" --device "$DEVICE" \
  --threads "$THREADS" --max-minutes "$(python3 -c "print($TRAIN_S * 1.3 / 60)")" --retrain || echo "[gpu_run] training FAILED"
T2=$(date +%s)
if [[ -f $CAND/ema_weights.pt ]]; then
  tar -C build/gpu_run -cf - "$(basename "$CAND")" | split -b 16000000 -d - "$OUTDIR/$(basename "$CAND").tar.part-"
  du -sh "$CAND"; ls -la "$OUTDIR"
  if (( $(du -cb "$OUTDIR"/*.tar.part-* | tail -1 | cut -f1) > 62000000 )); then
    echo "[gpu_run] WARNING: the candidate parts exceed 62 MB: the device tool returns at most 64 MiB from \$OUT"
  fi
fi

# 2b. the candidate against the committed prior on this machine (issue 10's measures): the chain's
#     drift under its own noising for both (bench_prior_drift), then calibration of the candidate
#     on its own draws at i = 22, 20, 18 (one run per magnitude, so a timeout loses one) and on
#     held-out galaxies; each run bounded by what is left before the sampler benchmark's share
left_s() { echo $(( TOTAL_S - BENCH_S - ($(date +%s) - T0) )); }
bounded() {  # bounded NAME CMD...: run CMD with the time left (at least 20 s), report a failure
  local name=$1; shift
  local lim; lim=$(left_s)
  if (( lim < 20 )); then echo "[gpu_run] $name skipped: ${lim} s left"; return 0; fi
  local t=$(date +%s)
  timeout "$lim" "$@" || echo "[gpu_run] $name FAILED or stopped at ${lim} s (rc $?)"
  echo "[gpu_run] $name took $(( $(date +%s) - t )) s"
}
EVAL=$OUTDIR/eval  # packed into one file afterwards: the device tool returns at most 8 files
if [[ -f $CAND/ema_weights.pt ]]; then
  T3=$(date +%s); mkdir -p "$EVAL"
  for who in committed candidate; do
    ck=(); [[ $who == candidate ]] && ck=(--checkpoint "$CAND")
    bounded "drift ($who)" "$PY" bench/bench_prior_drift.py --profile "$BASE" "${ck[@]}" --device "$DEVICE" \
      --images "$DRIFT_IMAGES" --threads "$THREADS" --output "$EVAL/prior_drift_${who}_gpu.json"
  done
  for mag in 22 20 18; do  # i = 22 first, with the most truths: the magnitude the committed prior fails at
    n=$CAL_TRUTHS; [[ $mag != 22 ]] && n=$(( CAL_TRUTHS > 3 ? (CAL_TRUTHS + 1) / 2 : 2 ))
    bounded "calibration i = $mag" "$PY" bench/bench_calibration.py --profile "$BASE" --checkpoint "$CAND" \
      --device "$DEVICE" --truths "$n" --heldout 0 --mags "$mag" --threads "$THREADS" \
      --output "$EVAL/calibration_candidate_i${mag}_gpu.json"
  done
  bounded "calibration held out" "$PY" bench/bench_calibration.py --profile "$BASE" --checkpoint "$CAND" \
    --device "$DEVICE" --truths 0 --heldout "$CAL_HELDOUT" --mags 18 20 22 --threads "$THREADS" \
    --output "$EVAL/calibration_candidate_heldout_gpu.json"
  echo "[gpu_run] candidate evaluation took $(( $(date +%s) - T3 )) s"
  tar -cf "$OUTDIR/eval_gpu.tar" -C "$OUTDIR" eval && rm -rf "$EVAL" && tar -tvf "$OUTDIR/eval_gpu.tar"
fi

# 3. paper-scale sampler benchmark with what is left of the budget
LEFT=$(( TOTAL_S - ($(date +%s) - T0) - 10 ))
if (( LEFT < 30 )); then LEFT=30; fi
echo "[gpu_run] training + export took $((T2 - T1)) s; sampler benchmark budget ${LEFT} s"
"$PY" bench/bench_paper_sampler.py "${BENCH_ARGS[@]}" --budget-s "$LEFT" --peak-tflops "$PEAK" \
  --out "$OUTDIR/$BENCH_JSON" || echo "[gpu_run] sampler benchmark FAILED"
echo "[gpu_run] $(date -u +%FT%TZ) done in $(( $(date +%s) - T0 )) s"
