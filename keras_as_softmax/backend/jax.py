"""JAX-specific operations (they import nothing of this package)."""

import jax
import keras
import numpy as np


def known_values(x):
    """`x` as a NumPy array if its values are known now, else None (traced).

    Example:

    >>> known_values(keras.ops.convert_to_tensor([1, 2])).tolist()
    [1, 2]
    """
    if isinstance(x, jax.core.Tracer):
        return None
    return np.asarray(x)


def branch_value(x):
    """The value of scalar `x` if known now (eager), else None: a traced
    step branches with `lax.cond`/`lax.switch`."""
    if isinstance(x, jax.core.Tracer):
        return None
    return np.asarray(x).item()


# XLA fuses the `keras.ops` form of the sparse loss well: no kernel of our own.
fused_sparse_as_softmax_loss = None

# Nor of the fused projection's chunks (`keras_as_softmax.linear_as_softmax`).
add_chunk_gradients = chunk_as_softmax = chunk_logits = scale_held_gradients = None

# The fused projection adds each chunk's kernel gradient into one buffer,
# which XLA updates in place, a slice of this many classes at a time: a
# chunk's whole `(H, V)` product would be a second kernel-sized temporary
# (XLA's CPU backend does not fuse a product into the add).
kernel_gradient_slice = 8192


def sum_across_replicas(x):
    """`x` summed over data-parallel replicas: JAX arrays are already global."""
    return x


def eager_under_torch_compile(function):
    """`function` as it is: only PyTorch compiles the Python that a step
    calls."""
    return function


def compile_chunk_loop(function):
    """The fused projection loss's chunk loop as it is: the caller's `jit`
    compiles it with XLA."""
    return function


# JAX runs a loop's iterations one at a time.
sequential_while_loop = keras.ops.while_loop
