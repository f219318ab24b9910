"""Adaptive Sparse Softmax (AS-Softmax) cross-entropy for single-label targets.

For one sample with logits `z`, target class `t` and `p = softmax(z)`, every
class `i` with `p_t - p_i > delta` is dropped and the loss is the
cross-entropy over the classes that remain:

    loss = logsumexp(z over kept classes) - z_t

`delta = 1` keeps every class (plain softmax cross-entropy). A sample whose
every other class is dropped has loss and gradient 0: it is *masked*.
Inference is unchanged: the most probable class is never dropped.
"""

import contextlib

import keras
import numpy as np
from keras import ops

from keras_as_softmax._keras_private import get_keras_mask
from keras_as_softmax._keras_private import in_symbolic_scope
from keras_as_softmax._keras_private import reduce_weighted_values
from keras_as_softmax._keras_private import set_keras_mask
from keras_as_softmax.backend import fused_sparse_as_softmax_loss
from keras_as_softmax.backend import known_values

_LOW_PRECISION_DTYPES = ("float16", "bfloat16")


def validate_delta(delta, allow_tensor=True):
    """Checks `delta` and returns it.

    Args:
        delta: A number in `[0, 1]`; if `allow_tensor`, also a scalar tensor
            or `keras.Variable`, whose value may be unknown until run time
            and is therefore clipped to `[0, 1]` instead of checked.
        allow_tensor: Whether a tensor or variable is accepted.

    Returns:
        `delta` as a Python float, or the clipped scalar tensor.
    """
    if isinstance(delta, np.ndarray) and delta.ndim == 0:
        delta = delta.item()
    if isinstance(delta, keras.Variable) or ops.is_tensor(delta):
        if not allow_tensor:
            raise TypeError(
                "`delta` of a loss object must be a Python number in [0, 1] "
                f"(it is saved with the loss's config); received "
                f"{type(delta).__name__}."
            )
        if len(delta.shape) != 0:
            raise ValueError(
                "`delta` must be a scalar; received a tensor of shape "
                f"{tuple(delta.shape)}."
            )
        return ops.clip(delta, 0.0, 1.0)
    if isinstance(delta, bool) or not isinstance(delta, (int, float, np.number)):
        raise TypeError(
            "`delta` must be a number in [0, 1]; received "
            f"{type(delta).__name__}: {delta!r}."
        )
    if not 0.0 <= delta <= 1.0:
        raise ValueError(
            "`delta` must be in [0, 1] (1 is plain softmax cross-entropy, "
            f"smaller values drop more classes); received delta={delta}."
        )
    return float(delta)


def sparse_as_softmax_crossentropy(
    y_true, y_pred, delta=0.1, from_logits=True, ignore_class=None, axis=-1
):
    """AS-Softmax cross-entropy between integer targets and predictions.

    Args:
        y_true: Class ids, shape `y_pred.shape` without `axis` (or with
            size 1 there), as integers or as floats that are whole numbers.
        y_pred: Logits (or probabilities if `from_logits=False`), with the
            classes along `axis`, e.g. `(B, C)` or `(B, T, C)`.
        delta: Drop margin in `[0, 1]`; class `i` is dropped when
            `p_t - p_i > delta`. `1.0` is plain softmax cross-entropy.
        from_logits: Whether `y_pred` holds logits rather than probabilities
            (which, as in Keras, are divided by their sum, then clipped to
            `[epsilon, 1 - epsilon]` for the target's log).
        ignore_class: Optional class id (e.g. padding) whose positions get
            loss 0 and are left out of the mean of `SparseASSoftmaxCrossentropy`.
        axis: The class axis of `y_pred`.

    Returns:
        The per-position loss, shape of `y_true`; float32 for float16 or
        bfloat16 inputs, else the dtype of `y_pred`.

    Example:

    >>> loss = sparse_as_softmax_crossentropy(
    ...     [1, 2], [[1.2, 1.5, 1.0, -0.35], [2.5, 3.5, 0.4, 0.3]], delta=0.1)
    >>> # loss ~ [0.0, 3.4741]: the first sample is masked.
    """
    return _sparse_losses_and_masked(
        y_true, y_pred, delta, from_logits, ignore_class, axis
    )[0]


