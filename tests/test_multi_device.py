"""AS-Speed with data parallelism on two virtual CPU devices."""

import json
import os
import subprocess
import sys

import keras
import pytest

pytestmark = pytest.mark.slow

BACKEND = keras.backend.backend()
# TensorFlow runs without XLA here: under MirroredStrategy on CPU devices,
# `jit_compile=True` fails for a plain Keras model too (XLA cannot reach a
# variable on another device).
MODES = {"jax": ["graph", "jit"], "tensorflow": ["graph"]}.get(BACKEND, [])


@pytest.mark.skipif(
    BACKEND == "torch",
    reason="Keras's torch trainer has no data-parallel distribution to test.",
)
@pytest.mark.parametrize("mode", MODES)
def test_two_devices_match_one(mode):
    result = subprocess.run(
        [sys.executable, "-m", "tests.multi_device_check", mode],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "KERAS_BACKEND": BACKEND},
        cwd=os.path.dirname(os.path.dirname(__file__)),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    single, multi = report["single"], report["multi"]
    # Masked samples fill each batch from the front, so the first device sees
    # more than its share: only the global count gives the same windows.
    assert 3 in single["windows"]
    assert multi["windows"] == single["windows"]
    assert multi["updates"] == single["updates"]
    assert multi["masked_ratio"] == pytest.approx(single["masked_ratio"], abs=1e-6)
    assert report["max_weight_difference"] < 1e-5
