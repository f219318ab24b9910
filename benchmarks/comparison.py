"""The comparison the examples and benchmarks share: one model, several losses.

Import this module before Keras: it reads `--backend NAME` and loads Keras
quietly (`benchmarks.startup`). A script describes its task (data, model,
metric) as a `Task`; `main` trains the same model, with the same seeds and
budget, once per `Method` (Keras's loss, AS-Softmax, AS-Speed and AS-Speed +
skipping; `--baselines` adds other losses), prints a per-epoch line while it
runs, then a table (`benchmarks.tables`), and saves a plot
(`benchmarks.plot`).
"""

from benchmarks import startup

startup.load_keras()  # `--backend` first, then Keras without start-up logs.

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import time  # noqa: E402
from typing import Callable  # noqa: E402

import keras  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks import plot  # noqa: E402
from benchmarks import tables  # noqa: E402
from benchmarks.tables import AS_AUTO_SKIPPING  # noqa: E402
from benchmarks.tables import AS_BUFFER_SKIPPING  # noqa: E402
from benchmarks.tables import AS_PRUNING  # noqa: E402
from benchmarks.tables import AS_PRUNING_SKIPPING  # noqa: E402
from benchmarks.tables import AS_SOFTMAX_PRUNING  # noqa: E402
from benchmarks.tables import AS_SOFTMAX_PRUNING_SKIPPING  # noqa: E402
from benchmarks.tables import BUFFER_WINDOW  # noqa: E402
from benchmarks.tables import AS_SKIPPING  # noqa: E402
from benchmarks.tables import AS_SOFTMAX_SKIPPING  # noqa: E402
from benchmarks.tables import AS_SOFTMAX  # noqa: E402
from benchmarks.tables import AS_SPEED  # noqa: E402
from keras_as_softmax import MultiLabelASSoftmaxCrossentropy  # noqa: E402
from keras_as_softmax import SparseASSoftmaxCrossentropy  # noqa: E402
from keras_as_softmax import adaptive  # noqa: E402

# `--baselines`' top-k softmax keeps the k largest logits: Sparse-Softmax's
# reference code's k (`k_sparse = 10`), but at most half the classes (5 on
# the 10-class data sets, where k = 10 would be softmax itself).
TOP_K = 10


@dataclasses.dataclass
class Task:
    """One example's data, model and metric.

    Args:
        name: Short name, used for the plot's file name.
        title: What is compared, for the table and the plot.
        train: `(x, y)` or `(x, y, sample_weight)`.
        validation: The same for validation.
        build: `build() -> keras.Model` whose outputs are logits: a new
            model each call (functional, `Sequential`, or such as a keras-hub
            task, which reads its own raw inputs). Called after the seed is
            set.
        num_classes: Number of classes or labels.
        kind: `"single"` (integer targets `(N,)`, the default), `"tokens"`
            (integer targets `(N, T)` with `ignore_class` for padding) or
            `"multilabel"` (multi-hot targets `(N, C)`).
        metrics: `metrics(one_hot) -> list` of fresh metrics; the first is the
            one the table reports and the plot shows (on validation).
            Default: `accuracy`.
        ignore_class: The padding target of a `"tokens"` task.
        learning_rate: Adam's learning rate.
    """

    name: str
    title: str
    train: tuple
    validation: tuple
    build: Callable
    num_classes: int
    kind: str = "single"
    metrics: Callable = None
    ignore_class: int = None
    learning_rate: float = 1e-3

    def __post_init__(self):
        if self.metrics is None:
            self.metrics = accuracy


@dataclasses.dataclass
class Method:
    """One loss, and way of training with it, to compare.

    Args:
        name: Name in the table and the legend.
        loss: `loss() -> keras.losses.Loss`, a fresh loss.
        adaptive: Train with `AdaptiveModel` (AS-Speed's gradient
            accumulation).
        skip_masked: With `adaptive`, back-propagate only the samples that
            the loss does not mask (`AdaptiveModel(skip_masked=True)`, or
            `"auto"`).
        max_accumulation_steps: With `adaptive`, AS-Speed's largest window;
            None for the command line's `--max-accumulation-steps`.
        prune_masked: With `adaptive`, the fraction of the samples masked
            when last seen that each epoch leaves out
            (`AdaptiveModel(prune_masked=...)`); 0 for none.
        one_hot: Give the loss one-hot targets (Keras's label smoothing and
            focal loss need them).
        reference: The target is `tables.TARGET_FRACTION` of this method's
            best validation metric in the same seed (one method per
            comparison).
    """

    name: str
    loss: Callable
    adaptive: bool = False
    skip_masked: bool | str = False
    max_accumulation_steps: int | None = None
    prune_masked: float = 0.0
    one_hot: bool = False
    reference: bool = False


