#!/usr/bin/env bash
# The road-scene CamVid study (tools/camvid_study.py --scale cityscapes-gpu: the Cityscapes
# DeepLab of ../shared/data/pretrained fine-tuned on CamVid teaches PSPNet-MV2 students from
# ImageNet; 360x480 crops, bf16 AMP, teacher 4000 and students 2000 iterations, 5 paired seeds) on
# a lent GPU machine, in commands of at most 10 minutes each: the study stops at --time-limit and
# the next command resumes it.
#
#   bash tools/gpu_camvid_study.sh prepare   # here, once: fills gpu_carry/ (git-ignored, ~55 MB)
#   bash tools/gpu_camvid_study.sh run       # on the GPU machine, carrying gpu_carry; repeat
#   bash tools/gpu_camvid_study.sh tiny      # here, on CPU: the same steps at a tiny size
#
# prepare: CamVid as JPEG images (quality 90) + PNG labels (datasets/prepare_camvid.py --jpeg),
#   the pretrained files of ../shared/data/pretrained (.pth), and wheels (Python 3.12, x86-64) of
#   what the GPU image lacks: Detectron2 (the repacked wheel tools/setup_env.sh builds), fvcore,
#   iopath, yacs, termcolor, omegaconf, hydra-core, antlr4 and pycocotools. Its torch, torchvision,
#   timm, opencv, matplotlib and tqdm are used as they are.
# run: installs the wheels into /tmp/site, trains into output/camvid_gpu (kept on a warm machine
#   between commands; a fresh machine starts the study over), and copies the report and the sweep
#   plot to $OUT when there is one. Exit 3: time limit reached, run it again.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CARRY="${GPU_CARRY:-$ROOT/gpu_carry}"
SHARED="${RADKD_SHARED_DATA:-$ROOT/../shared/data}"
PY="${PYTHON:-python3}"
LIMIT="${STUDY_TIME_LIMIT:-540}"  # seconds of training per command: 10 minutes minus start-up
mode="${1:-}"

prepare() {
  local venv_py="$ROOT/.venv/bin/python"
  [ -x "$venv_py" ] || { echo "prepare needs the project venv: run 'make setup' first" >&2; exit 1; }
  for f in mobilenet_v2_imagenet_torchvision.pth deeplab_mobilenet_edgetpu075_cityscapes.pth; do
    [ -f "$SHARED/pretrained/$f" ] || { echo "missing $SHARED/pretrained/$f" >&2; exit 1; }
  done
  mkdir -p "$CARRY/data/pretrained" "$CARRY/wheels"
  "$venv_py" "$ROOT/datasets/prepare_camvid.py" --root "$CARRY/data" --source "$SHARED/camvid" --jpeg 90
  cp "$SHARED"/pretrained/*.pth "$CARRY/data/pretrained/"
  local d2="${RADKD_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/radkd-d2}/detectron2-0.7.2-py3-none-any.whl"
  [ -f "$d2" ] || { echo "missing $d2: run 'make setup' (it builds the repacked Detectron2 wheel)" >&2; exit 1; }
  cp "$d2" "$CARRY/wheels/"
  local pip=("$venv_py" -m pip --disable-pip-version-check -q)
  # pure-Python packages: wheels built here (fvcore and antlr4 publish source archives only)
  "${pip[@]}" wheel --no-deps -w "$CARRY/wheels" "fvcore==0.1.5.post20221221" "iopath==0.1.9" \
    "yacs==0.1.8" "termcolor==3.3.0" "omegaconf==2.3.1" "hydra-core==1.3.8" \
    "antlr4-python3-runtime==4.9.3"
  # compiled: the GPU image's Python is 3.12
  "${pip[@]}" download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d "$CARRY/wheels" "pycocotools==2.0.11"
  du -sh "$CARRY"
}

study() {  # study DATA_ROOT OUT_DIR [extra camvid_study.py arguments]
  local data="$1" out="$2"; shift 2
  local rc=0
  PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 "$PY" "$ROOT/tools/camvid_study.py" \
    --data-root "$data" --out "$out" --time-limit "$LIMIT" "$@" || rc=$?
  if [ -n "${OUT:-}" ] && [ -d "$out/report" ]; then
    cp "$out/report/report.md" "$OUT/" 2>/dev/null || true
    cp "$out/sweep.png" "$OUT/" 2>/dev/null || true
    [ -f "$out/padding.json" ] && cp "$out/padding.json" "$OUT/"
  fi
  [ $rc -eq 3 ] && echo "[gpu_camvid_study] time limit reached: run the same command again to go on"
  return $rc
}

case "$mode" in
  prepare) prepare ;;
  run)
    [ -d "$CARRY/wheels" ] || { echo "no $CARRY/wheels: run '$0 prepare' here and carry gpu_carry" >&2; exit 1; }
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /tmp/site "$CARRY"/wheels/*.whl
    export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
    nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv || true
    study "$CARRY/data" "$ROOT/output/camvid_gpu" --scale cityscapes-gpu --jobs 2
    ;;
  tiny)
    # the run step's study at a tiny size on CPU (the project venv; no wheels needed here), with
    # no time limit: how long it takes depends on the machine and its load, not on the code
    PY="$ROOT/.venv/bin/python"
    LIMIT="${STUDY_TIME_LIMIT:-0}"
    study "$SHARED" "${TINY_OUT:-$ROOT/output/camvid_gpu_tiny}" --scale cityscapes-gpu --iters 2 \
      --teacher-iters 2 --eval-period 1 --seeds 2 --sweep-seeds 1 --sweep-weights 1 --pad-type auto \
      --methods kd lad --opts INPUT.SEM_SEG.CROP_SIZE "(32, 48)" INPUT.MIN_SIZE_TEST 32 \
      SOLVER.IMS_PER_BATCH 2 DATALOADER.NUM_WORKERS 0 SOLVER.AMP.ENABLED False
    ;;
  *) echo "usage: $0 prepare|run|tiny" >&2; exit 2 ;;
esac
