"""Every private Keras symbol this package uses, in one place.

Keras keeps tensor masks, loss reduction and its symbolic-build scope (in
which tensors hold placeholder values) out of its public API. This package
needs all three, so a Keras upgrade that moves them breaks here
and nowhere else.
"""

from keras.src.backend.common.masking import get_keras_mask
from keras.src.backend.common.masking import set_keras_mask
from keras.src.backend.common.symbolic_scope import in_symbolic_scope
from keras.src.losses.loss import reduce_weighted_values

__all__ = [
    "get_keras_mask",
    "in_symbolic_scope",
    "reduce_weighted_values",
    "set_keras_mask",
]
