"""The benchmarks' quick modes run and print their tables.

Each runs as `python -m benchmarks.NAME --quick` from the repository root,
in a subprocess. No speed is asserted; the tables' columns must agree with
each other and with the run's per-epoch lines.
"""

import os
import subprocess
import sys

import keras
import pytest

from tests.helpers import markdown_rows

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_quick(module, *args):
    result = subprocess.run(
        [sys.executable, "-m", f"benchmarks.{module}", "--quick", *args],
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, "KERAS_BACKEND": keras.backend.backend()},
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


@pytest.mark.slow
def test_adaptive_overhead_quick():
    output = run_quick("adaptive_overhead")
    assert f"backend {keras.backend.backend()}" in output
    rows = [line.split() for line in output.splitlines() if line.startswith("mlp ")]
    # The baseline, then window 1 and a maximum window of 2; the ratio is
    # the time per batch over the baseline's.
    assert [" ".join(row[1:-2]) for row in rows] == [
        "keras.Model", "AdaptiveModel, window 1", "AdaptiveModel, max window 2"
    ]
    baseline_ms = float(rows[0][-2])
    for row in rows:
        ms, ratio = float(row[-2]), float(row[-1])
        assert ms > 0
        assert ratio == pytest.approx(ms / baseline_ms, rel=0.005, abs=0.002)  # Rounded.
    assert rows[0][-1] == "1.000"


@pytest.mark.slow
def test_as_speed_quick(tmp_path):
    pytest.importorskip("sklearn", reason="benchmarks need the [examples] extra")
    pytest.importorskip("matplotlib", reason="benchmarks need the [examples] extra")

    backend = keras.backend.backend()
    # The rows the main job does not have (its quick run is tested in
    # test_examples), and those the masked tables compare. Threshold 0:
    # every epoch after the first counts, so those tables have numbers.
    methods = ["softmax CE", "AS-Softmax", "AS-Speed + skipping", "AS-Speed + pruning",
               "AS-Speed + pruning + skipping", "AS-Softmax + pruning + skipping"]
    output = run_quick("as_speed", "--dataset", "digits", "--steady-masked", "0",
                       "--methods", ",".join(methods[1:]),
                       "--plot", str(tmp_path / "plot.png"))
    rows = markdown_rows(output, "method")
    # With pruning rows the plot has a third row of panels (1200 pixels high).
    with open(tmp_path / "plot.png", "rb") as png:
        assert int.from_bytes(png.read(24)[20:24], "big") == 1200
    assert list(rows) == methods
    assert "target: 99.5% of softmax CE's best val_accuracy in the same seed" in output
    steps = 2 * 13  # Two epochs of 400 digits in batches of 32.
    as_softmax_ms = float(rows["AS-Softmax"]["ms/batch"])
    for name, row in rows.items():
        ms = float(row["ms/batch"])
        speedup = pytest.approx(as_softmax_ms / ms, rel=0.02, abs=0.01)  # Rounded.
        assert float(row["speedup"]) == speedup
        # Compilation plus a steady epoch is the first epoch's training time,
        # part of the fit time until the end of the epoch at the target
        # (both rounded to 0.1 s).
        first_epoch = float(row["compile s"]) + ms * steps / 2 / 1000
        assert first_epoch > 0
        assert 0.0 <= float(row["best val_accuracy"]) <= 1.0
        if row["reached"] == "1/1":
            assert first_epoch <= float(row["s to target"]) + 0.1
            # Softmax CE's time to the target over this method's, within the
            # rounding of the three cells.
            reference = float(rows["softmax CE"]["s to target"])
            seconds = float(row["s to target"])
            rounding = 0.05 / seconds + 0.05 * reference / seconds**2 + 0.005
            assert abs(float(row["to-target speedup"]) - reference / seconds) <= rounding
        else:
            assert row["reached"] == "0/1"
            assert row["s to target"] == row["to-target speedup"] == "-"
        if "buffer" in name:  # Stretches of at most 8 batches, one more at the end.
            assert steps / 8 <= int(row["updates"]) <= steps + 1
        elif "pruning" in name:  # Windows of at most 2 of the batches kept.
            pruned = float(row["pruned"])
            assert 0.0 <= pruned < 1.0 and 0.0 <= float(row["forgetting"]) <= 1.0
            assert steps * (1 - pruned) / 2 - 1 <= int(row["updates"]) <= steps
        elif name.startswith("AS-Speed"):
            assert steps / 2 <= int(row["updates"]) <= steps
        else:
            assert int(row["updates"]) == steps
        if "skipping" in name:
            assert 0.0 < float(row["backward"]) <= 1.0
        else:
            assert row["backward"] == "-"
        if "pruning" not in name:
            assert row["pruned"] == row["forgetting"] == "-"
    assert rows["softmax CE"]["reached"] == "1/1"
    assert rows["softmax CE"]["to-target speedup"] == "1.00"
    assert rows["AS-Softmax"]["speedup"] == "1.00"

    # One masked table per skipping method, each against AS-Softmax.
    for method in ("AS-Speed + skipping", "AS-Speed + pruning + skipping",
                   "AS-Softmax + pruning + skipping"):
        part = output[output.index(f"ms per batch once {method} masks"):]
        masked = markdown_rows(part, "seed")
        assert list(masked) == ["0"]
        (row,) = masked.values()
        assert row["epochs"] == "1"
        assert float(row["ratio"]) == pytest.approx(
            float(row["AS-Softmax ms/batch"]) / float(row[f"{method} ms/batch"]),
            rel=0.02, abs=0.01,
        )
        # The second epoch is the one both tables measure.
        assert row["AS-Softmax ms/batch"] == rows["AS-Softmax"]["ms/batch"]
        assert row[f"{method} ms/batch"] == rows[method]["ms/batch"]
    assert (
        f"reproduce: python -m benchmarks.as_speed --backend {backend} --dataset digits "
        "--quick --batch-size 32 --delta 0.1 --max-accumulation-steps 2 "
        f"--steady-masked 0.0 --prune-masked 0.5 --methods '{','.join(methods[1:])}'"
        in output
    )


