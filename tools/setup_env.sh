#!/usr/bin/env bash
# Create (or reuse) the project virtual environment with everything radkd-d2 needs.
#
# Usage: bash tools/setup_env.sh            # creates ./.venv
#        RADKD_VENV=/path/venv bash tools/setup_env.sh
#
# Steps: venv -> torch/torchvision -> repacked Detectron2 wheel -> other pinned packages
#        (requirements.txt, and requirements-docs.txt for the documentation site) -> `pip install -e .`
#        -> import/build check. A complete venv is detected by a stamp holding the hash of this
#        script and the requirement files, so a second run takes seconds.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${RADKD_VENV:-$ROOT/.venv}"
CACHE="${RADKD_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/radkd-d2}"
PYTHON="${PYTHON:-}"
D2_FORK="sal-detectron2==0.7.2"   # pure-Python upstream Detectron2 of mid-2024, see shared docs
STEP="start"

fail() { echo "[setup] FAILED at step '$STEP': $*" >&2; exit 1; }
trap 'rc=$?; [ $rc -ne 0 ] && echo "[setup] FAILED at step '"'"'$STEP'"'"' (exit $rc); see the output above." >&2' EXIT
step() { STEP="$1"; echo "[setup] $1"; }

stamp_value() {
  cat "$ROOT/tools/setup_env.sh" "$ROOT/requirements.txt" "$ROOT/requirements-docs.txt" "$ROOT/setup.py" \
    | sha256sum | cut -d' ' -f1
}
STAMP="$VENV/.radkd-setup-complete"

if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$(stamp_value)" ] && [ -x "$VENV/bin/python" ]; then
  step "check existing venv at $VENV"
  if "$VENV/bin/python" -c "import torch, torchvision, detectron2, fvcore, pycocotools, cv2, pytest, xdist, onnx, onnxruntime, sphinx, myst_parser, furo, radkd_d2" 2>/dev/null; then
    echo "[setup] venv complete, nothing to do"
    exit 0
  fi
  echo "[setup] stamp present but imports fail; reinstalling"
fi

step "find Python 3.11"
if [ -z "$PYTHON" ]; then
  for cand in python3.11 python3; do
    if command -v "$cand" >/dev/null && "$cand" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
      PYTHON="$cand"; break
    fi
  done
fi
[ -n "$PYTHON" ] || fail "Python 3.11 not found (torch 2.14.1 wheels here are for 3.11); set PYTHON=/path/to/python3.11"

step "create venv $VENV"
if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV" || fail "python -m venv failed"
fi
PY="$VENV/bin/python"
PIP=("$PY" -m pip --disable-pip-version-check)
"${PIP[@]}" install -q --upgrade "pip>=24" "wheel==0.45.1" "setuptools>=70,<81" || fail "could not upgrade pip/wheel/setuptools"

step "install torch 2.14.1 + torchvision 0.29.1"
if ! "$PY" -c "import torch, torchvision, sys; sys.exit(not (torch.__version__.startswith('2.14.1') and torchvision.__version__.startswith('0.29.1')))" 2>/dev/null; then
  "${PIP[@]}" install -q "torch==2.14.1" "torchvision==0.29.1" || fail "pip could not install torch==2.14.1 torchvision==0.29.1"
fi

step "build repacked Detectron2 wheel (cached in $CACHE)"
mkdir -p "$CACHE"
D2_WHEEL="$CACHE/detectron2-0.7.2-py3-none-any.whl"
if [ ! -f "$D2_WHEEL" ]; then
  WORK="$(mktemp -d)"
  "${PIP[@]}" download -q --no-deps --only-binary=:all: --python-version 3.10 -d "$WORK/dl" "$D2_FORK" \
    || fail "pip download $D2_FORK failed (registry unreachable?)"
  SRC_WHL="$(ls "$WORK"/dl/*.whl | head -1)"
  "$PY" -m wheel unpack -d "$WORK/unpacked" "$SRC_WHL" || fail "wheel unpack failed"
  "$PY" "$ROOT/tools/repack_detectron2.py" "$(ls -d "$WORK"/unpacked/*/ | head -1)" \
    || fail "repacking the Detectron2 wheel failed"
  mkdir -p "$WORK/out"
  "$PY" -m wheel pack -d "$WORK/out" "$(ls -d "$WORK"/unpacked/*/ | head -1)" || fail "wheel pack failed"
  mv "$(ls "$WORK"/out/*.whl | head -1)" "$D2_WHEEL.tmp" && mv "$D2_WHEEL.tmp" "$D2_WHEEL"
  rm -rf "$WORK"
fi

step "install Detectron2 and pinned requirements (runtime, tests, docs)"
"${PIP[@]}" install -q "$D2_WHEEL" -r "$ROOT/requirements.txt" -r "$ROOT/requirements-docs.txt" \
  || fail "pip install of detectron2 + requirements.txt + requirements-docs.txt failed"

step "install radkd-d2 (editable)"
"${PIP[@]}" install -q --no-deps --no-build-isolation -e "$ROOT" || fail "pip install -e . failed"

step "check: import detectron2 and build a RetinaNet and a SemanticSegmentor"
"$PY" - <<'PY' || fail "Detectron2 import/build check failed"
import detectron2, torch
from detectron2.config import get_cfg
from detectron2.modeling import build_model

for arch, backbone in (("RetinaNet", "build_retinanet_resnet_fpn_backbone"),
                       ("SemanticSegmentor", "build_resnet_fpn_backbone")):
    cfg = get_cfg()
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.META_ARCHITECTURE = arch
    cfg.MODEL.BACKBONE.NAME = backbone
    cfg.MODEL.RESNETS.OUT_FEATURES = ["res2", "res3", "res4", "res5"]
    cfg.MODEL.FPN.IN_FEATURES = ["res3", "res4", "res5"] if arch == "RetinaNet" else \
        ["res2", "res3", "res4", "res5"]
    build_model(cfg)
print("[setup] detectron2", detectron2.__version__, "torch", torch.__version__, ": RetinaNet and SemanticSegmentor build")
PY

stamp_value > "$STAMP"
echo "[setup] done: $VENV"
