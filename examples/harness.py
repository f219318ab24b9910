"""What the examples share: the backend flag, the comparison, its table and plot.

Every example imports this module before Keras, so that `--backend NAME`
chooses the Keras backend before Keras loads. An example describes its task
(data, model, metric) as a `Task`; `main` trains the same model, with the same
seeds and budget, once per loss (`Method`), prints a per-epoch line while it
runs, then a table, and saves a plot.
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
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's start-up chatter.

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import time  # noqa: E402
from typing import Callable  # noqa: E402

import keras  # noqa: E402
import numpy as np  # noqa: E402

from keras_as_softmax import AdaptiveModel  # noqa: E402
from keras_as_softmax import MultiLabelASSoftmaxCrossentropy  # noqa: E402
from keras_as_softmax import SparseASSoftmaxCrossentropy  # noqa: E402

AS_SPEED = "AS-Softmax + AS-Speed"


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
            outputs are logits. Called after the seed is set.
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
    """One loss to compare.

    Args:
        name: Name in the table and the legend.
        loss: `loss() -> keras.losses.Loss`, a fresh loss.
        adaptive: Train with `AdaptiveModel` (AS-Speed).
        one_hot: Give the loss one-hot targets (Keras's label smoothing and
            focal loss need them).
    """

    name: str
    loss: Callable
    adaptive: bool = False
    one_hot: bool = False


def accuracy(one_hot=False):
    """The single-label metric list: accuracy, named `accuracy`."""
    if one_hot:
        return [keras.metrics.CategoricalAccuracy(name="accuracy")]
    return [keras.metrics.SparseCategoricalAccuracy(name="accuracy")]


def methods_for(task, delta, baselines=False):
    """The losses compared for a task: Keras's baseline(s), AS-Softmax, AS-Speed."""
    if task.kind == "multilabel":
        plain = [
            Method("binary CE", lambda: keras.losses.BinaryCrossentropy(from_logits=True)),
            Method("multi-label CE", lambda: MultiLabelASSoftmaxCrossentropy(delta=1.0)),
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
        Method(f"AS-Softmax d={delta}", as_loss),
        Method(AS_SPEED, as_loss, adaptive=True),
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
    """Records, after each epoch, the logs, the wall time and the updates."""

    def __init__(self, label, monitor, epochs):
        super().__init__()
        self.label, self.monitor, self.epochs = label, monitor, epochs

    def on_train_begin(self, logs=None):
        self.start = time.perf_counter()
        self.rows = []

    def on_epoch_end(self, epoch, logs=None):
        row = {key: float(value) for key, value in logs.items()}
        row["seconds"] = time.perf_counter() - self.start
        row["updates"] = int(keras.ops.convert_to_numpy(self.model.optimizer.iterations))
        self.rows.append(row)
        print(
            f"  {self.label} epoch {epoch + 1}/{self.epochs}: loss {row['loss']:.4f}, "
            f"{self.monitor} {row[self.monitor]:.4f}, {row['seconds']:.1f} s",
            flush=True,
        )


def final_masked_ratio(model, loss, data, limit=20000):
    """Fraction of the counted training samples the AS loss masks at the end."""
    x, y, weight = (tuple(data) + (None,))[:3]
    # Chunks of about 2**25 logits (128 MiB in float32).
    chunk = max(1, 2**25 // int(np.prod(model.output_shape[1:])))
    masked = counted = 0
    for start in range(0, min(len(y), limit), chunk):
        part = slice(start, min(start + chunk, limit, len(y)))
        logits = model.predict(x[part], batch_size=256, verbose=0)
        m, c = loss.masked_counts(
            y[part], logits, None if weight is None else weight[part]
        )
        masked += int(keras.ops.convert_to_numpy(m))
        counted += int(keras.ops.convert_to_numpy(c))
    return masked / max(counted, 1)


def _targets(y, method, task):
    if method.one_hot:
        return keras.utils.to_categorical(y, task.num_classes).astype("float32")
    return y


def train_once(task, method, seed, epochs, batch_size, max_accumulation_steps):
    """Trains one model with one loss and seed; returns its per-epoch record."""
    keras.utils.set_random_seed(seed)
    inputs, outputs = task.build(seed)
    if method.adaptive:
        model = AdaptiveModel(
            inputs, outputs, max_accumulation_steps=max_accumulation_steps
        )
    else:
        model = keras.Model(inputs, outputs)
    loss = method.loss()
    metrics = task.metrics(method.one_hot)
    monitor = "val_" + metrics[0].name
    model.compile(
        optimizer=keras.optimizers.Adam(task.learning_rate),
        loss=loss,
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
    return {
        "rows": trace.rows,
        "best": scores[best],
        "best_epoch": best + 1,
        "seconds": trace.rows[-1]["seconds"],
        "updates": trace.rows[-1]["updates"],
        "masked": masked,
        "monitor": monitor,
        "steps_per_epoch": int(np.ceil(len(y) / batch_size)),
    }


def mean_spread(values, fmt):
    """`mean ± std` over seeds, or `-` when there is nothing to report."""
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:{fmt}}"
    return f"{np.mean(values):{fmt}} ± {np.std(values):{fmt}}"


def print_table(task, results, args):
    """Prints one row per method: mean ± std over the seeds."""
    monitor = next(iter(results.values()))[0]["monitor"]
    print(
        f"\n{task.title}; backend {keras.backend.backend()} on {device_description()}; "
        f"{args.seeds} seed(s), {args.epochs} epochs, batch {args.batch_size}, "
        f"delta {args.delta}; mean ± std over seeds"
    )
    header = (
        f"{'method':<24} {'best ' + monitor:>22} {'epoch of best':>14} "
        f"{'wall time s':>14} {'optimizer updates':>18} {'final masked':>14}"
    )
    print(header)
    print("-" * len(header))
    for name, runs in results.items():
        print(
            f"{name:<24} {mean_spread([r['best'] for r in runs], '.4f'):>22} "
            f"{mean_spread([r['best_epoch'] for r in runs], '.1f'):>14} "
            f"{mean_spread([r['seconds'] for r in runs], '.1f'):>14} "
            f"{mean_spread([r['updates'] for r in runs], '.0f'):>18} "
            f"{mean_spread([r['masked'] for r in runs], '.1%'):>14}"
        )
    print(
        "final masked: fraction of training samples whose AS-Softmax loss is 0 "
        "after training (the sample is already learned)."
    )


def _band(axis, runs, key, label, color):
    curves = np.array([[row[key] for row in run["rows"]] for run in runs])
    epochs = np.arange(1, curves.shape[1] + 1)
    axis.plot(epochs, curves.mean(axis=0), label=label, color=color, marker=".")
    if len(curves) > 1:
        axis.fill_between(
            epochs, curves.min(axis=0), curves.max(axis=0), color=color, alpha=0.2
        )


def save_plot(task, results, args, path):
    """Validation metric and training loss per epoch for each method; masked
    ratio and mean accumulation window per epoch for AS-Speed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    monitor = next(iter(results.values()))[0]["monitor"]
    colors = dict(zip(results, plt.rcParams["axes.prop_cycle"].by_key()["color"]))
    figure, axes = plt.subplots(2, 2, figsize=(12, 8))
    for name, runs in results.items():
        _band(axes[0, 0], runs, monitor, name, colors[name])
        _band(axes[0, 1], runs, "loss", name, colors[name])
    speed = results[AS_SPEED]
    _band(axes[1, 0], speed, "masked_ratio", AS_SPEED, colors[AS_SPEED])
    for run in speed:
        updates = np.diff([0] + [row["updates"] for row in run["rows"]])
        for row, count in zip(run["rows"], updates):
            row["window"] = run["steps_per_epoch"] / max(count, 1)
    _band(axes[1, 1], speed, "window", AS_SPEED, colors[AS_SPEED])
    labels = [
        (f"validation {monitor[4:]}", monitor[4:]),
        ("training loss (each method's own loss)", "loss"),
        ("AS-Speed: masked ratio of training batches", "masked ratio"),
        ("AS-Speed: mean accumulation window", "batches per update"),
    ]
    for axis, (title, ylabel) in zip(axes.flat, labels):
        axis.set_title(title)
        axis.set_xlabel("epoch")
        axis.set_ylabel(ylabel)
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
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
    return parser


def main(make_task, args):
    """Runs every method for every seed, prints the table, saves the plot."""
    if args.quick:
        args.seeds, args.epochs = 1, 2
    if not 0.0 <= args.delta <= 1.0:
        raise SystemExit(f"--delta must be in [0, 1], got {args.delta}.")
    task = make_task(quick=args.quick)
    methods = methods_for(task, args.delta, args.baselines)
    print(
        f"{task.title}: {len(task.train[1])} training / {len(task.validation[1])} "
        f"validation samples; backend {keras.backend.backend()} on "
        f"{device_description()}; comparing {', '.join(m.name for m in methods)}",
        flush=True,
    )
    results = {method.name: [] for method in methods}
    for seed in range(args.seeds):
        for method in methods:
            results[method.name].append(
                train_once(task, method, seed, args.epochs, args.batch_size,
                           args.max_accumulation_steps)
            )
    print_table(task, results, args)
    path = args.plot or f"{task.name}.png"
    save_plot(task, results, args, path)
    print(f"plot: {path}")
    return results