def as_softmax_crossentropy(y_true, y_pred, delta=0.1, from_logits=True, axis=-1):
    """AS-Softmax cross-entropy between one-hot targets and predictions.

    The target class of each position is `argmax(y_true)`.

    Args:
        y_true: One-hot targets, same shape as `y_pred`.
        y_pred: Logits (or probabilities if `from_logits=False`).
        delta: Drop margin in `[0, 1]`; `1.0` is plain softmax cross-entropy.
        from_logits: Whether `y_pred` holds logits rather than probabilities.
        axis: The class axis.

    Returns:
        The per-position loss, shape of `y_pred` without `axis`.

    Raises:
        ValueError: If `y_true`'s values are known now (outside a traced
            function) and some position is not one-hot: AS-Softmax needs a
            single target class, so soft or smoothed labels are refused.

    Example:

    >>> loss = as_softmax_crossentropy(
    ...     [[0, 1, 0, 0], [0, 0, 1, 0]],
    ...     [[1.2, 1.5, 1.0, -0.35], [2.5, 3.5, 0.4, 0.3]], delta=0.1)
    """
    return _one_hot_losses_and_masked(y_true, y_pred, delta, from_logits, axis)[0]


def sparse_as_softmax_mask(
    y_true,
    y_pred,
    delta=0.1,
    from_logits=True,
    ignore_class=None,
    axis=-1,
    sample_weight=None,
    mask=None,
):
    """Which classes AS-Softmax keeps, and how many samples it masks.

    A position *counts* unless its target is `ignore_class`, `mask` is
    False there, or its `sample_weight` is 0. A counted position is *masked*
    when every class but its target is dropped (its loss and gradient are 0).

    Args:
        y_true, y_pred, delta, from_logits, ignore_class, axis: As for
            `sparse_as_softmax_crossentropy`.
        sample_weight: Optional weights, shape of `y_true` or a prefix of it.
        mask: Optional boolean Keras mask, shape of `y_true`.

    Returns:
        A tuple `(keep, num_masked, num_counted)`: the boolean keep mask with
        the shape of `y_pred` (classes last), and two int32 scalars.

    Example:

    >>> keep, num_masked, num_counted = sparse_as_softmax_mask(
    ...     [1, 2], [[1.2, 1.5, 1.0, -0.35], [2.5, 3.5, 0.4, 0.3]], delta=0.1)
    >>> # num_masked == 1, num_counted == 2
    """
    delta = validate_delta(delta)
    targets, scores, valid, _ = _prepare_sparse(
        y_true, y_pred, from_logits, ignore_class, axis
    )
    return _mask_and_counts(
        targets, scores, delta, from_logits, valid, sample_weight, mask
    )


def as_softmax_mask(
    y_true,
    y_pred,
    delta=0.1,
    from_logits=True,
    axis=-1,
    sample_weight=None,
    mask=None,
):
    """`sparse_as_softmax_mask` for one-hot targets.

    Returns:
        A tuple `(keep, num_masked, num_counted)`.
    """
    delta = validate_delta(delta)
    targets, scores = _prepare_one_hot(y_true, y_pred, axis)
    return _mask_and_counts(
        targets, scores, delta, from_logits, None, sample_weight, mask
    )


