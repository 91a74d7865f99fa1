#!/usr/bin/env bash
# One-shot set-up of kdzero on a Debian/Ubuntu machine: the offline Fashion-MNIST files and the Python packages.
#   bash scripts/setup.sh          # what a user needs to search and train
#   bash scripts/setup.sh --dev    # plus the test tools: PostgreSQL server, headless Chromium, pytest, ruff
# Run it inside the virtual environment you want the packages in (see README).
set -euo pipefail
cd "$(dirname "$0")/.."
dev=0
[ "${1:-}" = "--dev" ] && dev=1

sudo=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then sudo="sudo"; fi
fi

debs=(dataset-fashion-mnist)
[ "$dev" = 1 ] && debs+=(postgresql chromium chromium-driver)
if command -v apt-get >/dev/null 2>&1; then
  missing=()
  for p in "${debs[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  if [ "${#missing[@]}" -gt 0 ]; then
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}"
  fi
else
  echo "apt-get not found: install Fashion-MNIST yourself (python -m trainers teacher --download ...)" >&2
fi

python -m pip install -q --upgrade pip
if [ "$dev" = 1 ]; then
  python -m pip install -q -r requirements-dev.txt
else
  python -m pip install -q -r requirements.txt
fi
python -c "import torch, torchvision, optuna; print('kdzero set-up done: torch', torch.__version__, \
'torchvision', torchvision.__version__, 'optuna', optuna.__version__)"
