"""The examples' and the main job's quick modes run on this backend, print
their table and plot.

Each script is run as a user runs it (`python -m examples.NAME` or `python
-m benchmarks.compare` from the repository root, a subprocess with `--quick`
and `--backend`), on a tiny slice on the CPU (`--train-size` makes the
larger examples' slices smaller still: their runs were most of the full
suite's time). Nothing about speed is
asserted, only that the table's columns agree with each other and with the
run.
"""

import os
import re
import subprocess
import sys

import keras
import numpy as np
import pytest

from benchmarks import startup
from examples import datasets
from tests.helpers import markdown_rows

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BACKEND = keras.backend.backend()
FOUR_METHODS = ["softmax CE", "AS-Softmax", "AS-Speed", "AS-Speed + skipping"]
# A warning or a native library's log line: Python's and TensorFlow's warnings
# (`WARNING:tensorflow:... triggered tf.function retracing`, `...: UserWarning:`)
# and Abseil's lines (`I0000 00:00:1795678434.819528    6213 port.cc:153] ...`).
LOG_LINE = re.compile(r"WARNING|Warning:|retracing|^[IWEF]\d{4} \d\d:\d\d:\d")

pytest.importorskip("matplotlib", reason="examples need the [examples] extra")
pytest.importorskip("sklearn", reason="examples need the [examples] extra")


def run_example(module, tmp_path, *args, env_backend=BACKEND):
    """Runs `python -m module --quick --backend BACKEND` from the repository
    root, its plot in `tmp_path`."""
    plot = tmp_path / "plot.png"
    result = subprocess.run(
        [sys.executable, "-m", module, "--quick",
         "--backend", BACKEND, "--plot", str(plot), *args],
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, "KERAS_BACKEND": env_backend},
        cwd=ROOT,
    )
    return result, plot


def progress(output, method):
    """The per-epoch lines of `method` (seed 0): `[(metric, fit seconds)]`."""
    line = re.compile(
        rf"^  {re.escape(method)} seed 0 epoch \d+/\d+: loss \S+, val_\w+ (\S+)"
        r"(?:, .*)?, (\S+) s$", re.M,
    )
    return [(float(value), seconds) for value, seconds in line.findall(output)]


def check_comparison(result, plot, methods, num_train, batch_size, epochs=2, delta=0.1):
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"backend {BACKEND}" in result.stdout
    rows = markdown_rows(result.stdout, "method")
    assert list(rows) == methods
    reference = "multi-label CE" if "multi-label CE" in methods else "softmax CE"
    assert f"target: 99.5% of {reference}'s best val_" in result.stdout
    # Softmax CE reaches 99.5 % of its own best, at or before its best epoch.
    assert rows[reference]["reached"] == "1/1"
    steps = epochs * int(np.ceil(num_train / batch_size))
    as_softmax_ms = float(rows["AS-Softmax"]["ms/batch"])
    for name, row in rows.items():
        (best,) = [value for column, value in row.items() if column.startswith("best val_")]
        # The table agrees with the run's per-epoch lines: best metric, its
        # epoch, the fit time, and the first epoch at the target.
        epochs_run = progress(result.stdout, name)
        assert len(epochs_run) == epochs
        scores = [score for score, _ in epochs_run]
        assert float(best) == max(scores)
        assert float(row["epoch of best"]) == scores.index(max(scores)) + 1
        assert row["wall s"] == epochs_run[-1][1]
        ms, wall = float(row["ms/batch"]), float(row["wall s"])
        assert 0 < ms * steps / epochs / 1000 < wall  # An epoch's batches, in the fit.
        speedup = pytest.approx(as_softmax_ms / ms, rel=0.02, abs=0.01)  # Rounded.
        assert float(row["speedup"]) == speedup
        if row["reached"] == "1/1":
            assert row["s to target"] in [seconds for _, seconds in epochs_run]
        else:
            assert (row["reached"], row["s to target"]) == ("0/1", "-")
        if "buffer" in name:  # Stretches of at most 8 batches, one more at the end.
            assert steps / 8 <= int(row["updates"]) <= steps + 1
        elif name.startswith("AS-Speed"):  # One update per window of 1 or 2 batches.
            assert steps / 2 <= int(row["updates"]) <= steps
        else:
            assert int(row["updates"]) == steps
        if name.startswith("AS-") and delta == 1.0:  # delta 1 keeps every class.
            assert row["final masked"] == "0.0%"
        elif name.startswith("AS-"):
            assert re.fullmatch(r"\d{1,3}\.\d%", row["final masked"])
        elif name == "multi-label CE":  # The AS loss at delta = 1 masks nothing.
            assert row["final masked"] == "0.0%"
        else:
            assert row["final masked"] == "-"
        if "skipping" in name:
            assert 0.0 < float(row["backward"]) <= 1.0
        else:
            assert row["backward"] == "-"
    assert rows["AS-Softmax"]["speedup"] == "1.00"
    with open(plot, "rb") as file:
        assert file.read(8) == b"\x89PNG\r\n\x1a\n"
    assert os.path.getsize(plot) > 20_000  # Six panels with curves and text.
    return rows


