"""What the examples share: the backend flag, the comparison, its table and plot.

Every example imports this module before Keras, so that `--backend NAME`
chooses the Keras backend before Keras loads. An example describes its task
(data, model, metric) as a `Task`; `main` trains the same model, with the same
seeds and budget, once per `Method` (Keras's loss, AS-Softmax, AS-Speed and
AS-Speed + skipping), prints a per-epoch line while it runs, then a table, and
saves a plot. `benchmarks/as_speed.py` runs the same comparison and reports
it with other columns.
"""

import os
import sys

BACKENDS = ("tensorflow", "jax", "torch")


def _backend_from_argv(argv):
    for index, arg in enumerate(argv):
        if arg.startswith("--backend="):
            return arg.split("=", 1)[1]
        if arg == "--backend" and index + 1 < len(argv):
            return argv[index + 1]
    return None


if _backend_from_argv(sys.argv[1:]) in BACKENDS:
    os.environ["KERAS_BACKEND"] = _backend_from_argv(sys.argv[1:])
# TensorFlow's own C++ logger (`I tensorflow/...` lines, such as the CPU
# feature notice) reads this once, when TensorFlow loads.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import argparse  # noqa: E402
import contextlib  # noqa: E402
import dataclasses  # noqa: E402
import importlib.util  # noqa: E402
import re  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from typing import Callable  # noqa: E402

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


def _without_start_up_logs(text):
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
def _start_up_logs_filtered():
    """Runs the block with file descriptor 2 (where native libraries log)
    captured, then writes what it caught to stderr without the start-up log
    lines (`_without_start_up_logs`); Python's own warnings and errors stay."""
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
            sys.stderr.write(_without_start_up_logs(text))
            sys.stderr.flush()


# Keras loads here with the start-up logs left out, and so does TensorFlow
# when it is installed, whatever the backend (`keras.utils.set_random_seed`
# imports it to seed it too); on the TensorFlow backend its devices are set
# up here too (the CUDA probe, and on a GPU the device lines).
with _start_up_logs_filtered():
    import keras  # noqa: E402

    if importlib.util.find_spec("tensorflow") is not None:
        import tensorflow  # noqa: E402, F401

        if keras.backend.backend() == "tensorflow":
            tensorflow.config.list_logical_devices()

import numpy as np  # noqa: E402

from keras_as_softmax import AdaptiveModel  # noqa: E402
from keras_as_softmax import MultiLabelASSoftmaxCrossentropy  # noqa: E402
from keras_as_softmax import SparseASSoftmaxCrossentropy  # noqa: E402
from keras_as_softmax import adaptive  # noqa: E402

AS_SOFTMAX = "AS-Softmax"
AS_SPEED = "AS-Speed"
AS_SKIPPING = "AS-Speed + skipping"
# The target: this fraction of the reference method's best validation metric.
TARGET_FRACTION = 0.995


@dataclasses.dataclass
class Task:
    """One example's data, model and metric.

    Args:
        name: Short name, used for the plot's file name.
        title: What is compared, for the table and the plot.
        kind: `"single"` (integer targets `(N,)`), `"tokens"` (integer
            targets `(N, T)` with `ignore_class` for padding) or
            `"multilabel"` (multi-hot targets `(N, C)`).
        train: `(x, y)` or `(x, y, sample_weight)`.
        validation: The same for validation.
        build: `build(seed) -> (inputs, outputs)`: a functional graph whose
            outputs are logits; or `build(seed) -> model`, a `keras.Model`
            whose outputs are logits (such as a keras-hub task, which reads
            its own raw inputs). Called after the seed is set.
        metrics: `metrics(one_hot) -> list` of fresh metrics; the first is the
            one the table reports and the plot shows (on validation).
        num_classes: Number of classes or labels.
        ignore_class: The padding target of a `"tokens"` task.
        learning_rate: Adam's learning rate.
    """

    name: str
    title: str
    kind: str
    train: tuple
    validation: tuple
    build: Callable
    metrics: Callable
    num_classes: int
    ignore_class: int = None
    learning_rate: float = 1e-3


