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
# libportaudio2: sounddevice's PortAudio (microphone input); everything else comes from PyPI wheels.
if command -v dpkg >/dev/null && ! dpkg -s libportaudio2 >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "[install] system package libportaudio2 (apt-get)"
        apt-get update -qq && apt-get install -y -qq libportaudio2 >/dev/null
    else
        echo "[install] libportaudio2 is missing: microphones stay unavailable until 'sudo apt-get install libportaudio2'"
    fi
fi
echo "[install] Python packages (pip install -e '.[dev]')"
.venv/bin/python -m pip install --quiet --disable-pip-version-check -c scripts/constraints.txt -e ".[dev]"
echo "[install] native plugins (python -m plugins.build)"
.venv/bin/python -m plugins.build