@pytest.mark.slow
def test_loss_cost_quick():
    output = run_quick("loss_cost")
    backend = keras.backend.backend()
    modes = {"tensorflow": ["graph", "xla"], "jax": ["jit"], "torch": ["eager", "compile"]}
    header = next(line for line in output.splitlines() if line.startswith("loss "))
    assert header.split()[:11] == [
        "loss", "shape", "dtype", "mode", "base", "ms", "AS", "ms", "ratio", "ratio", "IQR"
    ]
    rows = [
        line.split()
        for line in output.splitlines()
        if line.startswith(("sparse ", "multilabel "))
    ]
    # Every configuration in every mode of the backend (the quick run leaves
    # torch.compile out for bfloat16), each once.
    expected = {
        (loss, shape, dtype, mode)
        for loss, shapes in (("sparse", ["64x10", "64x200", "4x8x200"]),
                             ("multilabel", ["64x10", "64x200"]))
        for shape in shapes
        for dtype in ("float32", "bfloat16")
        for mode in modes[backend]
        if not (mode == "compile" and dtype == "bfloat16")
    }
    keys = [tuple(row[:4]) for row in rows]
    assert sorted(keys) == sorted(expected)
    for row in rows:
        base_ms, as_ms, ratio = float(row[4]), float(row[5]), float(row[6])
        assert base_ms > 0 and as_ms > 0 and ratio > 0
        # The median per-round ratio lies within its interquartile range
        # (printed to 3 and 2 decimals).
        q1, q3 = (float(x) for x in row[7].split("-"))
        assert q1 - 0.0051 <= ratio <= q3 + 0.0051, row
        assert 0.0 < float(row[-2]) < 1.0  # About half the samples masked.
        assert int(row[-1]) == 3  # Rounds in a quick run.
        if backend == "jax":  # XLA's temporary buffers, in MB, and their ratio.
            base_mb, as_mb = float(row[8]), float(row[9])
            if row[1].endswith("x200"):  # Keras's CE keeps at least its softmax.
                assert base_mb > 0
            if row[0] == "sparse":  # AS keeps fewer B x C buffers than Keras's CE.
                assert as_mb <= base_mb, row
        else:
            assert row[8:11] == ["-", "-", "-"]


@pytest.mark.slow
def test_large_vocabulary_quick():
    # Two of the cases (each compiles its three losses): delta 1, then delta
    # 0.1 with 75 % of the rows confident; `--cases` says so in the command.
    output = run_quick("large_vocabulary", "--cases", "1.0/0.0", "0.1/0.75")
    rows = [line.strip("|").split("|") for line in output.splitlines()
            if line.startswith("| 512 ")]
    time_rows, (memory_row,) = rows[:-1], rows[-1:]
    # The loss masks the confident rows (counted on every 8th row).
    assert [(row[1].strip(), float(row[2])) for row in time_rows] == [
        ("1.0", 0.0), ("0.1", pytest.approx(0.75, abs=0.05))
    ]
    for row in time_rows:
        # Unfused, fused (the function), fused Loss; the two ratios.
        times = [float(row[i].split()[0]) for i in (3, 4, 5)]
        ratios = [float(row[i]) for i in (6, 7)]
        assert min(times) >= 0 and min(ratios) > 0
    # Peak growth of each loss, then temporaries: the growth less the gradients.
    peaks = [float(memory_row[i]) for i in (1, 2, 3)]
    temporaries = [float(memory_row[i]) for i in (4, 5, 6)]
    assert min(peaks) >= 0
    assert all(0 < value <= peak for value, peak in zip(temporaries, peaks))
    assert (
        f"reproduce: python -m benchmarks.large_vocabulary --backend "
        f"{keras.backend.backend()} --vocabularies 512 --tokens 256" in output
    )
    assert "--repeats 1 --cases 1.0/0.0 0.1/0.75" in output
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.large_vocabulary", "--quick", "--cases", "0.2/0.1"],
        capture_output=True, text=True, timeout=300, cwd=ROOT,
        env={**os.environ, "KERAS_BACKEND": keras.backend.backend()},
    )
    assert result.returncode != 0 and "'0.2/0.1' is not a case; choose from" in result.stderr
    pytest.importorskip("keras_hub", reason="--causal-lm needs the [examples] extra")
    output = run_quick("large_vocabulary", "--causal-lm")
    line = next(line for line in output.splitlines() if line.startswith("GPT2CausalLM"))
    assert "vocabulary 512" in line and "2 x 16 tokens, one step: loss" in line
    assert "--causal-lm --batch-size 2 --sequence-length 16" in output


@pytest.mark.slow
def test_as_speed_quick_on_wordnet(tmp_path):
    # Every `--dataset` loads through `compare.task` (WordNet's data also
    # gives its vocabulary); `--methods` keeps the reference and AS-Softmax
    # (the speedups' base).
    output = run_quick("as_speed", "--dataset", "wordnet", "--train-size", "2000",
                       "--methods", "AS-Speed", "--plot", str(tmp_path / "plot.png"))
    rows = markdown_rows(output, "method")
    assert list(rows) == ["softmax CE", "AS-Softmax", "AS-Speed"]
    assert "--methods 'AS-Speed'" in output
