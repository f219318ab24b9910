#!/usr/bin/env bash
# Creates a virtual environment and installs keras-as-softmax with CPU builds
# of all three backends, the test and the example dependencies, and the
# examples' local data sets (scripts/install_data.sh).
# Usage: bash scripts/install.sh [VENV_DIR]   (default .venv)
set -euo pipefail
venv="${1:-.venv}"
cd "$(dirname "$0")/.."
python3 -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --upgrade pip
# CPU builds: an unpinned `torch` would pull a multi-GB CUDA build.
"$venv/bin/python" -m pip install --quiet keras tensorflow-cpu "jax[cpu]" torch==2.13.0
"$venv/bin/python" -m pip install --quiet -e ".[test,examples]"
bash scripts/install_data.sh
echo "Installed into $venv: $("$venv/bin/python" -c 'import keras; print("keras", keras.__version__)')"
