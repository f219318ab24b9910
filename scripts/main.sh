#!/usr/bin/env bash
# Sets up a fresh virtual environment and runs the main job: the comparison
# on digits (python -m benchmarks.compare), its table and digits.png.
# Usage: bash scripts/main.sh [main job args...]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh .venv
.venv/bin/python -m benchmarks.compare "$@"