@dataclasses.dataclass
class Method:
    """One loss, and way of training with it, to compare.

    Args:
        name: Name in the table and the legend.
        loss: `loss() -> keras.losses.Loss`, a fresh loss.
        adaptive: Train with `AdaptiveModel` (AS-Speed's gradient
            accumulation).
        skip_masked: With `adaptive`, back-propagate only the samples that
            the loss does not mask (`AdaptiveModel(skip_masked=True)`).
        one_hot: Give the loss one-hot targets (Keras's label smoothing and
            focal loss need them).
        reference: The target is `TARGET_FRACTION` of this method's best
            validation metric in the same seed (one method per comparison).
    """

    name: str
    loss: Callable
    adaptive: bool = False
    skip_masked: bool = False
    one_hot: bool = False
    reference: bool = False


def accuracy(one_hot=False):
    """The single-label metric list: accuracy, named `accuracy`."""
    if one_hot:
        return [keras.metrics.CategoricalAccuracy(name="accuracy")]
    return [keras.metrics.SparseCategoricalAccuracy(name="accuracy")]


def methods_for(task, delta, baselines=False):
    """The methods compared for a task: Keras's baseline(s), AS-Softmax,
    AS-Speed and AS-Speed + skipping.

    The reference (for the target) is softmax cross-entropy: Keras's for a
    single-label or token task, the multi-label AS loss at delta 1 (which
    keeps every class) for a multi-label task.
    """
    if task.kind == "multilabel":
        plain = [
            Method("binary CE", lambda: keras.losses.BinaryCrossentropy(from_logits=True)),
            Method(
                "multi-label CE",
                lambda: MultiLabelASSoftmaxCrossentropy(delta=1.0),
                reference=True,
            ),
        ]
        as_loss = lambda: MultiLabelASSoftmaxCrossentropy(delta=delta)  # noqa: E731
    else:
        ignore_class = task.ignore_class if task.kind == "tokens" else None
        plain = [
            Method(
                "softmax CE",
                lambda: keras.losses.SparseCategoricalCrossentropy(
                    from_logits=True, ignore_class=ignore_class
                ),
                reference=True,
            )
        ]
        as_loss = lambda: SparseASSoftmaxCrossentropy(  # noqa: E731
            delta=delta, ignore_class=ignore_class
        )
    if baselines and task.kind == "single":
        plain += [
            Method(
                "label smoothing 0.1",
                lambda: keras.losses.CategoricalCrossentropy(
                    from_logits=True, label_smoothing=0.1
                ),
                one_hot=True,
            ),
            Method(
                "focal (gamma 2)",
                lambda: keras.losses.CategoricalFocalCrossentropy(from_logits=True),
                one_hot=True,
            ),
        ]
    elif baselines:
        raise SystemExit("--baselines is for single-label tasks only.")
    return plain + [
        Method(AS_SOFTMAX, as_loss),
        Method(AS_SPEED, as_loss, adaptive=True),
        Method(AS_SKIPPING, as_loss, adaptive=True, skip_masked=True),
    ]


def device_description():
    """Which device the backend trains on (Keras uses a GPU when it sees one)."""
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        return str(jax.devices()[0].device_kind)
    if backend == "tensorflow":
        import tensorflow as tf

        return "GPU" if tf.config.list_physical_devices("GPU") else "CPU"
    import torch

    return torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"


class EpochTrace(keras.callbacks.Callback):
    """Records, after each epoch, the logs, the times and the updates.

    `seconds` is the fit time so far (compilation and validation included);
    `train_seconds` is this epoch's training batches alone, timed up to the
    start of validation once the last training step has finished.
    """

    def __init__(self, label, monitor, epochs):
        super().__init__()
        self.label, self.monitor, self.epochs = label, monitor, epochs

    def on_train_begin(self, logs=None):
        self.start = time.perf_counter()
        self.rows = []

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch_start, self.train_end = time.perf_counter(), None

    def on_test_begin(self, logs=None):
        if self.train_end is None:  # Validation inside `fit`.
            self._finish_training_steps()

    def _finish_training_steps(self):
        # Reading a value the last step wrote waits for that step (JAX and
        # a GPU run asynchronously).
        self.updates = int(keras.ops.convert_to_numpy(self.model.optimizer.iterations))
        self.train_end = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        if self.train_end is None:
            self._finish_training_steps()
        row = {key: float(value) for key, value in logs.items()}
        row["seconds"] = time.perf_counter() - self.start
        row["train_seconds"] = self.train_end - self.epoch_start
        row["updates"] = self.updates
        self.rows.append(row)
        extra = "".join(
            f", {key.replace('_', ' ')} {row[key]:.2f}"
            for key in ("masked_ratio", "backward_fraction")
            if key in row
        )
        print(
            f"  {self.label} epoch {epoch + 1}/{self.epochs}: loss {row['loss']:.4f}, "
            f"{self.monitor} {row[self.monitor]:.4f}{extra}, {row['seconds']:.1f} s",
            flush=True,
        )