def check_own_run(result, metric, epochs=2):
    """The example's own training run, before the comparison, printed its
    result; returns it."""
    found = re.search(rf"^AS-[^:]+: (?:best )?(?:validation|test) {metric} (\d\.\d{{4}}) "
                      rf"after {epochs} epochs", result.stdout, re.M)
    assert found, result.stdout[:3000]
    return float(found.group(1))


@pytest.mark.slow
def test_main_job_quick(tmp_path):
    # `--backend` wins over KERAS_BACKEND: the environment names another one.
    other = next(b for b in ("tensorflow", "jax", "torch") if b != BACKEND)
    # Its default data set, Fashion-MNIST, on 512 images; its own rows and
    # two of `--baselines`' (each baseline's training is tested in
    # test_baselines).
    methods = ["softmax CE", "sparsemax", "top-5 softmax", "AS-Softmax", "AS-Speed",
               "AS-Softmax + skipping", "AS-Speed + skipping", "AS-Speed + auto skipping",
               "AS-Speed + buffer skipping"]
    result, plot = run_example("benchmarks.compare", tmp_path, "--baselines",
                               "--methods", ",".join(methods[1:]),
                               "--train-size", "512", env_backend=other)
    check_comparison(result, plot, methods, num_train=512, batch_size=128)
    assert "Fashion-MNIST" in result.stdout
    # Only the progress lines, the table and the plot's path: no backend
    # start-up logs, no retracing warnings from the final masked-ratio pass.
    output = (result.stdout + result.stderr).splitlines()
    assert [line for line in output if LOG_LINE.search(line)] == []
    assert result.stderr == ""


@pytest.mark.slow
def test_digits_example_at_delta_one(tmp_path):
    """At delta 1 AS-Softmax is softmax cross-entropy and masks nothing."""
    result, plot = run_example("examples.digits", tmp_path, "--delta", "1.0")
    rows = check_comparison(result, plot, FOUR_METHODS, num_train=400,
                            batch_size=32, delta=1.0)
    # The same seed, model and loss values: the same best accuracy.
    assert len({row["best val_accuracy"] for row in rows.values()}) == 1
    # No sample masked: AS-Speed's window stays 1 (an update per batch) and
    # skipping back-propagates every sample.
    assert rows["AS-Speed"]["updates"] == rows["AS-Speed + skipping"]["updates"] == "26"
    assert rows["AS-Speed + skipping"]["backward"] == "1.00"
    # The example's own `compile`/`fit` is the comparison's AS-Softmax run.
    assert check_own_run(result, "accuracy") == progress(result.stdout, "AS-Softmax")[-1][0]


def test_start_up_log_filter():
    """The scripts leave out the native start-up log lines and keep the rest."""
    dropped = [
        "WARNING: All log messages before absl::InitializeLog() is called are "
        "written to STDERR",
        "I0000 00:00:1795678434.819528    6213 port.cc:153] oneDNN custom "
        "operations are on.",
        "I0000 00:00:1795678434.819893    6213 cudart_stub.cc:31] Could not find "
        "cuda drivers on your machine, GPU will not be used.",
        "W0000 00:00:1758131437.322781 3722519 computation_placer.cc:177] "
        "computation placer already registered.",
        "E0000 00:00:1795678438.064819    6213 cuda_platform.cc:52] failed call "
        "to cuInit: INTERNAL: CUDA error: Failed call to cuInit: UNKNOWN ERROR (303)",
        "2025-09-17 14:44:05.157831: I external/local_xla/xla/tsl/cuda/"
        "cudart_stub.cc:32] Could not find cuda drivers on your machine.",
    ]
    kept = [
        "E0000 00:00:1795678438.064819    6213 some_op.cc:52] a real error",
        "2025-09-17 14:44:05.176998: F tensorflow/core/x.cc:1] a fatal error",
        "/path/to/module.py:3: UserWarning: a Python warning",
        "Traceback (most recent call last):",
    ]
    text = "\n".join(dropped[:3] + kept[:2] + dropped[3:] + kept[2:]) + "\n"
    assert startup.without_start_up_logs(text) == "\n".join(kept) + "\n"


