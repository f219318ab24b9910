"""Forward+backward cost of the AS-Softmax losses against plain cross-entropy.

Times one loss evaluation and its gradient with respect to the logits, on
the backend that `KERAS_BACKEND` names, in each way Keras runs a training
step there: on TensorFlow `tf.function` around a `GradientTape`, both without
XLA (`graph`: Keras's default on a CPU) and with it (`xla`:
`jit_compile=True`); on JAX `jax.jit(jax.value_and_grad(...))` (`jit`); on
PyTorch eagerly (`eager`: Keras's default) and under `torch.compile`
(`compile`: Keras's `jit_compile=True`), with `.backward()` on the scalar
loss.

- `SparseASSoftmaxCrossentropy(delta=0.1)` against Keras's
  `SparseCategoricalCrossentropy(from_logits=True)`: logits `(B, C)` and
  per-token `(B, T, C)`, integer targets.
- `MultiLabelASSoftmaxCrossentropy(delta=0.1)` against the plain multi-label
  cross-entropy `log(1 + sum_neg exp(s)) + log(1 + sum_pos exp(-s))`, written
  here in `keras.ops` with `logsumexp` over `[0, masked logits]`: multi-hot
  targets with 3 positives per row.

Logits are normal with scale 3, float32 or bfloat16. Both losses are Keras
`Loss` objects with the default dtype, so both cast bfloat16 logits to
float32 first and compute in float32. Half of the rows are made confident
(the target is the argmax and gets `log(C)` more logit; the positives get
about the row maximum plus `log(C)`), so AS-Softmax masks about half the
samples: the `masked` column gives the fraction.

Timing is interleaved, so that both losses see the same load: after 3
warm-up calls of each (which compile), each round times one call of the
baseline and one of AS-Softmax (in alternating order), each blocking on its
loss and gradient. `base ms` and `AS ms` are the medians of those calls;
`ratio` is the median over the rounds of the round's AS/baseline ratio, and
`ratio IQR` the 25th to 75th percentile of those ratios: a wide IQR means
the machine was busy. `--repeats` rounds are timed, fewer (never fewer than
5, or 3 with `--quick`) where they would take longer than `--budget`
seconds: the `n` column gives the number of rounds. On JAX the table also
gives the size of XLA's temporary buffers for each compiled function
(`memory_analysis().temp_size_in_bytes`) and their ratio AS/baseline.
`--quick` runs tiny shapes, 3 rounds, and no torch.compile for bfloat16
(compilation is most of its time).

    KERAS_BACKEND=jax python -m benchmarks.loss_cost [--quick]
    KERAS_BACKEND=torch python -m benchmarks.loss_cost --losses sparse --modes eager
"""

import argparse
import os
import platform
import statistics
import time

import keras
import numpy as np
from keras import ops

from keras_as_softmax import MultiLabelASSoftmaxCrossentropy
from keras_as_softmax import SparseASSoftmaxCrossentropy

DELTA = 0.1
GOAL_RATIO = 1.15  # Issue 7: every mode.
# Issue 15: eager and graph modes (what Keras runs by default on a CPU) and
# XLA within 1.3, torch.compile within 1.5.
GOAL_RATIOS_15 = {"compile": 1.5}
GOAL_RATIO_15 = 1.3
GOAL_MIN_CLASSES = 1000
WARMUP_CALLS = 3


class MultiLabelCrossentropy(keras.losses.Loss):
    """The plain multi-label cross-entropy (threshold 0), the baseline of
    `MultiLabelASSoftmaxCrossentropy`: mean over the batch of

        log(1 + sum_{neg} exp(s)) + log(1 + sum_{pos} exp(-s)),

    each term a `logsumexp` over `[0, logits]` with the other labels at -inf.
    """

    def call(self, y_true, y_pred):
        positive = ops.greater(y_true, 0.5)
        zeros = ops.zeros_like(y_pred[..., :1])
        negatives = ops.where(positive, -np.inf, y_pred)
        positives = ops.where(positive, -y_pred, -np.inf)
        return ops.logsumexp(
            ops.concatenate([zeros, negatives], axis=-1), axis=-1
        ) + ops.logsumexp(ops.concatenate([zeros, positives], axis=-1), axis=-1)


