"""The per-backend parts of the tests: gradients and compilation."""

import keras
import numpy as np


def value_and_grad(fn, x, jit=False):
    """Value of scalar `fn(x)` and its gradient, as float64 NumPy arrays.

    With `jit=True` the computation is compiled: `tf.function(jit_compile=True)`
    on TensorFlow, `jax.jit` on JAX, `torch.compile` of the forward pass on PyTorch.
    """
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        def step(x):
            with tf.GradientTape() as tape:
                tape.watch(x)
                value = fn(x)
            return value, tape.gradient(value, x)

        if jit:
            step = tf.function(step, jit_compile=True)
        value, grad = step(tf.constant(x))
    elif backend == "jax":
        import jax

        step = jax.value_and_grad(fn)
        if jit:
            step = jax.jit(step)
        value, grad = step(jax.numpy.asarray(x))
    elif backend == "torch":
        import torch

        forward = torch.compile(fn) if jit else fn
        x = keras.ops.convert_to_tensor(x).detach().clone().requires_grad_(True)
        value = forward(x)
        (grad,) = torch.autograd.grad(value, x)
    else:
        raise ValueError(f"Unsupported backend {backend}")
    # Through float32: TensorFlow cannot hand a bfloat16 scalar to NumPy.
    return tuple(
        keras.ops.convert_to_numpy(keras.ops.cast(t, "float32")).astype(np.float64)
        for t in (value, grad)
    )


def reset_compiled_functions():
    """Forgets what `torch.compile` compiled, on PyTorch.

    After 8 models' steps one code object exceeds dynamo's recompile limit
    and then runs eagerly; a test of what compiled steps do starts afresh.
    """
    if keras.backend.backend() == "torch":
        import torch

        torch._dynamo.reset()
