"""Helpers shared by the tests: per-backend gradients and compilation,
conversions, callbacks and the parsing of the examples' tables."""

import keras
import numpy as np
import pytest
from keras import ops

# `jit_compile=False` and `True`. torch.compile takes far longer per model
# than the test's training, and an eager JAX step dispatches every operation
# on its own (its eager cases were the slowest tests of the JAX fast tier), so
# those two cases are in the full suite only: each backend's fast tier trains
# in the mode its users get by default (tests of the compiled losses
# themselves, `*_compiled`, stay in the fast tier).
_FULL_SUITE_ONLY = {"torch": True, "jax": False}.get(keras.backend.backend())
JIT = pytest.mark.parametrize(
    "jit_compile",
    [
        pytest.param(
            jit_compile,
            id="jit" if jit_compile else "eager",
            marks=[pytest.mark.slow] if jit_compile is _FULL_SUITE_ONLY else [],
        )
        for jit_compile in (False, True)
    ],
)


def to_numpy(x):
    """`x` as a float64 NumPy array, through float32: TensorFlow cannot hand
    a bfloat16 scalar to NumPy."""
    return ops.convert_to_numpy(ops.cast(x, "float32")).astype(np.float64)


class BatchLogs(keras.callbacks.Callback):
    """Records each training batch's logs as floats, in `self.logs`."""

    def on_train_begin(self, logs=None):
        self.logs = []

    def on_train_batch_end(self, batch, logs=None):
        self.logs.append({k: float(v) for k, v in logs.items()})


class CrashAt(keras.callbacks.Callback):
    """Raises at the start of batch `batch` of epoch `epoch`."""

    def __init__(self, epoch, batch):
        super().__init__()
        self.epoch, self.batch, self.current_epoch = epoch, batch, 0

    def on_epoch_begin(self, epoch, logs=None):
        self.current_epoch = epoch

    def on_train_batch_begin(self, batch, logs=None):
        if (self.current_epoch, batch) == (self.epoch, self.batch):
            raise RuntimeError("interrupted")


def markdown_rows(output, first_header):
    """The rows of the markdown table whose header starts with `first_header`,
    as `{first cell: {column: cell}}`."""

    def cells(line):
        return [cell.strip() for cell in line.strip().strip("|").split("|")]

    lines = output.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {first_header} "))
    header = cells(lines[start])
    rows = {}
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        row = cells(line)
        rows[row[0]] = dict(zip(header[1:], row[1:]))
    return rows


def value_and_grad(fn, x, jit=False):
    """Value of scalar `fn(x)` and its gradient, as float64 NumPy arrays.

    With `jit=True` the computation is compiled: `tf.function(jit_compile=True)`
    on TensorFlow, `jax.jit` on JAX, `torch.compile` of the forward pass on PyTorch.
    """
    value, (grad,) = value_and_grads(fn, (x,), jit)
    return value, grad


def value_and_grads(fn, xs, jit=False):
    """Value of scalar `fn(*xs)` and its gradients with respect to each of
    `xs`, as float64 NumPy arrays; `jit` as for `value_and_grad`."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        def step(*xs):
            with tf.GradientTape() as tape:
                tape.watch(xs)
                value = fn(*xs)
            return value, tape.gradient(value, xs)

        if jit:
            step = tf.function(step, jit_compile=True)
        value, grads = step(*(tf.constant(x) for x in xs))
    elif backend == "jax":
        import jax

        step = jax.value_and_grad(fn, argnums=tuple(range(len(xs))))
        if jit:
            step = jax.jit(step)
        value, grads = step(*(jax.numpy.asarray(x) for x in xs))
    elif backend == "torch":
        import torch

        forward = torch.compile(fn) if jit else fn
        xs = [
            keras.ops.convert_to_tensor(x).detach().clone().requires_grad_(True)
            for x in xs
        ]
        value = forward(*xs)
        grads = torch.autograd.grad(value, xs)
    else:
        raise ValueError(f"Unsupported backend {backend}")
    # Through float32: TensorFlow cannot hand a bfloat16 scalar to NumPy.
    return to_numpy(value), tuple(to_numpy(grad) for grad in grads)


def reset_compiled_functions():
    """Forgets what `torch.compile` compiled, on PyTorch.

    After 8 models' steps one code object exceeds dynamo's recompile limit
    and then runs eagerly; a test of what compiled steps do starts afresh.
    """
    if keras.backend.backend() == "torch":
        import torch

        torch._dynamo.reset()