# Data ------------------------------------------------------------------------


def sparse_data(rng, shape):
    """Logits of `shape` (classes last) and integer targets; half the
    positions are confident (target = argmax, raised by log(C))."""
    num_classes = shape[-1]
    logits = 3.0 * rng.standard_normal(shape, dtype=np.float32)
    flat = logits.reshape(-1, num_classes)
    rows = np.arange(len(flat))
    confident = rng.random(len(flat)) < 0.5
    targets = np.where(
        confident, flat.argmax(-1), rng.integers(0, num_classes, len(flat))
    )
    flat[rows[confident], targets[confident]] += np.log(num_classes)
    return logits, targets.reshape(shape[:-1]).astype("int32")


def multilabel_data(rng, shape, positives=3):
    """Logits `(B, C)` and multi-hot targets with `positives` ones per row;
    half the rows are confident: their positives get about the row's
    maximum plus log(C) (noise of scale 0.5), so they share the softmax."""
    batch, num_classes = shape
    logits = 3.0 * rng.standard_normal(shape, dtype=np.float32)
    chosen = rng.random(shape).argsort(axis=-1)[:, :positives]
    targets = np.zeros(shape, dtype="float32")
    np.put_along_axis(targets, chosen, 1.0, axis=-1)
    confident = (rng.random(batch) < 0.5)[:, None] & (targets > 0)
    high = logits.max(-1, keepdims=True) + np.log(num_classes)
    noisy_high = high + 0.5 * rng.standard_normal(shape, dtype=np.float32)
    return np.where(confident, noisy_high, logits).astype("float32"), targets


def to_backend(array, dtype):
    return ops.cast(ops.convert_to_tensor(array), dtype)


def masked_fraction(loss, y_true, logits):
    num_masked, num_counted = loss.masked_counts(y_true, logits)
    return float(ops.convert_to_numpy(num_masked)) / float(
        ops.convert_to_numpy(num_counted)
    )


# Per-backend forward+backward ------------------------------------------------
# Each returns `(step, memory)`: `step(y_true, logits)` computes the loss and
# its gradient with respect to `logits` and blocks until both are ready;
# `memory` is XLA's temporary buffer size in bytes (JAX), else None.


def tensorflow_step(loss, y_true, logits, jit_compile):
    import tensorflow as tf

    @tf.function(jit_compile=jit_compile)
    def value_and_grad(y_true, logits):
        with tf.GradientTape() as tape:
            tape.watch(logits)
            value = loss(y_true, logits)
        return value, tape.gradient(value, logits)

    def step(y_true, logits):
        value, grad = value_and_grad(y_true, logits)
        return value.numpy(), grad.numpy()

    return step, None


def jax_step(loss, y_true, logits):
    import jax

    def value(logits, y_true):
        return loss(y_true, logits)

    value_and_grad = jax.jit(jax.value_and_grad(value))
    stats = value_and_grad.lower(logits, y_true).compile().memory_analysis()
    memory = None if stats is None else stats.temp_size_in_bytes

    def step(y_true, logits):
        value, grad = value_and_grad(logits, y_true)
        return value.block_until_ready(), grad.block_until_ready()

    return step, memory


def torch_step(loss, y_true, logits, compiled):
    import torch

    def value(y_true, logits):
        return loss(y_true, logits)

    if compiled:
        value = torch.compile(value, dynamic=False)

    def step(y_true, logits):
        # CPU tensors are ready when the call returns.
        logits.grad = None
        result = value(y_true, logits)
        result.backward()
        return result.detach(), logits.grad

    return step, None


def make_step(mode, loss, y_true, logits):
    if mode in ("graph", "xla"):
        return tensorflow_step(loss, y_true, logits, jit_compile=mode == "xla")
    if mode == "jit":
        return jax_step(loss, y_true, logits)
    if mode in ("eager", "compile"):
        return torch_step(loss, y_true, logits, compiled=mode == "compile")
    raise ValueError(mode)


