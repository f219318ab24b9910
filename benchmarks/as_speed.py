"""AS-Speed on real data: time and optimizer updates to a target accuracy.

Trains the same model on a data set of the examples (`--dataset digits`, the
main job's small CNN on scikit-learn's bundled digits, or `fashion_mnist`)
with softmax cross-entropy, AS-Softmax, and AS-Softmax + AS-Speed
(`AdaptiveModel`), on the backend that `KERAS_BACKEND` names, for several
seeds. The target is each seed's best softmax validation accuracy; the table
gives, as mean ± standard deviation over seeds, the wall time and optimizer
updates until validation accuracy first reaches it, how many seeds reached
it, and the best validation accuracy.

A second table says where a training step's time goes, measured in
`AdaptiveModel`'s own step: ms per batch with an update every batch (window
1) and with one update every 8 batches (window 8), and of a forward pass
(`predict`). The optimizer update costs `(window 1 - window 8) * 8 / 7`
(shown as 0 when window 8 is not faster: then an update costs no more than
accumulating a batch's gradients); the rest is forward and backward. AS-Speed saves only updates, so with a mean
window `k` its best speedup is `window 1 / (window 1 - update * (1 - 1/k))`.

    KERAS_BACKEND=jax python benchmarks/as_speed.py [--dataset digits] [--seeds 3] [--quick]
"""

import argparse
import os
import statistics
import sys
import time

import keras
import numpy as np

from keras_as_softmax import AdaptiveModel
from keras_as_softmax import SparseASSoftmaxCrossentropy

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))), "examples"))
import compare  # noqa: E402  (examples/compare.py: the digits task)
import fashion_mnist  # noqa: E402
from adaptive_overhead import EpochTimer  # noqa: E402

METHODS = ("softmax", "AS-Softmax", "AS-Softmax + AS-Speed")
TASKS = {"digits": compare.digits_task, "fashion_mnist": fashion_mnist.task}


def build(method, seed, delta, task, **adaptive_settings):
    keras.utils.set_random_seed(seed)
    inputs, outputs = task.build(seed)
    if method == "softmax":
        model = keras.Model(inputs, outputs)
        loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    elif method == "AS-Softmax":
        model = keras.Model(inputs, outputs)
        loss = SparseASSoftmaxCrossentropy(delta=delta)
    else:
        model = AdaptiveModel(inputs, outputs, **adaptive_settings)
        loss = SparseASSoftmaxCrossentropy(delta=delta)
    model.compile(
        optimizer=keras.optimizers.Adam(task.learning_rate),
        loss=loss,
        metrics=["sparse_categorical_accuracy"],
        jit_compile=True,
    )
    return model


class Trace(keras.callbacks.Callback):
    """Wall time, optimizer updates and validation accuracy after each epoch."""

    def on_train_begin(self, logs=None):
        self.start = time.perf_counter()
        self.epochs = []

    def on_epoch_end(self, epoch, logs=None):
        self.epochs.append(
            (
                time.perf_counter() - self.start,
                int(self.model.optimizer.iterations.numpy()),
                float(logs["val_sparse_categorical_accuracy"]),
            )
        )


def run(method, seed, args, task):
    (x, y), validation = task.train, task.validation
    model = build(method, seed, args.delta, task)
    trace = Trace()
    model.fit(
        x, y, batch_size=args.batch_size, epochs=args.epochs,
        validation_data=validation, verbose=0, callbacks=[trace],
    )
    return trace.epochs


def ms_per_batch(task, args, window, epochs):
    """Median ms per batch after the first epoch, `AdaptiveModel` at a window."""
    model = build("AS-Speed", 0, args.delta, task, max_accumulation_steps=window,
                  accumulation_lambda=float(window))
    timer = EpochTimer()
    x, y = task.train
    model.fit(x, y, batch_size=args.batch_size, epochs=epochs, verbose=0,
              callbacks=[timer])
    steps = int(np.ceil(len(x) / args.batch_size))
    return 1000 * statistics.median(timer.seconds[1:]) / steps, model