def accuracy(one_hot=False):
    """The single-label metric list: accuracy, named `accuracy`."""
    if one_hot:
        return [keras.metrics.CategoricalAccuracy(name="accuracy")]
    return [keras.metrics.SparseCategoricalAccuracy(name="accuracy")]


def baseline_methods(num_classes):
    """`--baselines`: Keras's label smoothing and focal loss (one-hot
    targets), sparsemax, 1.5-entmax and top-k softmax (integer targets);
    each predicts, as every method here, the argmax of the logits."""
    # Imported here: only `--baselines` needs them.
    from keras_as_softmax.baselines import Entmax15Loss
    from keras_as_softmax.baselines import SparsemaxLoss
    from keras_as_softmax.baselines import TopKSoftmaxCrossentropy

    k = min(TOP_K, num_classes // 2)
    return [
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
        Method("sparsemax", SparsemaxLoss),
        Method("entmax 1.5", Entmax15Loss),
        Method(f"top-{k} softmax", lambda: TopKSoftmaxCrossentropy(k=k)),
    ]


def methods_for(task, delta, baselines=False, skipping_settings=False, prune_masked=0.0):
    """The methods compared for a task: Keras's baseline(s), AS-Softmax,
    AS-Speed and AS-Speed + skipping; with `skipping_settings` also
    AS-Softmax + skipping (window 1), AS-Speed + auto skipping and AS-Speed
    + buffer skipping (`skip_masked="buffer"`, windows of at most
    `BUFFER_WINDOW` batches); with `prune_masked` also AS-Speed + pruning
    and AS-Softmax + pruning (window 1), alone and with skipping.

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
        plain += baseline_methods(task.num_classes)
    elif baselines:
        raise SystemExit("--baselines is for single-label tasks only.")
    skipping = [Method(AS_SKIPPING, as_loss, adaptive=True, skip_masked=True)]
    if skipping_settings:
        skipping = [
            Method(AS_SOFTMAX_SKIPPING, as_loss, adaptive=True, skip_masked=True,
                   max_accumulation_steps=1),
            *skipping,
            Method(AS_AUTO_SKIPPING, as_loss, adaptive=True, skip_masked="auto"),
            Method(AS_BUFFER_SKIPPING, as_loss, adaptive=True, skip_masked="buffer",
                   max_accumulation_steps=BUFFER_WINDOW),
        ]
    pruning = []
    if prune_masked:
        pruning = [
            Method(AS_PRUNING, as_loss, adaptive=True, prune_masked=prune_masked),
            Method(AS_PRUNING_SKIPPING, as_loss, adaptive=True, skip_masked=True,
                   prune_masked=prune_masked),
            Method(AS_SOFTMAX_PRUNING, as_loss, adaptive=True, prune_masked=prune_masked,
                   max_accumulation_steps=1),
            Method(AS_SOFTMAX_PRUNING_SKIPPING, as_loss, adaptive=True, skip_masked=True,
                   prune_masked=prune_masked, max_accumulation_steps=1),
        ]
    return plain + [
        Method(AS_SOFTMAX, as_loss),
        Method(AS_SPEED, as_loss, adaptive=True),
        *skipping,
        *pruning,
    ]


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


def build_model(task, method, max_accumulation_steps):
    """The task's model for a method, made an `AdaptiveModel` in place by
    `keras_as_softmax.adaptive` for AS-Speed."""
    model = task.build()
    if not method.adaptive:
        return model
    return adaptive(model, skip_masked=method.skip_masked,
                    max_accumulation_steps=method.max_accumulation_steps or max_accumulation_steps,
                    prune_masked=method.prune_masked)


def train_once(task, method, seed, epochs, batch_size, max_accumulation_steps):
    """Trains one model with one method and seed; returns its per-epoch record."""
    keras.utils.set_random_seed(seed)
    model = build_model(task, method, max_accumulation_steps)
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
    backward = pruned = forgetting = None
    if method.skip_masked:
        backward = float(np.mean([row["backward_fraction"] for row in trace.rows]))
    if method.prune_masked:
        pruned = float(np.mean([row["pruned_fraction"] for row in trace.rows]))
        forgetting = float(np.mean([row["forgetting_rate"] for row in trace.rows[1:]]))
    return {
        "rows": trace.rows,
        "best": scores[best],
        "best_epoch": best + 1,
        "seconds": trace.rows[-1]["seconds"],
        "updates": trace.rows[-1]["updates"],
        "masked": masked,
        "backward": backward,
        "pruned": pruned,
        "forgetting": forgetting,
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


def parser(description, epochs, batch_size, delta=0.1, seeds=3):
    """The common command line, with a script's defaults."""
    parser = argparse.ArgumentParser(
        description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--backend", choices=startup.BACKENDS,
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
                        help="also label smoothing 0.1, focal loss, sparsemax, "
                        f"1.5-entmax and top-k softmax (k = {TOP_K}, at most half "
                        "the classes; single-label)")
    parser.add_argument("--plot", help="PNG path (default: <example>.png here)")
    # The main job and `benchmarks.as_speed` compare every skipping setting;
    # the main job leaves some out unless `--methods` names them.
    parser.set_defaults(skipping_settings=False, left_out=())
    parser.add_argument("--quick", action="store_true",
                        help="a tiny slice, 1 seed, 2 epochs: a smoke test for CPU")
    parser.add_argument("--train-size", type=int,
                        help="train on the first N training samples only (a "
                        "shorter benchmark on a CPU; each script's `load_data` "
                        "applies it)")
    parser.add_argument("--methods",
                        help="only these methods, by their table names, comma "
                        "separated (the reference, softmax CE, always runs: it "
                        "sets the target; so does AS-Softmax, the base of the "
                        "speedups)")
    return parser


def parse_args(parser):
    """`parser`'s arguments, with `--quick` applied (1 seed, 2 epochs) and
    `--delta` checked."""
    args = parser.parse_args()
    if args.quick:
        args.seeds, args.epochs = 1, 2
    if not 0.0 <= args.delta <= 1.0:
        raise SystemExit(f"--delta must be in [0, 1], got {args.delta}.")
    return args


def prepare(task, args):
    """Prints what is compared; returns the methods."""
    methods = methods_for(task, args.delta, args.baselines, args.skipping_settings,
                          getattr(args, "prune_masked", 0.0))
    if args.methods:
        wanted = {name.strip() for name in args.methods.split(",")}
        unknown = wanted - {m.name for m in methods}
        if unknown:
            raise SystemExit(
                f"--methods: no method named {', '.join(sorted(unknown))}; this "
                f"run's are: {', '.join(m.name for m in methods)}."
            )
        # The reference sets the target; AS-Softmax is the speedups' base.
        methods = [m for m in methods
                   if m.reference or m.name in wanted | {tables.AS_SOFTMAX}]
    else:
        methods = [m for m in methods if m.name not in args.left_out]
    print(
        f"{task.title}: {len(task.train[1])} training / {len(task.validation[1])} "
        f"validation samples; backend {keras.backend.backend()} on "
        f"{startup.device_description()}; comparing {', '.join(m.name for m in methods)}",
        flush=True,
    )
    return methods


def report(task, methods, results, args, columns=tables.TABLE_COLUMNS):
    """Prints the table of `columns` and saves the plot (`--plot`, by default
    `<task name>.png` here)."""
    tables.print_table(task, methods, results, args, columns)
    path = args.plot or f"{task.name}.png"
    plot.save_plot(task, methods, results, args, path)
    print(f"plot: {path}")


def main(task, args):
    """Runs every method for every seed, prints the table, saves the plot."""
    methods = prepare(task, args)
    results = train_all(task, methods, args)
    report(task, methods, results, args)
    return results
