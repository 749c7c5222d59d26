#!/usr/bin/env bash
# Installs avs-edge for development in ./.venv: the Python packages (export + dev extras, torch CPU pinned) and the
# native plugins (ONNX Runtime custom ops always; CUDA kernels and the TensorRT plugin where their toolkits exist).
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    echo "[install] creating .venv with $($python --version)"
    "$python" -m venv .venv
fi
echo "[install] Python packages (pip install -e '.[dev]')"
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e ".[dev]"
echo "[install] native plugins (python -m plugins.build)"
.venv/bin/python -m plugins.build
