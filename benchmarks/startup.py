"""The backend flag, and Keras loaded without the native libraries' start-up logs.

`load_keras()` runs before anything imports Keras (`benchmarks.comparison`
calls it on import): it sets `KERAS_BACKEND` from a `--backend NAME` on the
command line, then imports Keras, and TensorFlow when it is installed (Keras
imports it on every backend: `keras.utils.set_random_seed` seeds it too),
with what their native libraries write to the process's stderr while they
start left out. So a run prints its progress lines, its table and its plot's
path, and nothing else unless something is wrong. Importing this module does
nothing of that by itself.
"""

import contextlib
import importlib.util
import os
import re
import sys
import tempfile

BACKENDS = ("tensorflow", "jax", "torch")

# What native libraries log to the process's stderr while they start. In
# recent TensorFlow releases (2.19 to 2.21 at least) most start-up lines
# (oneDNN, the CUDA stubs and probe) go through Abseil's logger before
# anything calls `absl::InitializeLog()`, and Abseil then writes every
# severity to stderr, after a preamble, whatever TF_CPP_MIN_LOG_LEVEL says;
# on a machine without a GPU the CUDA probe logs its failure as an error.
_ABSL_PREAMBLE = (
    "WARNING: All log messages before absl::InitializeLog() is called are "
    "written to STDERR"
)
_NATIVE_LOG_LINE = re.compile(
    # Abseil's: before its initialisation the time reads 00:00:<epoch seconds>.
    r"(?P<absl>[IWEF])\d{4} \d\d:\d\d:\d+\.\d+ +\d+ \S+:\d+\] "
    r"|\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+: (?P<tf>[IWEF]) \S+:\d+\] "  # TF's own
)
# Errors that only say that no GPU (or CUDA library) was found, or that a CUDA
# plugin was registered twice; other errors stay.
_START_UP_ERRORS = ("failed call to cuInit", "Unable to register cu")


def backend_from_argv(argv):
    """The NAME of a `--backend NAME` or `--backend=NAME` in `argv`, else None."""
    for index, arg in enumerate(argv):
        if arg.startswith("--backend="):
            return arg.split("=", 1)[1]
        if arg == "--backend" and index + 1 < len(argv):
            return argv[index + 1]
    return None


def without_start_up_logs(text):
    """`text` without the native start-up log lines: Abseil's preamble, info
    and warning lines, and the errors of `_START_UP_ERRORS`."""
    kept = []
    for line in text.splitlines(keepends=True):
        if line.rstrip("\n") == _ABSL_PREAMBLE:
            continue
        match = _NATIVE_LOG_LINE.match(line)
        if match:
            severity = match.group("absl") or match.group("tf")
            if severity in "IW" or any(s in line for s in _START_UP_ERRORS):
                continue
        kept.append(line)
    return "".join(kept)


@contextlib.contextmanager
def start_up_logs_filtered():
    """Runs the block with file descriptor 2 (where native libraries log)
    captured, then writes what it caught to stderr without the start-up log
    lines (`without_start_up_logs`); Python's own warnings and errors stay."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            text = captured.read().decode(errors="replace")
            sys.stderr.write(without_start_up_logs(text))
            sys.stderr.flush()


def load_keras(argv=None):
    """Chooses the backend from `--backend` in `argv` (default `sys.argv`),
    then imports Keras (and TensorFlow when installed; on the TensorFlow
    backend its devices are set up too: the CUDA probe, and on a GPU the
    device lines) with the start-up logs left out."""
    backend = backend_from_argv(sys.argv[1:] if argv is None else argv)
    if backend in BACKENDS:
        os.environ["KERAS_BACKEND"] = backend
    # TensorFlow's own C++ logger (`I tensorflow/...` lines, such as the CPU
    # feature notice) reads this once, when TensorFlow loads.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    with start_up_logs_filtered():
        import keras

        if importlib.util.find_spec("tensorflow") is not None:
            import tensorflow

            if keras.backend.backend() == "tensorflow":
                tensorflow.config.list_logical_devices()


def device_description():
    """Which device the backend trains on (Keras uses a GPU when it sees one)."""
    import keras

    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        return str(jax.devices()[0].device_kind)
    if backend == "tensorflow":
        import tensorflow as tf

        return "GPU" if tf.config.list_physical_devices("GPU") else "CPU"
    import torch

    return torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"
