"""Every private Keras symbol this package uses, in one place.

Keras keeps tensor masks, loss reduction, its symbolic-build scope (in
which tensors hold placeholder values), the (un)tracking of a layer's
attributes and the loss unscaling of `tf.distribute` out of its public
API. This package needs them, so a Keras upgrade that moves them breaks
here and nowhere else.
"""

import contextlib

from keras.src.backend.common.masking import get_keras_mask
from keras.src.backend.common.masking import set_keras_mask
from keras.src.backend.common.symbolic_scope import in_symbolic_scope
from keras.src.losses.loss import reduce_weighted_values
from keras.src.losses.loss import unscale_loss_for_distribution


@contextlib.contextmanager
def unlocked(layer):
    """Lets a built layer (e.g. a subclassed model) track new state: Keras
    locks it after `build`."""
    tracker = layer._tracker
    was_locked = tracker.locked
    tracker.unlock()
    try:
        yield
    finally:
        if was_locked:
            tracker.lock()


def untrack(layer, value):
    """Stops `layer` tracking `value` (e.g. a metric), as `__delattr__` does
    for variables only."""
    layer._tracker.untrack(value)


__all__ = [
    "get_keras_mask",
    "in_symbolic_scope",
    "reduce_weighted_values",
    "set_keras_mask",
    "unlocked",
    "unscale_loss_for_distribution",
    "untrack",
]
