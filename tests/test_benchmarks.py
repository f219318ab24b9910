"""The benchmarks' quick modes run and print their tables (no timing asserted)."""

import os
import subprocess
import sys

import keras
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_quick(script):
    result = subprocess.run(
        [sys.executable, os.path.join(ROOT, "benchmarks", script), "--quick"],
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, "KERAS_BACKEND": keras.backend.backend()},
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_adaptive_overhead_quick():
    output = run_quick("adaptive_overhead.py")
    assert f"backend {keras.backend.backend()}" in output
    rows = [line.split() for line in output.splitlines() if "AdaptiveModel" in line]
    assert len(rows) == 4  # Two models, two AdaptiveModel settings each.
    assert all(float(row[-1]) > 0 for row in rows)


def test_as_speed_quick():
    pytest.importorskip("sklearn", reason="benchmarks need the [examples] extra")
    output = run_quick("as_speed.py")
    table = output.split("target: each seed's best softmax validation accuracy")[-1]
    for method in ("softmax", "AS-Softmax", "AS-Softmax + AS-Speed"):
        assert method in table


def test_loss_cost_quick():
    output = run_quick("loss_cost.py")
    rows = [
        line.split()
        for line in output.splitlines()
        if line.startswith(("sparse ", "multilabel "))
    ]
    assert {row[0] for row in rows} == {"sparse", "multilabel"}
    for row in rows:  # Baseline ms, AS ms and their ratio are positive numbers.
        assert float(row[4]) > 0 and float(row[5]) > 0
        assert float(row[6]) == pytest.approx(float(row[5]) / float(row[4]), rel=0.05)