def time_breakdown(task, args, epochs):
    """(forward, backward, update, window 1, window 8) in ms per batch."""
    window_1, model = ms_per_batch(task, args, 1, epochs)
    window_8, _ = ms_per_batch(task, args, 8, epochs)
    x = task.train[0]
    forward = []
    for _ in range(3):
        start = time.perf_counter()
        model.predict(x, batch_size=args.batch_size, verbose=0)
        forward.append(time.perf_counter() - start)
    forward = 1000 * min(forward[1:]) / int(np.ceil(len(x) / args.batch_size))
    update = max(0.0, (window_1 - window_8) * 8 / 7)
    return forward, window_1 - update - forward, update, window_1, window_8


def to_target(epochs, target):
    for seconds, updates, accuracy in epochs:
        if accuracy >= target - 1e-9:
            return seconds, updates
    return None


def mean_std(values, fmt):
    if not values:
        return "-"
    return f"{np.mean(values):{fmt}} ± {np.std(values):{fmt}}"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", choices=sorted(TASKS), default="digits")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--delta", type=float, default=0.1)
    parser.add_argument("--quick", action="store_true", help="a tiny run (tests)")
    args = parser.parse_args()
    if args.quick:
        args.seeds, args.epochs = 1, 2
    task = TASKS[args.dataset](quick=args.quick)
    results = {method: [] for method in METHODS}
    for seed in range(args.seeds):
        for method in METHODS:
            results[method].append(run(method, seed, args, task))
            print(f"seed {seed} {method}: best val acc "
                  f"{max(a for _, _, a in results[method][-1]):.4f}", flush=True)
    print(
        f"\nbackend {keras.backend.backend()}, {task.title}, {args.seeds} seeds, "
        f"{args.epochs} epochs, batch {args.batch_size}, delta {args.delta}; "
        "target: each seed's best softmax validation accuracy"
    )
    header = (f"{'method':<24} {'reached':>7} {'seconds to target':>19} "
              f"{'updates to target':>19} {'best val acc':>16} {'total updates':>15} "
              f"{'total seconds':>15}")
    print(header)
    targets = [max(a for _, _, a in epochs) for epochs in results["softmax"]]
    for method in METHODS:
        reached = [to_target(e, t) for e, t in zip(results[method], targets)]
        reached = [r for r in reached if r is not None]
        best = [max(a for _, _, a in e) for e in results[method]]
        total = [e[-1][1] for e in results[method]]
        seconds = [e[-1][0] for e in results[method]]
        print(
            f"{method:<24} {len(reached):>4}/{args.seeds:<2} "
            f"{mean_std([r[0] for r in reached], '.1f'):>19} "
            f"{mean_std([r[1] for r in reached], '.0f'):>19} "
            f"{mean_std(best, '.4f'):>16} {mean_std(total, '.0f'):>15} "
            f"{mean_std(seconds, '.1f'):>15}"
        )
    speed = results[METHODS[-1]]
    batches = args.epochs * int(np.ceil(len(task.train[1]) / args.batch_size))
    window = batches / np.mean([e[-1][1] for e in speed])
    forward, backward, update, step, step_8 = time_breakdown(
        task, args, 2 if args.quick else 4
    )
    print(
        f"\nwhere a step's time goes (AdaptiveModel, ms per batch of {args.batch_size}, "
        "median after a warm-up epoch)"
    )
    print(f"{'window 1':>10} {'window 8':>10} {'forward':>10} {'backward':>10} "
          f"{'update':>10} {'update share':>13} {'mean window':>12} "
          f"{'best AS-Speed speedup':>22}")
    print(
        f"{step:>10.3f} {step_8:>10.3f} {forward:>10.3f} {backward:>10.3f} "
        f"{update:>10.3f} "
        f"{update / step:>13.1%} {window:>12.2f} "
        f"{step / (step - update * (1 - 1 / window)):>22.3f}"
    )


if __name__ == "__main__":
    main()