def final_masked_ratio(model, loss, data, limit=20000):
    """Fraction of the counted training samples the AS loss masks at the end.

    The logits come from `predict` run eagerly (`run_eagerly`). A compiled
    predict function would be a new one per trained model, traced on its
    first call (and again for the last, smaller batch) and called once or
    twice: time spent compiling for one pass, and TensorFlow counts the same
    step code traced on most of its calls and warns about retracing.
    """
    x, y, weight = (tuple(data) + (None,))[:3]
    # Chunks of about 2**25 logits (128 MiB in float32).
    chunk = max(1, 2**25 // int(np.prod(model.output_shape[1:])))
    masked = counted = 0
    run_eagerly, model.run_eagerly = model.run_eagerly, True
    try:
        for start in range(0, min(len(y), limit), chunk):
            part = slice(start, min(start + chunk, limit, len(y)))
            logits = model.predict(x[part], batch_size=256, verbose=0)
            m, c = loss.masked_counts(
                y[part], logits, None if weight is None else weight[part]
            )
            masked += int(keras.ops.convert_to_numpy(m))
            counted += int(keras.ops.convert_to_numpy(c))
    finally:
        # A later `predict` builds its compiled function afresh.
        model.run_eagerly, model.predict_function = run_eagerly, None
    return masked / max(counted, 1)


def _targets(y, method, task):
    if method.one_hot:
        return keras.utils.to_categorical(y, task.num_classes).astype("float32")
    return y


def build_model(task, method, seed, max_accumulation_steps):
    """The task's model for a method: an `AdaptiveModel` for AS-Speed (a
    model that `task.build` returns is converted by `adaptive`)."""
    built = task.build(seed)
    settings = dict(
        max_accumulation_steps=max_accumulation_steps, skip_masked=method.skip_masked
    )
    if isinstance(built, keras.Model):
        return adaptive(built, **settings) if method.adaptive else built
    if method.adaptive:
        return AdaptiveModel(*built, **settings)
    return keras.Model(*built)


def train_once(task, method, seed, epochs, batch_size, max_accumulation_steps):
    """Trains one model with one method and seed; returns its per-epoch record."""
    keras.utils.set_random_seed(seed)
    model = build_model(task, method, seed, max_accumulation_steps)
    loss = method.loss()
    metrics = task.metrics(method.one_hot)
    monitor = "val_" + metrics[0].name
    model.compile(
        optimizer=keras.optimizers.Adam(task.learning_rate),
        loss=loss,
        metrics=None,  # Not a keras-hub task's own "auto" metrics.
        weighted_metrics=metrics,
    )
    x, y, *weight = task.train
    x_val, y_val, *weight_val = task.validation
    trace = EpochTrace(f"{method.name} seed {seed}", monitor, epochs)
    model.fit(
        x,
        _targets(y, method, task),
        sample_weight=weight[0] if weight else None,
        batch_size=batch_size,
        epochs=epochs,
        validation_data=(x_val, _targets(y_val, method, task), *weight_val),
        callbacks=[trace],
        verbose=0,
    )
    scores = [row[monitor] for row in trace.rows]
    best = int(np.argmax(scores))
    masked = None
    if hasattr(loss, "masked_counts"):
        masked = final_masked_ratio(model, loss, task.train)
    backward = None
    if method.skip_masked:
        backward = float(np.mean([row["backward_fraction"] for row in trace.rows]))
    return {
        "rows": trace.rows,
        "best": scores[best],
        "best_epoch": best + 1,
        "seconds": trace.rows[-1]["seconds"],
        "updates": trace.rows[-1]["updates"],
        "masked": masked,
        "backward": backward,
        "monitor": monitor,
        "steps_per_epoch": int(np.ceil(len(y) / batch_size)),
    }


def train_all(task, methods, args):
    """Trains every method for every seed: `{method name: [record per seed]}`.

    Within a seed the methods train one after another, their order rotated
    by one per seed, so that on a shared machine they see the same load.
    """
    results = {method.name: [] for method in methods}
    for seed in range(args.seeds):
        shift = seed % len(methods)
        for method in methods[shift:] + methods[:shift]:
            results[method.name].append(
                train_once(task, method, seed, args.epochs, args.batch_size,
                           args.max_accumulation_steps)
            )
    return results


def mean_spread(values, fmt):
    """`mean ± std` over seeds, or `-` when there is nothing to report."""
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:{fmt}}"
    return f"{np.mean(values):{fmt}} ± {np.std(values):{fmt}}"