class ASLoss(keras.losses.Loss):
    """Base class of the AS-Softmax losses: owns `delta`.

    `delta` is a Python number, saved with the config. While a
    `DeltaWarmup` callback trains the model it points the loss at a variable
    that the model carries (`delta_variable`), so that a changing delta
    reaches compiled training steps; `current_delta` is whichever is in use.

    Unlike Keras's base `Loss`, `y_true` is never cast to the loss dtype (so
    class ids stay exact under float16/bfloat16), and per-sample weights
    `(B,)` broadcast over per-token losses `(B, T)` even with a Keras mask.

    Args:
        delta: Drop margin in `[0, 1]`.
        reduction, name, dtype: As in `keras.losses.Loss`.
    """

    def __init__(self, delta, reduction, name, dtype):
        super().__init__(reduction=reduction, name=name, dtype=dtype)
        self.delta = validate_delta(delta, allow_tensor=False)
        self.delta_variable = None
        self._records = None

    @property
    def current_delta(self):
        """The delta in use: `delta_variable` when set, else `delta`."""
        if self.delta_variable is None:
            return self.delta
        return self.delta_variable

    def get_config(self):
        return {**super().get_config(), "delta": self.delta, "dtype": self.dtype}

    def losses_and_masked(self, y_true, y_pred):
        """Per-position losses and, from the same computation, which
        positions are masked (loss and gradient exactly 0).

        Returns:
            A tuple `(losses, masked)`: `losses` as `call` returns them (with
            a Keras mask where positions are ignored), and a boolean tensor
            of their shape.
        """
        raise NotImplementedError

    def call(self, y_true, y_pred):
        return self.losses_and_masked(y_true, y_pred)[0]

    @contextlib.contextmanager
    def recording(self):
        """Records the per-position flags of each call made within it.

        Yields a list; each `__call__` inside appends `(masked, counted)`,
        two boolean tensors with the shape of its per-position losses:
        `counted` is False where a position is ignored (`ignore_class`, a
        Keras mask) or has weight 0, and `masked` is True where the loss
        masks a position. This is how `AdaptiveModel` learns, from the
        loss's own computation, which samples carry no gradient.
        """
        self._records = []
        try:
            yield self._records
        finally:
            self._records = None  # Tensors of a traced step must not outlive it.

    def masked_counts(self, y_true, y_pred, sample_weight=None):
        """How many positions of a batch this loss masks.

        Args:
            y_true, y_pred: A batch as this loss is called with; a Keras mask
                on `y_pred` leaves positions out.
            sample_weight: Optional weights; weight-0 positions do not count.

        Returns:
            A tuple of int32 scalars `(num_masked, num_counted)`.
        """
        return count_masked(*self.masked_flags(y_true, y_pred, sample_weight))

    def masked_flags(self, y_true, y_pred, sample_weight=None):
        """Per position of a batch, whether this loss masks it and whether it
        counts, from one call of the loss (see `recording`).

        Returns:
            A tuple of boolean tensors `(masked, counted)`, the shape of the
            per-position losses.
        """
        with self.recording() as records:
            self(y_true, y_pred, sample_weight)
        return records[0]

    def __call__(self, y_true, y_pred, sample_weight=None):
        # `keras.losses.Loss.__call__`, except that `y_true` keeps its dtype.
        in_mask = get_keras_mask(y_pred)
        with keras.name_scope(self.name):
            y_pred = ops.convert_to_tensor(y_pred, dtype=self.dtype)
            losses, masked = self.losses_and_masked(y_true, y_pred)
            mask = _and_masks(in_mask, get_keras_mask(losses))
            if sample_weight is not None:
                # Keras's mask handling cannot broadcast (B,) weights over
                # (B, T) losses; give them the losses' shape first.
                sample_weight = ops.multiply(
                    ops.cast(_align_weights(sample_weight, losses), losses.dtype),
                    ops.ones_like(losses),
                )
            if self._records is not None:
                self._records.append(
                    (masked, _counted_positions(losses, mask, sample_weight))
                )
            return reduce_weighted_values(
                losses,
                sample_weight=sample_weight,
                mask=mask,
                reduction=self.reduction,
                dtype=self.dtype,
            )


def count_masked(masked, counted):
    """`(num_masked, num_counted)`, int32 scalars, from per-position flags."""
    return (
        ops.sum(ops.cast(ops.logical_and(masked, counted), "int32")),
        ops.sum(ops.cast(counted, "int32")),
    )


def _counted_positions(losses, mask, sample_weight):
    """Positions that count: not masked out by `mask`, weight not 0."""
    counted = ops.ones(ops.shape(losses), dtype="bool")
    if mask is not None:
        counted = ops.logical_and(counted, ops.cast(mask, "bool"))
    if sample_weight is not None:
        counted = ops.logical_and(counted, ops.not_equal(sample_weight, 0))
    return counted


