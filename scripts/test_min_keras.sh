#!/usr/bin/env bash
# Runs the AS-Speed tests (tests/test_as_speed.py, tests/test_skipping.py,
# tests/test_sample_buffer.py, tests/test_pruning.py,
# tests/test_existing_models.py) on
# the JAX backend against the oldest Keras this package supports
# (pyproject.toml: keras>=3.9), in a fresh virtual environment, so that the
# floor stays true. Keras 3.9 is the floor because the JAX train step calls
# `_update_metrics_variables` (new in 3.9) and `_keras_private` imports
# `unscale_loss_for_distribution` (new in 3.8). Keras 3.9's JAX trainer calls
# `jax.spmd_mode`, which JAX removed in 0.6.1, hence the JAX pin. Only the JAX
# backend is tested here.
# Usage: bash scripts/test_min_keras.sh [VENV_DIR]
#        (default /tmp/keras-as-softmax-min-venv; emptied first)
set -euo pipefail
venv="${1:-/tmp/keras-as-softmax-min-venv}"
cd "$(dirname "$0")/.."
start=$SECONDS
python3 -m venv --clear "$venv"
"$venv/bin/python" -m pip install --quiet --upgrade pip
"$venv/bin/python" -m pip install --quiet "keras==3.9.0" "jax[cpu]==0.6.0" \
  numpy pytest hypothesis
"$venv/bin/python" -m pip install --quiet --no-deps -e .
echo "=== Oldest supported Keras: $(KERAS_BACKEND=jax "$venv/bin/python" -c \
  'import jax, keras; print("keras", keras.__version__, "jax", jax.__version__)')"
KERAS_BACKEND=jax "$venv/bin/python" -m pytest -q -p no:cacheprovider \
  tests/test_as_speed.py tests/test_skipping.py tests/test_sample_buffer.py \
  tests/test_pruning.py tests/test_existing_models.py
echo "Oldest-Keras tests finished in $((SECONDS - start)) s"