def backend_modes():
    return {
        "tensorflow": ["graph", "xla"],
        "jax": ["jit"],
        "torch": ["eager", "compile"],
    }[keras.backend.backend()]


def reset_compilation(mode):
    """A fresh `torch.compile` cache for each configuration."""
    if mode == "compile":
        import torch

        torch._dynamo.reset()


def prepare_logits(logits):
    if keras.backend.backend() == "torch":
        logits.requires_grad_(True)
    return logits


# Timing ----------------------------------------------------------------------


def check_finite(value, grad):
    check = ops.convert_to_numpy(ops.cast(ops.sum(grad), "float32"))
    if not (np.isfinite(ops.convert_to_numpy(value)) and np.isfinite(check)):
        raise FloatingPointError("non-finite loss or gradient")


def measure_interleaved(steps, y_true, logits, repeats, min_rounds, budget):
    """Times `steps` (name -> step) in interleaved rounds after the warm-up.

    Each round calls every step once, in turn (in reverse order every other
    round), so that all see the same load. Returns `(seconds, n)`: the
    per-round seconds of each step, and the number of rounds `n`.
    """
    last = {}
    for name, step in steps.items():
        for _ in range(WARMUP_CALLS):
            start = time.perf_counter()
            value, grad = step(y_true, logits)
            last[name] = time.perf_counter() - start
        check_finite(value, grad)
    round_seconds = max(sum(last.values()), 1e-9)
    n = max(min_rounds, min(repeats, int(budget / round_seconds)))
    order = list(steps)
    seconds = {name: [] for name in order}
    for i in range(n):
        for name in order if i % 2 == 0 else order[::-1]:
            start = time.perf_counter()
            steps[name](y_true, logits)
            seconds[name].append(time.perf_counter() - start)
    return seconds, n


def ratio_stats(numerator, denominator):
    """Median and interquartile range of the per-round ratios."""
    ratios = np.asarray(numerator) / np.asarray(denominator)
    q1, median, q3 = np.percentile(ratios, [25, 50, 75])
    return median, q1, q3


def configurations(quick, kinds):
    """`(loss name, shape)` pairs, classes last, for the losses in `kinds`."""
    if quick:
        batch, classes, token = 64, (10, 200), (4, 8, 200)
    else:
        batch, classes, token = 1024, (10, 1000, 32000), (8, 128, 32000)
    sparse = [("sparse", (batch, c)) for c in classes] + [("sparse", token)]
    multilabel = [("multilabel", (batch, c)) for c in classes]
    return [(kind, shape) for kind, shape in sparse + multilabel if kind in kinds]


def losses(kind):
    if kind == "sparse":
        return (
            keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            SparseASSoftmaxCrossentropy(delta=DELTA),
        )
    return MultiLabelCrossentropy(), MultiLabelASSoftmaxCrossentropy(delta=DELTA)


def cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def backend_version():
    name = keras.backend.backend()
    module = __import__(name)
    version = f"{name} {module.__version__}"
    if name == "torch":
        version += f" ({module.get_num_threads()} threads)"
    return version