@keras.saving.register_keras_serializable(package="keras_as_softmax")
class SparseASSoftmaxCrossentropy(ASLoss):
    """AS-Softmax cross-entropy for integer targets.

    Unlike Keras's base `Loss`, integer targets are never cast to the loss
    dtype, so class ids stay exact under float16/bfloat16 policies.

    Args:
        delta: Drop margin in `[0, 1]`; `1.0` is plain softmax cross-entropy.
        from_logits: Whether `y_pred` holds logits rather than probabilities.
        ignore_class: Optional class id whose positions get no loss and are
            left out of the mean (as in `keras.losses.SparseCategoricalCrossentropy`).
        axis: The class axis of `y_pred`.
        reduction: As in `keras.losses.Loss`.
        name: Name of the loss instance.
        dtype: Dtype of the loss's computations, as in `keras.losses.Loss`.

    Example:

    >>> model.compile(optimizer="adam",
    ...               loss=SparseASSoftmaxCrossentropy(delta=0.1))
    """

    def __init__(
        self,
        delta=0.1,
        from_logits=True,
        ignore_class=None,
        axis=-1,
        reduction="sum_over_batch_size",
        name="sparse_as_softmax_crossentropy",
        dtype=None,
    ):
        super().__init__(delta, reduction=reduction, name=name, dtype=dtype)
        self.from_logits = from_logits
        self.ignore_class = ignore_class
        self.axis = axis

    def losses_and_masked(self, y_true, y_pred):
        return _sparse_losses_and_masked(
            y_true,
            y_pred,
            self.current_delta,
            self.from_logits,
            self.ignore_class,
            self.axis,
        )

    def get_config(self):
        return {
            **super().get_config(),
            "from_logits": self.from_logits,
            "ignore_class": self.ignore_class,
            "axis": self.axis,
        }


@keras.saving.register_keras_serializable(package="keras_as_softmax")
class ASSoftmaxCrossentropy(ASLoss):
    """AS-Softmax cross-entropy for one-hot targets.

    Args:
        delta: Drop margin in `[0, 1]`; `1.0` is plain softmax cross-entropy.
        from_logits: Whether `y_pred` holds logits rather than probabilities.
        axis: The class axis.
        reduction: As in `keras.losses.Loss`.
        name: Name of the loss instance.
        dtype: Dtype of the loss's computations, as in `keras.losses.Loss`.

    Example:

    >>> model.compile(optimizer="adam", loss=ASSoftmaxCrossentropy(delta=0.1))
    """

    def __init__(
        self,
        delta=0.1,
        from_logits=True,
        axis=-1,
        reduction="sum_over_batch_size",
        name="as_softmax_crossentropy",
        dtype=None,
    ):
        super().__init__(delta, reduction=reduction, name=name, dtype=dtype)
        self.from_logits = from_logits
        self.axis = axis

    def losses_and_masked(self, y_true, y_pred):
        return _one_hot_losses_and_masked(
            y_true, y_pred, self.current_delta, self.from_logits, self.axis
        )

    def get_config(self):
        return {
            **super().get_config(),
            "from_logits": self.from_logits,
            "axis": self.axis,
        }


def _sparse_losses_and_masked(y_true, y_pred, delta, from_logits, ignore_class, axis):
    """`(losses, masked)` of `sparse_as_softmax_crossentropy`."""
    delta = validate_delta(delta)
    targets, scores, valid, in_range = _prepare_sparse(
        y_true, y_pred, from_logits, ignore_class, axis
    )
    losses, masked = _as_softmax_loss(targets, scores, delta, from_logits)
    # An id outside [0, C) (or not a whole number) that no check could see, in
    # a compiled step, gets a NaN loss, the same on every backend, and no
    # gradient: the logged loss shows it without a host sync, and the weights
    # stay as they were.
    losses = ops.where(in_range, losses, np.nan)
    masked = ops.logical_and(masked, in_range)
    if valid is not None:
        losses = ops.where(valid, losses, 0.0)
        set_keras_mask(losses, valid)
    return losses, masked


def _one_hot_losses_and_masked(y_true, y_pred, delta, from_logits, axis):
    """`(losses, masked)` of `as_softmax_crossentropy`."""
    delta = validate_delta(delta)
    targets, scores = _prepare_one_hot(y_true, y_pred, axis)
    return _as_softmax_loss(targets, scores, delta, from_logits)


