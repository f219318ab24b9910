"""TensorFlow-specific operations (they import nothing of this package)."""

import numpy as np
import tensorflow as tf


def known_values(x):
    """`x` as a NumPy array if its values are known now, else None (in a graph).

    Example:

    >>> known_values(keras.ops.convert_to_tensor([1, 2])).tolist()
    [1, 2]
    """
    if tf.is_symbolic_tensor(x):
        return None
    return np.asarray(x)


def branch_value(x):
    """The value of scalar `x` if known now (eager), else None: a graph
    branches with `tf.cond`/`tf.switch_case`."""
    if tf.is_symbolic_tensor(x):
        return None
    return np.asarray(x).item()


# XLA fuses the `keras.ops` form of the sparse loss well: no kernel of our own.
fused_sparse_as_softmax_loss = None

# Nor of the fused projection's chunks (`keras_as_softmax.linear_as_softmax`).
add_chunk_gradients = chunk_as_softmax = chunk_logits = scale_held_gradients = None

# The fused projection adds each chunk's kernel gradient into one buffer,
# which XLA (`compile_chunk_loop`) updates in place, a slice of this many
# classes at a time: a chunk's whole `(H, V)` product would be a second
# kernel-sized temporary.
kernel_gradient_slice = 8192


def sum_across_replicas(x):
    """`x` summed over the replicas of a `tf.distribute` strategy."""
    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return x
    return context.all_reduce(tf.distribute.ReduceOp.SUM, x)


def eager_under_torch_compile(function):
    """`function` as it is: only PyTorch compiles the Python that a step
    calls."""
    return function


def compile_chunk_loop(function):
    """The fused projection loss's chunk loop compiled with XLA, also in
    graph mode and eagerly: the graph executor runs a chunk's elementwise
    work one operation at a time, each writing a chunk-sized buffer, and
    copies a buffer to update a slice of it; XLA fuses the one and does
    the other in place."""
    return tf.function(function, jit_compile=True)


def sequential_while_loop(cond, body, loop_vars):
    """`keras.ops.while_loop` with one iteration at a time: TensorFlow's
    graph executor otherwise runs up to 10 iterations at once, each with its
    own buffers (10 chunks of logits where the fused loss wants one).

    Example:

    >>> int(sequential_while_loop(lambda i: i < 3, lambda i: (i + 1,), (0,))[0])
    3
    """
    return tf.while_loop(
        cond, lambda *args: tuple(body(*args)), tuple(loop_vars), parallel_iterations=1
    )
