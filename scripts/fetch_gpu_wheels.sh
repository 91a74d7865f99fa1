#!/usr/bin/env bash
# Download, on a machine with PyPI, the wheels kdzero needs beyond the GPU machine's image (which has torch,
# numpy, scipy, scikit-learn, tqdm, filelock, PyYAML, MarkupSafe, narwhals): Optuna and its storage stack, plotly.
# They land in .whl/ (git-ignored through .git/info/exclude); the device tool carries that folder
# (`carry: [".whl"]`) and scripts/gpu_check.sh installs them there. The versions are the ones CI tests with.
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
mkdir -p .whl
platforms=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64; do
  platforms+=(--platform "$p")
done
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  "${platforms[@]}" -d .whl \
  optuna==5.1.0 sqlalchemy==2.1.9 alembic==1.20.1 mako==1.4.3 colorlog==6.12.0 plotly==7.1.0
du -sh .whl
ls .whl