def _prepare_sparse(y_true, y_pred, from_logits, ignore_class, axis):
    """Validates sparse inputs; returns `(targets, scores, valid, in_range)`.

    `scores` are `y_pred` (logits or probabilities) with classes last, float32
    or wider; `valid` is None without `ignore_class`, else a boolean tensor
    with the targets' shape; `in_range` is where the (not ignored) ids are
    whole numbers in `[0, C)`. The returned targets are int32, 0 where
    ignored or out of range, so gathers stay in bounds.
    """
    scores = _class_last(y_pred, axis)
    targets = ops.convert_to_tensor(y_true)
    if _is_placeholder(targets):
        # Keras's symbolic build under tf.distribute averages a batch of
        # targets to learn their shape, which turns class ids into floats.
        targets = ops.cast(targets, "int32")
    dtype = keras.backend.standardize_dtype(targets.dtype)
    if "int" not in dtype and "float" not in dtype:
        raise TypeError(
            "`y_true` must hold class ids as integers (or floats that are "
            f"whole numbers); received dtype {dtype}."
        )
    # As Keras: a size-1 axis of `y_true` where `y_pred` has its classes.
    if len(targets.shape) == len(y_pred.shape) and targets.shape[axis] == 1:
        targets = ops.squeeze(targets, axis=axis)
    expected = tuple(scores.shape[:-1])
    if not _shapes_match(targets.shape, expected):
        raise ValueError(
            "`y_true` must hold one class id per position of `y_pred`, shape "
            f"{expected}; received y_true.shape={tuple(targets.shape)} and "
            f"y_pred.shape={tuple(ops.convert_to_tensor(y_pred).shape)}. For "
            "one-hot targets use `as_softmax_crossentropy`."
        )
    _check_class_ids(targets, scores.shape[-1], ignore_class)
    valid = None
    if ignore_class is not None:
        valid = ops.not_equal(targets, ignore_class)
        targets = ops.where(valid, targets, 0)
        # Ignored positions may hold anything (even -inf); keep them finite.
        filler = 0.0 if from_logits else 1.0
        scores = ops.where(ops.expand_dims(valid, -1), scores, filler)
    # Compared before any cast, so float ids are never rounded or wrapped.
    in_range = ops.logical_and(
        ops.greater_equal(targets, 0), ops.less(targets, ops.shape(scores)[-1])
    )
    if "float" in dtype:
        in_range = ops.logical_and(
            in_range, ops.equal(targets, ops.floor(targets))
        )
    targets = ops.cast(ops.where(in_range, targets, 0), "int32")
    return targets, scores, valid, in_range


def _prepare_one_hot(y_true, y_pred, axis):
    """Validates one-hot inputs; returns `(targets, scores)`."""
    y_pred = ops.convert_to_tensor(y_pred)
    scores = _class_last(y_pred, axis)
    y_true = ops.convert_to_tensor(y_true)
    if not _shapes_match(y_true.shape, y_pred.shape):
        raise ValueError(
            "`y_true` must be one-hot and must have the same shape as "
            f"`y_pred`; received y_true.shape={tuple(y_true.shape)} and "
            f"y_pred.shape={tuple(y_pred.shape)}. For integer class ids use "
            "`sparse_as_softmax_crossentropy`."
        )
    _check_one_hot(y_true, axis)
    targets = ops.argmax(y_true, axis=axis)
    return targets, scores


def _shapes_match(shape, other):
    """Whether two static shapes agree (unknown dimensions match anything)."""
    return len(shape) == len(other) and all(
        a is None or b is None or a == b for a, b in zip(shape, other)
    )


def _class_last(y_pred, axis):
    """Returns `y_pred` as float32 or wider, with the class axis last."""
    y_pred = ops.convert_to_tensor(y_pred)
    dtype = keras.backend.standardize_dtype(y_pred.dtype)
    if "float" not in dtype:
        raise TypeError(
            f"`y_pred` must be floating point; received dtype {dtype}."
        )
    if len(y_pred.shape) < 1:
        raise ValueError("`y_pred` must have a class axis; received a scalar.")
    if dtype in _LOW_PRECISION_DTYPES:
        y_pred = ops.cast(y_pred, "float32")
    return ops.moveaxis(y_pred, axis, -1)


def _check_class_ids(targets, num_classes, ignore_class):
    """Raises for class ids that are out of range or not whole numbers, when
    their values are known now."""
    class_ids = _values_if_known(targets)
    if num_classes is None or class_ids is None:
        return
    if ignore_class is not None:
        class_ids = class_ids[class_ids != ignore_class]
    whole = np.isfinite(class_ids) & (np.floor(class_ids) == class_ids)
    fractional = class_ids[~whole]
    if fractional.size:
        raise ValueError(
            f"`y_true` holds {fractional.flat[0]}, which is not a class id: "
            "float class ids must be whole numbers (Keras's own losses "
            "would silently truncate it)."
        )
    out_of_range = class_ids[(class_ids < 0) | (class_ids >= num_classes)]
    if out_of_range.size:
        bad_id = _as_python_number(out_of_range.flat[0])
        raise ValueError(
            f"`y_true` holds class id {bad_id}, outside [0, {num_classes}) "
            f"for `y_pred` with {num_classes} classes. If it marks padding "
            "(as -100 does in Hugging Face datasets), pass "
            f"`ignore_class={bad_id}` to the loss."
        )