def _steady_seconds(run, epochs=None):
    """Median training seconds of `epochs` (indices; default every epoch
    after the first, which compiles), or None when there is none."""
    if epochs is None:
        epochs = range(1, len(run["rows"]))
    seconds = [run["rows"][i]["train_seconds"] for i in epochs]
    return float(np.median(seconds)) if seconds else None


def ms_per_batch(run, epochs=None):
    """Steady-state ms per training batch of one run: an epoch's training
    seconds per batch, median over `epochs` (as in `_steady_seconds`)."""
    seconds = _steady_seconds(run, epochs)
    return None if seconds is None else 1000 * seconds / run["steps_per_epoch"]


def compile_seconds(run):
    """First epoch's training seconds minus a steady epoch's: compilation
    and warm-up."""
    steady = _steady_seconds(run)
    return None if steady is None else run["rows"][0]["train_seconds"] - steady


def time_to_target(run, target):
    """Fit seconds until the end of the first epoch whose validation metric
    reaches `target`; None if none does."""
    for row in run["rows"]:
        if row[run["monitor"]] >= target:
            return row["seconds"]
    return None


def target_per_seed(methods, results):
    """`(reference name, [target per seed])`: `TARGET_FRACTION` of the
    reference method's best validation metric in each seed."""
    reference = next(method.name for method in methods if method.reference)
    return reference, [TARGET_FRACTION * run["best"] for run in results[reference]]


def _ratios(numerators, denominators):
    """Per seed `numerator / denominator`, None where either is missing."""
    return [
        None if a is None or not b else a / b
        for a, b in zip(numerators, denominators)
    ]


# What the less obvious columns of `summary` mean, printed under a table.
COLUMN_NOTES = {
    "ms/batch": "steady-state training time per batch: an epoch's training "
    "time (validation left out) / its batches, median over the epochs after "
    "the first",
    "speedup": f"{AS_SOFTMAX}'s ms/batch / this method's, per seed",
    "compile s": "first epoch's training time minus a steady epoch's "
    "(compilation and warm-up)",
    "wall s": "fit time, compilation and validation included",
    "s to target": "fit seconds until the end of the first epoch that reaches "
    "the target, over the seeds that reach it",
    "reached": "seeds that reach the target",
    "to-target speedup": "the reference's s to target / this method's, per seed",
    "final masked": "fraction of training samples whose AS-Softmax loss is 0 "
    "after training (the sample is already learned)",
    "backward": "mean over the epochs of the fraction of each batch's samples "
    f"back-propagated ({AS_SKIPPING} only)",
}


def summary(methods, results):
    """`{method name: {column: cell}}`: every column the tables can show,
    each cell `mean ± std` over the seeds."""
    reference, target = target_per_seed(methods, results)
    base_ms = [ms_per_batch(run) for run in results[AS_SOFTMAX]]
    base_time = [time_to_target(run, t) for run, t in zip(results[reference], target)]
    cells = {}
    for name, runs in results.items():
        ms = [ms_per_batch(run) for run in runs]
        to_target = [time_to_target(run, t) for run, t in zip(runs, target)]
        cells[name] = {
            "best": mean_spread([r["best"] for r in runs], ".4f"),
            "epoch of best": mean_spread([r["best_epoch"] for r in runs], ".1f"),
            "ms/batch": mean_spread(ms, ".2f"),
            "speedup": mean_spread(_ratios(base_ms, ms), ".2f"),
            "compile s": mean_spread([compile_seconds(r) for r in runs], ".1f"),
            "wall s": mean_spread([r["seconds"] for r in runs], ".1f"),
            "s to target": mean_spread(to_target, ".1f"),
            "reached": f"{sum(t is not None for t in to_target)}/{len(runs)}",
            "to-target speedup": mean_spread(_ratios(base_time, to_target), ".2f"),
            "updates": mean_spread([r["updates"] for r in runs], ".0f"),
            "final masked": mean_spread([r["masked"] for r in runs], ".1%"),
            "backward": mean_spread([r["backward"] for r in runs], ".2f"),
        }
    return cells


