"""TensorFlow-specific code."""

import numpy as np
import tensorflow as tf


def known_values(x):
    """`x` as a NumPy array if its values are known now, else None (in a graph)."""
    if tf.is_symbolic_tensor(x):
        return None
    return np.asarray(x)