def _as_python_number(value):
    """`value` as a Python int when it is a whole number, else a float."""
    value = value.item()
    return int(value) if float(value).is_integer() else value


def _check_one_hot(y_true, axis):
    """Raises for targets that are not one-hot when their values are known."""
    values = _values_if_known(y_true)
    if values is None:
        return
    if not (np.isin(values, (0, 1)).all() and (values.sum(axis=axis) == 1).all()):
        raise ValueError(
            "`y_true` must be one-hot: a single 1 per position, zeros "
            "elsewhere. AS-Softmax needs one target class, so soft or "
            "smoothed labels are not supported; for padded positions use "
            "integer targets with `sparse_as_softmax_crossentropy` and "
            "`ignore_class`."
        )


def _is_placeholder(x):
    """Whether `x` only stands for a shape: a `KerasTensor`, or any tensor
    inside Keras's symbolic build (e.g. the first `fit` on torch)."""
    return isinstance(x, keras.KerasTensor) or in_symbolic_scope()


def _values_if_known(x):
    """`x` as a NumPy array if its values are known now, else None."""
    if _is_placeholder(x):
        return None
    return known_values(x)


def _align_weights(sample_weight, values):
    """Gives `sample_weight` the rank of `values` (trailing axes of size 1).

    Raises unless the weights' shape is a prefix of the values' shape, up to
    axes of size 1: anything else would broadcast silently.
    """
    sample_weight = ops.convert_to_tensor(sample_weight)
    rank = len(values.shape)
    if len(sample_weight.shape) == rank + 1 and sample_weight.shape[-1] == 1:
        sample_weight = ops.squeeze(sample_weight, axis=-1)
    weight_shape = tuple(sample_weight.shape)
    if len(weight_shape) > rank or not all(
        a in (None, 1) or b is None or a == b
        for a, b in zip(weight_shape, values.shape)
    ):
        raise ValueError(
            "`sample_weight` must have the shape of the per-sample losses, "
            f"{tuple(values.shape)}, or a prefix of it (e.g. one weight per "
            f"sample); received sample_weight.shape={weight_shape}."
        )
    while len(sample_weight.shape) < rank:
        sample_weight = ops.expand_dims(sample_weight, -1)
    return sample_weight


def _keep_mask(target_index, logits, delta):
    """Returns `(probs, target_log_prob, target_prob, keep)`.

    `keep` is `z_i >= z_t or p_i >= p_t - delta`, on `p = softmax(logits)`:
    the target is always kept. The mask is a comparison: no gradient flows
    through it. The PyTorch kernel (`keras_as_softmax.backend.torch`) takes
    the same `torch.softmax` values and makes the same comparison, so masks
    and losses agree there.
    """
    probs = ops.softmax(logits, axis=-1)
    target_prob = ops.take_along_axis(probs, target_index, axis=-1)
    target_log_prob = ops.take_along_axis(
        ops.log_softmax(logits, axis=-1), target_index, axis=-1
    )
    if not isinstance(delta, float):
        delta = ops.cast(delta, logits.dtype)
    # Classes at or above the target's logit are kept whatever `exp`'s
    # rounding (TensorFlow rounds equal inputs differently within a row).
    target_logit = ops.take_along_axis(logits, target_index, axis=-1)
    keep = ops.logical_or(
        ops.greater_equal(logits, target_logit),
        ops.greater_equal(probs, target_prob - delta),
    )
    return probs, target_log_prob, target_prob, keep


def _as_softmax_loss(targets, scores, delta, from_logits):
    """Per-position `(losses, masked)`: the loss `log(sum of kept p) -
    log(p_t)`, and where it is masked (loss and gradient exactly 0)."""
    target_index = ops.expand_dims(ops.cast(targets, "int32"), -1)
    if not isinstance(delta, float):
        delta = ops.cast(delta, scores.dtype)
    if from_logits:
        return _logit_loss(target_index, scores, delta)
    return _probability_loss(target_index, scores, delta)


