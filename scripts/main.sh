#!/usr/bin/env bash
# Sets up a fresh virtual environment and runs the main job.
# Usage: bash scripts/main.sh [main job args...]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh .venv
.venv/bin/python examples/compare.py "$@"