def markdown_table(header, rows):
    """The lines of a markdown table, padded so that its columns line up;
    the first column is aligned left, the others right."""
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows)]

    def line(cells):
        padded = [f"{cells[0]:<{widths[0]}}"]
        padded += [f"{cell:>{width}}" for cell, width in zip(cells[1:], widths[1:])]
        return "| " + " | ".join(padded) + " |"

    rule = "|" + "|".join(
        "-" * (w + 2) if i == 0 else "-" * (w + 1) + ":" for i, w in enumerate(widths)
    ) + "|"
    return [line(header), rule, *(line([str(c) for c in row]) for row in rows)]


TABLE_COLUMNS = ("best", "epoch of best", "ms/batch", "speedup", "wall s",
                 "s to target", "reached", "updates", "final masked", "backward")


def print_table(task, methods, results, args, columns=TABLE_COLUMNS):
    """Prints a markdown table of `columns` (keys of `summary`'s cells), one row
    per method, mean ± std over the seeds; then the target and what the
    columns mean."""
    monitor = next(iter(results.values()))[0]["monitor"]
    print(
        f"\n{task.title}; backend {keras.backend.backend()} on {device_description()}; "
        f"{args.seeds} seed(s), {args.epochs} epochs, batch {args.batch_size}, "
        f"delta {args.delta}, max accumulation steps {args.max_accumulation_steps}; "
        "mean ± std over seeds"
    )
    cells = summary(methods, results)
    header = ["method", *(f"best {monitor}" if c == "best" else c for c in columns)]
    rows = [[name, *(row[c] for c in columns)] for name, row in cells.items()]
    print("\n".join(markdown_table(header, rows)))
    reference, target = target_per_seed(methods, results)
    print(
        f"target: {TARGET_FRACTION:.1%} of {reference}'s best {monitor} in the same "
        f"seed ({mean_spread(target, '.4f')})"
    )
    for column in columns:
        if column in COLUMN_NOTES:
            print(f"{column}: {COLUMN_NOTES[column]}.")


def _band(axis, runs, key, label, color, x_key=None):
    """Mean over seeds per epoch (x: the epoch, or the mean of `x_key`),
    with a min-to-max band."""
    curves = np.array([[row[key] for row in run["rows"]] for run in runs])
    if x_key is None:
        x = np.arange(1, curves.shape[1] + 1)
    else:
        x = np.mean([[row[x_key] for row in run["rows"]] for run in runs], axis=0)
    axis.plot(x, curves.mean(axis=0), label=label, color=color, marker=".")
    if len(curves) > 1:
        axis.fill_between(x, curves.min(axis=0), curves.max(axis=0), color=color, alpha=0.2)