def _logit_loss(target_index, logits, delta):
    """`_as_softmax_loss` from logits. The gradient is written out,
    `g * (kept p / sum of kept p - onehot(t))`, so that autodiff keeps no
    buffer of the logits' size beyond the kept probabilities."""
    if isinstance(logits, keras.KerasTensor):
        losses, _, _, masked = _losses_and_kept(target_index, logits, delta)
        return losses, ops.squeeze(masked, -1)
    if fused_sparse_as_softmax_loss is not None:
        return fused_sparse_as_softmax_loss(target_index, logits, delta)
    # No gradient flows through the statistics: the gradient is written out.
    losses, kept_probs, kept_sum, masked = _losses_and_kept(
        target_index, ops.stop_gradient(logits), delta
    )

    @ops.custom_gradient
    def with_gradient(logits):
        def gradient(*args, upstream=None):
            if upstream is None:
                (upstream,) = args
            upstream = ops.where(masked, 0.0, ops.expand_dims(upstream, -1))
            grad = kept_probs * (upstream / kept_sum)
            classes = ops.arange(ops.shape(logits)[-1], dtype="int32")
            return ops.where(
                ops.equal(classes, target_index), grad - upstream, grad
            )

        return losses, gradient

    return with_gradient(logits), ops.squeeze(masked, -1)


def _losses_and_kept(target_index, logits, delta):
    """Returns `(losses, kept_probs, kept_sum, masked)`, the last two and the
    kept probabilities with the class axis kept (size 1 or all classes).

    """
    probs, target_log_prob, target_prob, keep = _keep_mask(
        target_index, logits, delta
    )
    kept_probs = ops.where(keep, probs, 0.0)
    kept_sum = ops.sum(kept_probs, axis=-1, keepdims=True)
    masked = _is_masked(kept_sum, target_prob)
    losses = ops.where(masked, 0.0, ops.log(kept_sum) - target_log_prob)
    return ops.squeeze(losses, axis=-1), kept_probs, kept_sum, masked


def _is_masked(kept_sum, target_prob):
    """Where a position is masked: its kept probabilities sum to exactly
    `p_t`, so only the target is kept (or what else is kept rounds away),
    and its loss and gradient are 0. The one definition of "masked", for the
    loss, its gradient and the counts alike."""
    return ops.equal(kept_sum, target_prob)


def _probability_keep_mask(target_index, probs, delta):
    """`_keep_mask` for probabilities: returns `(probs, target_prob, keep)`.

    As Keras's cross-entropy from probabilities, each position's
    probabilities are first divided by their sum.
    """
    probs = probs / ops.sum(probs, axis=-1, keepdims=True)
    target_prob = ops.take_along_axis(probs, target_index, axis=-1)
    return probs, target_prob, ops.greater_equal(probs, target_prob - delta)


def _probability_loss(target_index, probs, delta):
    """`_as_softmax_loss` for probabilities: `log(sum of kept p) -
    log(clip(p_t))`. At `delta = 1` the kept sum is 1, and the loss is
    Keras's `-log(clip(p_t, epsilon, 1 - epsilon))`, gradient included:
    probabilities that are 0 are not clipped up into the sum."""
    probs, target_prob, keep = _probability_keep_mask(target_index, probs, delta)
    kept_sum = ops.sum(ops.where(keep, probs, 0.0), axis=-1, keepdims=True)
    masked = _is_masked(kept_sum, target_prob)
    epsilon = keras.backend.epsilon()
    losses = ops.log(kept_sum) - ops.log(
        ops.clip(target_prob, epsilon, 1.0 - epsilon)
    )
    losses = ops.where(masked, 0.0, losses)
    return ops.squeeze(losses, -1), ops.squeeze(masked, -1)


def _mask_and_counts(targets, scores, delta, from_logits, valid, sample_weight, mask):
    target_index = ops.expand_dims(ops.cast(targets, "int32"), -1)
    if from_logits:
        probs, _, target_prob, keep = _keep_mask(target_index, scores, delta)
    else:
        probs, target_prob, keep = _probability_keep_mask(
            target_index, scores, delta
        )
    kept_sum = ops.sum(ops.where(keep, probs, 0.0), axis=-1, keepdims=True)
    masked = ops.squeeze(_is_masked(kept_sum, target_prob), -1)
    if sample_weight is not None:
        sample_weight = _align_weights(sample_weight, targets)
    counted = _counted_positions(targets, _and_masks(valid, mask), sample_weight)
    num_masked, num_counted = count_masked(masked, counted)
    return keep, num_masked, num_counted


def _and_masks(mask, other):
    """The logical and of two optional boolean masks."""
    if mask is None or other is None:
        return other if mask is None else mask
    return ops.logical_and(mask, ops.cast(other, "bool"))
