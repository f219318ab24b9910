"""Every private Keras symbol this package uses, in one place.

Keras keeps tensor masks and loss reduction out of its public API. A custom
`Loss.__call__` needs both, so a Keras upgrade that moves them breaks here
and nowhere else.
"""

from keras.src.backend.common.masking import get_keras_mask
from keras.src.backend.common.masking import set_keras_mask
from keras.src.losses.loss import reduce_weighted_values

__all__ = ["get_keras_mask", "reduce_weighted_values", "set_keras_mask"]