def save_plot(task, methods, results, args, path):
    """Validation metric per epoch and against fit time, and training loss,
    for each method; masked ratio and mean accumulation window per epoch for
    the AS-Speed methods; backward fraction for AS-Speed + skipping."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    monitor = next(iter(results.values()))[0]["monitor"]
    colors = dict(zip(results, plt.rcParams["axes.prop_cycle"].by_key()["color"]))
    figure, axes = plt.subplots(2, 3, figsize=(17, 8))
    for name, runs in results.items():
        _band(axes[0, 0], runs, monitor, name, colors[name])
        _band(axes[0, 1], runs, monitor, name, colors[name], x_key="seconds")
        _band(axes[0, 2], runs, "loss", name, colors[name])
    reference, target = target_per_seed(methods, results)
    axes[0, 1].axhline(np.mean(target), color="gray", linestyle="--",
                       label=f"target ({TARGET_FRACTION:.1%} of {reference})")
    for method in methods:
        if not method.adaptive:
            continue
        runs = results[method.name]
        for run in runs:
            updates = np.diff([0] + [row["updates"] for row in run["rows"]])
            for row, count in zip(run["rows"], updates):
                row["window"] = run["steps_per_epoch"] / max(count, 1)
        _band(axes[1, 0], runs, "masked_ratio", method.name, colors[method.name])
        _band(axes[1, 1], runs, "window", method.name, colors[method.name])
        if method.skip_masked:
            _band(axes[1, 2], runs, "backward_fraction", method.name, colors[method.name])
    panels = [
        (f"validation {monitor[4:]}", monitor[4:]),
        (f"validation {monitor[4:]} against fit time", monitor[4:]),
        ("training loss (each method's own loss)", "loss"),
        ("AS-Speed: masked ratio of training batches", "masked ratio"),
        ("AS-Speed: mean accumulation window", "batches per update"),
        ("AS-Speed + skipping: fraction of each batch back-propagated",
         "backward fraction"),
    ]
    for axis, (title, ylabel) in zip(axes.flat, panels):
        axis.set_title(title)
        axis.set_ylabel(ylabel)
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
        if axis is axes[0, 1]:
            axis.set_xlabel("fit seconds (mean over seeds)")
            axis.set_xlim(left=0)
        else:
            axis.set_xlabel("epoch")
            axis.xaxis.set_major_locator(MaxNLocator(integer=True))
            axis.set_xlim(0.5, args.epochs + 0.5)
    spread = " (band: min to max over seeds)" if args.seeds > 1 else ""
    figure.suptitle(
        f"{task.title}\nbackend {keras.backend.backend()}, {args.seeds} seed(s), "
        f"delta {args.delta}{spread}"
    )
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def parser(description, epochs, batch_size, delta=0.1, seeds=3):
    """The examples' common command line, with an example's defaults."""
    parser = argparse.ArgumentParser(
        description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--backend", choices=BACKENDS,
                        help="Keras backend (default: KERAS_BACKEND, else Keras's default)")
    parser.add_argument("--seeds", type=int, default=seeds,
                        help=f"seeds per method, reported as mean ± std (default {seeds})")
    parser.add_argument("--epochs", type=int, default=epochs)
    parser.add_argument("--batch-size", type=int, default=batch_size)
    parser.add_argument("--delta", type=float, default=delta,
                        help=f"AS-Softmax delta in [0, 1] (default {delta})")
    parser.add_argument("--max-accumulation-steps", type=int, default=2,
                        help="AS-Speed's largest window (default 2)")
    parser.add_argument("--baselines", action="store_true",
                        help="also Keras's label smoothing and focal loss (single-label)")
    parser.add_argument("--plot", help="PNG path (default: <example>.png here)")
    parser.add_argument("--quick", action="store_true",
                        help="a tiny slice, 1 seed, 2 epochs: a smoke test for CPU")
    parser.add_argument("--train-size", type=int,
                        help="train on the first N training samples only (a "
                        "shorter benchmark on a CPU)")
    return parser


def prepare(make_task, args):
    """Applies `--quick`, checks `--delta`, builds the task and prints what is
    compared; returns `(task, methods)`."""
    if args.quick:
        args.seeds, args.epochs = 1, 2
    if not 0.0 <= args.delta <= 1.0:
        raise SystemExit(f"--delta must be in [0, 1], got {args.delta}.")
    task = make_task(quick=args.quick)
    if args.train_size:
        task.train = tuple(a[: args.train_size] for a in task.train)
    methods = methods_for(task, args.delta, args.baselines)
    print(
        f"{task.title}: {len(task.train[1])} training / {len(task.validation[1])} "
        f"validation samples; backend {keras.backend.backend()} on "
        f"{device_description()}; comparing {', '.join(m.name for m in methods)}",
        flush=True,
    )
    return task, methods


def report(task, methods, results, args, columns=TABLE_COLUMNS):
    """Prints the table of `columns` and saves the plot (`--plot`, by default
    `<task name>.png` here)."""
    print_table(task, methods, results, args, columns)
    path = args.plot or f"{task.name}.png"
    save_plot(task, methods, results, args, path)
    print(f"plot: {path}")


def main(make_task, args):
    """Runs every method for every seed, prints the table, saves the plot."""
    task, methods = prepare(make_task, args)
    results = train_all(task, methods, args)
    report(task, methods, results, args)
    return results