def megabytes(num_bytes):
    return "-" if num_bytes is None else f"{num_bytes / 2**20:.2f}"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a tiny run (tests)")
    parser.add_argument("--repeats", type=int, default=21, help="timed rounds")
    parser.add_argument(
        "--budget",
        type=float,
        default=10.0,
        help="seconds of timed rounds per configuration, above which fewer "
        "rounds are timed",
    )
    parser.add_argument(
        "--losses",
        default="sparse,multilabel",
        help="comma-separated: which of sparse, multilabel to time",
    )
    parser.add_argument(
        "--modes",
        default=None,
        help="comma-separated subset of this backend's modes (default: all; "
        "tensorflow: graph,xla; jax: jit; torch: eager,compile)",
    )
    parser.add_argument(
        "--dtypes", default="float32,bfloat16", help="comma-separated logits dtypes"
    )
    args = parser.parse_args()
    modes = backend_modes()
    if args.modes:
        unknown = set(args.modes.split(",")) - set(modes)
        if unknown:
            parser.error(f"--modes: {sorted(unknown)} not among {modes}")
        modes = [m for m in modes if m in args.modes.split(",")]
    repeats = 3 if args.quick else args.repeats
    min_rounds = min(repeats, 3 if args.quick else 5)
    rng = np.random.default_rng(0)
    print(
        f"backend {backend_version()}, keras {keras.__version__}, "
        f"{cpu_name()}, {os.cpu_count()} CPUs; delta {DELTA}, "
        f"{WARMUP_CALLS} warm-up calls, {repeats} interleaved rounds"
        + (
            f" (fewer, at least {min_rounds}, where {repeats} would take over "
            f"{args.budget:g} s: column n)"
            if repeats > min_rounds
            else ""
        )
    )
    header = (
        f"{'loss':<10} {'shape':<16} {'dtype':<8} {'mode':<7} "
        f"{'base ms':>9} {'AS ms':>9} {'ratio':>6} {'ratio IQR':>11} "
        f"{'base MB':>8} {'AS MB':>8} {'mem':>6} {'masked':>6} {'n':>3}"
    )
    print(header)
    print("-" * len(header))
    goal_rows, goal_rows_15 = [], []
    started = time.perf_counter()
    for kind, shape in configurations(args.quick, args.losses.split(",")):
        baseline_loss, as_loss = losses(kind)
        make = sparse_data if kind == "sparse" else multilabel_data
        logits_np, y_np = make(rng, shape)
        for dtype in args.dtypes.split(","):
            y_true = ops.convert_to_tensor(y_np)
            logits = prepare_logits(to_backend(logits_np, dtype))
            masked = masked_fraction(as_loss, y_true, logits)
            for mode in modes:
                if args.quick and mode == "compile" and dtype != "float32":
                    continue  # Compilation is most of a quick run's time.
                reset_compilation(mode)
                steps, memory = {}, {}
                for name, loss in (("base", baseline_loss), ("AS", as_loss)):
                    steps[name], memory[name] = make_step(mode, loss, y_true, logits)
                seconds, n = measure_interleaved(
                    steps, y_true, logits, repeats, min_rounds, args.budget
                )
                base_s = statistics.median(seconds["base"])
                as_s = statistics.median(seconds["AS"])
                ratio, q1, q3 = ratio_stats(seconds["AS"], seconds["base"])
                base_mem, as_mem = memory["base"], memory["AS"]
                mem_ratio = "-"
                if base_mem and as_mem is not None:
                    mem_ratio = f"{as_mem / base_mem:.2f}"
                print(
                    f"{kind:<10} {'x'.join(map(str, shape)):<16} {dtype:<8} "
                    f"{mode:<7} {1000 * base_s:>9.3f} {1000 * as_s:>9.3f} "
                    f"{ratio:>6.3f} {f'{q1:.2f}-{q3:.2f}':>11} "
                    f"{megabytes(base_mem):>8} {megabytes(as_mem):>8} "
                    f"{mem_ratio:>6} {masked:>6.2f} {n:>3}",
                    flush=True,
                )
                if shape[-1] >= GOAL_MIN_CLASSES:
                    goal_rows.append(ratio <= GOAL_RATIO)
                    goal_rows_15.append(
                        ratio <= GOAL_RATIOS_15.get(mode, GOAL_RATIO_15)
                    )

    def met(rows):
        if not rows:
            return "no such rows in this run"
        return f"met in {sum(rows)} of {len(rows)} rows"

    print(
        f"goal (issue 7): median AS/baseline time ratio <= {GOAL_RATIO} at "
        f"C >= {GOAL_MIN_CLASSES}; {met(goal_rows)}"
    )
    print(
        f"goal (issue 15): <= {GOAL_RATIO_15} (torch.compile: "
        f"{GOAL_RATIOS_15['compile']}) at C >= {GOAL_MIN_CLASSES}; "
        f"{met(goal_rows_15)}"
    )
    print(f"total time {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
