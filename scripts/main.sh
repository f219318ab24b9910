#!/usr/bin/env bash
# Sets up a fresh virtual environment and runs the main job: the comparison
# on Fashion-MNIST (python -m benchmarks.compare), its table and
# fashion_mnist.png; --dataset digits runs it on scikit-learn's digits.
# Usage: bash scripts/main.sh [main job args...]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh .venv
.venv/bin/python -m benchmarks.compare "$@"
