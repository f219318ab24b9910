"""The base class of this package's losses: a loss function as a `Loss`.

As Keras's `LossFunctionWrapper` (private in Keras), a `FunctionLoss` is a
loss function with keyword arguments, which are also its config. Unlike
Keras's base `Loss`, `y_true` is never cast to the loss dtype, so class ids
stay exact under float16/bfloat16 (which would round ids above 2048 or 256),
and per-sample weights `(B,)` broadcast over per-token losses `(B, T)` even
with a Keras mask.
"""

import keras
from keras import ops

from keras_as_softmax._keras_private import get_keras_mask
from keras_as_softmax._keras_private import reduce_weighted_values
from keras_as_softmax.input_checks import align_weights


class FunctionLoss(keras.losses.Loss):
    """Wraps `fn(y_true, y_pred, **kwargs)` into a `Loss`.

    Each keyword argument is an attribute of the loss and part of its
    config. `fn` returns the per-position losses, with a Keras mask where
    positions are ignored; Keras's reductions, sample weights and masks
    apply to them.

    Weights of shape `(B,)` or `(B, 1)` over `(B, T)` losses weigh each
    position of their sample. Without a mask, `mean_with_sample_weight`
    divides by their sum as Keras does, once per sample, unless the class
    sets `weights_fill_losses` (then once per position, as with a mask).

    Args:
        fn: The loss function.
        reduction, name, dtype: As in `keras.losses.Loss`.
        **kwargs: The keyword arguments of `fn`.

    Example:

    >>> def squared_error(y_true, y_pred, scale=1.0):
    ...     y_true = keras.ops.convert_to_tensor(y_true)  # As given.
    ...     return scale * keras.ops.mean((y_true - y_pred) ** 2, axis=-1)
    >>> loss_fn = FunctionLoss(squared_error, name="squared", scale=2.0)
    >>> loss_fn.scale, loss_fn.get_config()["scale"]
    (2.0, 2.0)
    >>> round(float(loss_fn([[0.0, 1.0]], [[1.0, 1.0]])), 4)
    1.0
    """

    weights_fill_losses = False

    def __init__(
        self,
        fn,
        reduction="sum_over_batch_size",
        name=None,
        dtype=None,
        **kwargs,
    ):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.fn = fn
        self._fn_arg_names = tuple(kwargs)
        for arg_name, value in kwargs.items():
            setattr(self, arg_name, value)

    def _fn_arguments(self):
        return {arg_name: getattr(self, arg_name) for arg_name in self._fn_arg_names}

    def get_config(self):
        return {
            **super().get_config(),
            "dtype": self.dtype,
            **self._fn_arguments(),
        }

    def call(self, y_true, y_pred):
        return self.fn(y_true, y_pred, **self._fn_arguments())

    def _losses_and_flags(self, y_true, y_pred):
        """`(losses, flags)`: `call`'s losses and, for `_seen`, anything
        else their computation gives (None here)."""
        return self.call(y_true, y_pred), None

    def _seen(self, flags, losses, mask, sample_weight):
        """Called by `__call__` with each call's flags, losses, mask and
        aligned weights, before the reduction; does nothing here."""

    def __call__(self, y_true, y_pred, sample_weight=None):
        # `keras.losses.Loss.__call__`, except that `y_true` keeps its dtype
        # and weights get the losses' shape.
        in_mask = get_keras_mask(y_pred)
        with keras.name_scope(self.name):
            y_pred = ops.convert_to_tensor(y_pred, dtype=self.dtype)
            losses, flags = self._losses_and_flags(y_true, y_pred)
            mask, sample_weight = self._mask_and_weights(in_mask, losses, sample_weight)
            self._seen(flags, losses, mask, sample_weight)
            return reduce_weighted_values(
                losses,
                sample_weight=sample_weight,
                mask=mask,
                reduction=self.reduction,
                dtype=self.dtype,
            )

    def _mask_and_weights(self, in_mask, losses, sample_weight):
        """`(mask, sample_weight)` that `__call__` reduces `losses` with:
        `in_mask` and the losses' Keras mask, and the weights aligned."""
        mask = and_masks(in_mask, get_keras_mask(losses))
        if sample_weight is not None:
            # Keras cannot broadcast (B,) weights over (B, T) losses, nor
            # weights over a mask on every backend: give them the losses'
            # rank, and their shape where a mask needs it.
            sample_weight = ops.cast(align_weights(sample_weight, losses), losses.dtype)
            if mask is not None or self.weights_fill_losses:
                sample_weight = ops.multiply(sample_weight, ops.ones_like(losses))
        return mask, sample_weight

    def _reduction_weights(self, losses, mask, sample_weight):
        """The weights `c`, shape of `losses`, for which `sum(c * losses)`
        is `__call__`'s reduction of `losses` (all of Keras's reductions
        but "none" are linear): what a loss that computes its gradient in
        the forward pass needs to know first."""
        ones = ops.ones_like(losses)
        weights = reduce_weighted_values(
            ones, sample_weight=sample_weight, mask=mask, reduction="none", dtype=self.dtype
        )
        total = reduce_weighted_values(
            ones,
            sample_weight=sample_weight,
            mask=mask,
            reduction=self.reduction,
            dtype=self.dtype,
        )
        return weights * ops.divide_no_nan(total, ops.sum(weights))

    def _divisor_shares(self, losses, mask, sample_weight):
        """Per sample (first axis), its part of the number that `__call__`'s
        reduction divides the weighted sum by: its positions not masked for
        `sum_over_batch_size`, their weights for `mean_with_sample_weight`;
        None for `sum`, which divides by nothing. A batch's divisor is the
        sum of its samples' shares, so a batch gathered from several keeps
        the reduction it would have had as one batch."""
        if self.reduction == "sum":
            return None
        shares = ops.ones_like(losses)
        if mask is not None:
            shares = shares * ops.cast(mask, losses.dtype)
        if self.reduction == "mean_with_sample_weight" and sample_weight is not None:
            shares = shares * sample_weight
        if len(shares.shape) > 1:
            shares = ops.sum(ops.reshape(shares, (ops.shape(shares)[0], -1)), axis=1)
        return shares


def and_masks(mask, other):
    """The logical and of two optional boolean masks.

    Example:

    >>> and_masks(None, None) is None
    True
    >>> mask = and_masks(keras.ops.convert_to_tensor([True, True]),
    ...                  keras.ops.convert_to_tensor([1.0, 0.0]))
    >>> keras.ops.convert_to_numpy(mask).tolist()
    [True, False]
    """
    if mask is None or other is None:
        return other if mask is None else mask
    return ops.logical_and(ops.cast(mask, "bool"), ops.cast(other, "bool"))
