"""The benchmarks' quick modes run and print their tables.

No speed is asserted; the tables' columns must agree with each other.
"""

import os
import subprocess
import sys

import keras
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_quick(script, *args):
    result = subprocess.run(
        [sys.executable, os.path.join(ROOT, "benchmarks", script), "--quick", *args],
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


def test_as_speed_quick(tmp_path):
    pytest.importorskip("sklearn", reason="benchmarks need the [examples] extra")
    pytest.importorskip("matplotlib", reason="benchmarks need the [examples] extra")
    from tests.test_examples import markdown_rows  # Needs the [examples] extra.

    backend = keras.backend.backend()
    # Threshold 0: every epoch after the first counts, so the second table
    # has numbers.
    output = run_quick("as_speed.py", "--steady-masked", "0",
                       "--plot", str(tmp_path / "plot.png"))
    rows = markdown_rows(output, "method")
    methods = ["softmax CE", "AS-Softmax", "AS-Speed", "AS-Speed + skipping"]
    assert list(rows) == methods
    assert "target: 99.5% of softmax CE's best val_accuracy in the same seed" in output
    steps = 2 * 13  # Two epochs of 400 digits in batches of 32.
    as_softmax_ms = float(rows["AS-Softmax"]["ms/batch"])
    for name, row in rows.items():
        ms = float(row["ms/batch"])
        speedup = pytest.approx(as_softmax_ms / ms, rel=0.02, abs=0.01)  # Rounded.
        assert float(row["speedup"]) == speedup
        # Compilation plus a steady epoch: the first epoch's training time.
        assert float(row["compile s"]) + ms * steps / 2 / 1000 > 0
        assert 0.0 <= float(row["best val_accuracy"]) <= 1.0
        if row["reached"] == "1/1":
            assert float(row["s to target"]) > 0
            assert float(row["to-target speedup"]) > 0
        else:
            assert row["reached"] == "0/1"
            assert row["s to target"] == row["to-target speedup"] == "-"
        if name.startswith("AS-Speed"):
            assert steps / 2 <= int(row["updates"]) <= steps
        else:
            assert int(row["updates"]) == steps
        if name == "AS-Speed + skipping":
            assert 0.0 < float(row["backward"]) <= 1.0
        else:
            assert row["backward"] == "-"
    assert rows["softmax CE"]["reached"] == "1/1"
    assert rows["softmax CE"]["to-target speedup"] == "1.00"
    assert rows["AS-Softmax"]["speedup"] == "1.00"

    masked = markdown_rows(output, "seed")
    assert list(masked) == ["0"]
    (row,) = masked.values()
    assert row["epochs"] == "1"
    assert float(row["ratio"]) == pytest.approx(
        float(row["AS-Softmax ms/batch"]) / float(row["AS-Speed + skipping ms/batch"]),
        rel=0.02, abs=0.01,
    )
    # The second epoch is the one both tables measure.
    assert row["AS-Softmax ms/batch"] == rows["AS-Softmax"]["ms/batch"]
    assert (
        f"reproduce: python benchmarks/as_speed.py --backend {backend} --dataset digits "
        "--quick --batch-size 32 --delta 0.1 --max-accumulation-steps 2 "
        "--steady-masked 0.0" in output
    )


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
        # Each printed to 3 decimals: the ratio within their rounding.
        assert float(row[6]) == pytest.approx(
            float(row[5]) / float(row[4]), rel=0.05, abs=0.001
        )