def test_backend_flag():
    assert startup.backend_from_argv(["--quick", "--backend", "torch"]) == "torch"
    assert startup.backend_from_argv(["--backend=jax", "--seeds", "2"]) == "jax"
    assert startup.backend_from_argv(["--seeds", "2", "--backend"]) is None


@pytest.mark.slow
def test_main_job_rejects_bad_delta(tmp_path):
    result, _ = run_example("benchmarks.compare", tmp_path, "--delta", "1.5")
    assert result.returncode != 0
    assert "--delta must be in [0, 1], got 1.5." in result.stderr


@pytest.mark.slow
def test_fashion_mnist_quick(tmp_path):
    result, plot = run_example("examples.fashion_mnist", tmp_path, "--train-size", "1024")
    check_comparison(result, plot, FOUR_METHODS, num_train=1024, batch_size=128)
    check_own_run(result, "accuracy")


@pytest.mark.slow
def test_wordnet_text_quick(tmp_path):
    result, plot = run_example("examples.wordnet_text", tmp_path, "--train-size", "2000")
    check_comparison(result, plot, FOUR_METHODS, num_train=2000, batch_size=128)
    check_own_run(result, "accuracy")


@pytest.mark.slow
def test_multilabel_quick(tmp_path):
    result, plot = run_example("examples.multilabel", tmp_path, "--train-size", "2000")
    check_comparison(
        result, plot,
        ["binary CE", "multi-label CE", *FOUR_METHODS[1:]],
        num_train=2000, batch_size=128,
    )
    assert "best val_f1" in result.stdout
    check_own_run(result, "micro F1")


@pytest.mark.slow
def test_token_spelling_quick(tmp_path):
    result, plot = run_example("examples.token_spelling", tmp_path, "--train-size", "1024")
    check_comparison(result, plot, FOUR_METHODS, num_train=1024, batch_size=32)
    check_own_run(result, "token accuracy")


def test_missing_fashion_mnist_says_how_to_get_it(monkeypatch, tmp_path):
    def offline():
        raise Exception("URL fetch failure")

    monkeypatch.setattr(keras.datasets.fashion_mnist, "load_data", offline)
    monkeypatch.setattr(datasets, "FASHION_MNIST_DIR", str(tmp_path))
    with pytest.raises(SystemExit, match="apt-get install dataset-fashion-mnist"):
        datasets.fashion_mnist()


def test_missing_wordnet_says_how_to_get_it(monkeypatch, tmp_path):
    monkeypatch.setattr(datasets, "WORDNET_DIR", str(tmp_path))
    with pytest.raises(SystemExit, match="apt-get install wordnet-base"):
        datasets.wordnet_synsets()


def test_local_fashion_mnist_matches_its_format(monkeypatch):
    monkeypatch.setattr(
        keras.datasets.fashion_mnist, "load_data",
        lambda: (_ for _ in ()).throw(Exception("offline")),
    )
    (x, y), (x_test, y_test) = datasets.fashion_mnist()
    assert x.shape == (60000, 28, 28, 1) and x_test.shape == (10000, 28, 28, 1)
    assert 0.0 <= x.min() and x.max() == 1.0
    assert sorted(np.unique(y)) == list(range(10))
    assert np.bincount(y_test).tolist() == [1000] * 10


def test_wordnet_parser():
    synsets = datasets.wordnet_synsets()
    by_key = {s.key: s for s in synsets}
    assert len(synsets) == 117659
    assert len({s.lexname for s in synsets}) == 45
    entity = by_key["n:00001740"]
    assert entity.lemmas == ["entity"] and entity.lexname == "noun.Tops"
    assert entity.hypernyms == []
    assert all(h in by_key for s in synsets for h in s.hypernyms)


@pytest.mark.slow
def test_keras_hub_text_quick(tmp_path):
    result, plot = run_example("examples.keras_hub_text", tmp_path)
    check_comparison(result, plot, FOUR_METHODS, num_train=512, batch_size=64)
    check_own_run(result, "accuracy")
    # It says which classifier ran: the preset, or the offline fallback.
    assert (
        "keras-hub BERT (pretrained bert_tiny_en_uncased)" in result.stdout
        or "keras-hub BERT (random backbone, WordPiece vocabulary of " in result.stdout
    )


@pytest.mark.slow
def test_keras_hub_text_without_keras_hub_says_how_to_get_it(tmp_path):
    (tmp_path / "keras_hub.py").write_text("raise ImportError('no keras-hub')\n")
    result = subprocess.run(
        [sys.executable, "-m", "examples.keras_hub_text", "--quick"],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(tmp_path)},
        cwd=ROOT,
    )
    assert result.returncode == 1
    assert "pip install keras-hub" in result.stderr
