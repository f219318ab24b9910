"""Checks of the AS-Softmax losses' inputs: what they raise for, in one place.

Shapes, dtypes and `delta` are checked always; the targets' values (class
ids, one-hot and multi-hot labels) whenever they are known: eagerly, not
inside a traced or compiled function.
"""

import keras
import numpy as np
from keras import ops

from keras_as_softmax._keras_private import in_symbolic_scope
from keras_as_softmax.backend import known_values

_LOW_PRECISION_DTYPES = ("float16", "bfloat16")
# What a shape-mismatch error of the sparse AS-Softmax loss suggests.
_ONE_HOT_HINT = " For one-hot targets use `as_softmax_crossentropy`."


def validate_delta(delta, allow_tensor=True):
    """Checks `delta` and returns it.

    Args:
        delta: A number in `[0, 1]`; if `allow_tensor`, also a scalar tensor
            or `keras.Variable`, whose value may be unknown until run time
            and is therefore clipped to `[0, 1]` instead of checked.
        allow_tensor: Whether a tensor or variable is accepted.

    Returns:
        `delta` as a Python float, or the clipped scalar tensor.

    Example:

    >>> validate_delta(np.float32(0.5))
    0.5
    >>> float(validate_delta(keras.ops.convert_to_tensor(1.5)))
    1.0
    >>> validate_delta(2)
    Traceback (most recent call last):
    ...
    ValueError: `delta` must be in [0, 1] (1 is plain softmax cross-entropy, ...
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


def float_predictions(y_pred, axis=-1, requirement="be floating point"):
    """Checks `y_pred` and returns it as float32 or wider, classes last.

    Args:
        y_pred: Logits or probabilities with the classes along `axis`.
        axis: The class axis.
        requirement: What the `TypeError` for another dtype says `y_pred`
            must do, e.g. "hold floating-point logits".

    Returns:
        `y_pred` as a tensor, float16 and bfloat16 cast to float32, with the
        class axis moved last.

    Example:

    >>> scores = float_predictions(np.zeros((2, 3, 4), "float16"), axis=1)
    >>> tuple(scores.shape), keras.backend.standardize_dtype(scores.dtype)
    ((2, 4, 3), 'float32')
    """
    y_pred = ops.convert_to_tensor(y_pred)
    dtype = keras.backend.standardize_dtype(y_pred.dtype)
    if "float" not in dtype:
        raise TypeError(
            f"`y_pred` must {requirement}; received dtype {dtype}."
        )
    rank = len(y_pred.shape)
    if rank < 1:
        raise ValueError("`y_pred` must have a class axis; received a scalar.")
    if dtype in _LOW_PRECISION_DTYPES:
        y_pred = ops.cast(y_pred, "float32")
    if axis in (-1, rank - 1):
        return y_pred
    return ops.moveaxis(y_pred, axis, -1)


def sparse_targets(y_true, y_pred, axis=-1, hint=_ONE_HOT_HINT):
    """Checks class ids for `y_pred` and returns them, one per position.

    As in Keras, `y_true` may have a size-1 axis where `y_pred` has its
    classes; it is squeezed.

    Args:
        y_true: Class ids, as integers or as floats that are whole numbers.
        y_pred: The predictions, a tensor with the classes along `axis`.
        axis: The class axis of `y_pred`.
        hint: What the shape-mismatch error suggests after its message
            (by default, the AS-Softmax loss for one-hot targets).

    Returns:
        `y_true` as a tensor of its own dtype (int32 inside Keras's symbolic
        build), the shape of `y_pred` without `axis`.

    Example:

    >>> targets = sparse_targets([[1], [2]], keras.ops.zeros((2, 4)))
    >>> tuple(targets.shape)
    (2,)
    """
    targets = ops.convert_to_tensor(y_true)
    if is_placeholder(targets):
        # Keras's symbolic build under tf.distribute averages a batch of
        # targets to learn their shape, which turns class ids into floats.
        targets = ops.cast(targets, "int32")
    dtype = keras.backend.standardize_dtype(targets.dtype)
    if "int" not in dtype and "float" not in dtype:
        raise TypeError(
            "`y_true` must hold class ids as integers (or floats that are "
            f"whole numbers); received dtype {dtype}."
        )
    if len(targets.shape) == len(y_pred.shape) and targets.shape[axis] == 1:
        targets = ops.squeeze(targets, axis=axis)
    expected = list(y_pred.shape)
    del expected[axis]
    if not shapes_match(targets.shape, expected):
        raise ValueError(
            "`y_true` must hold one class id per position of `y_pred`, shape "
            f"{tuple(expected)}; received y_true.shape={tuple(targets.shape)} "
            f"and y_pred.shape={tuple(y_pred.shape)}.{hint}"
        )
    return targets


def sparse_inputs(
    y_true,
    y_pred,
    ignore_class=None,
    axis=-1,
    filler=0.0,
    requirement="be floating point",
    hint=_ONE_HOT_HINT,
):
    """Checks class ids and predictions; returns them ready to gather.

    Args:
        y_true: Class ids, as for `sparse_targets`.
        y_pred: Predictions with the classes along `axis`.
        ignore_class: Optional class id (e.g. padding) left out.
        axis: The class axis of `y_pred`.
        filler: The value that ignored positions' predictions get, so that
            they stay finite whatever they held (even -inf).
        requirement: As for `float_predictions`.
        hint: As for `sparse_targets`.

    Returns:
        A tuple `(targets, scores, valid, in_range)`: `targets` the int32
        class ids, 0 where ignored or out of range so that gathers stay in
        bounds; `scores` as `float_predictions` returns them; `valid` None
        without `ignore_class`, else where the targets are not
        `ignore_class`; `in_range` None where the ids were checked (their
        values are known), else where the ids are whole numbers in `[0, C)`.

    Example:

    >>> targets, scores, valid, in_range = sparse_inputs(
    ...     [2, -100], np.zeros((2, 3), "float16"), ignore_class=-100)
    >>> keras.ops.convert_to_numpy(targets).tolist(), in_range is None
    ([2, 0], True)
    >>> keras.ops.convert_to_numpy(valid).tolist()
    [True, False]
    """
    y_pred = ops.convert_to_tensor(y_pred)
    scores = float_predictions(y_pred, axis, requirement)
    targets = sparse_targets(y_true, y_pred, axis, hint)
    num_classes = scores.shape[-1]
    if num_classes is None:
        num_classes = ops.shape(scores)[-1]
    targets, valid, in_range = class_id_flags(targets, num_classes, ignore_class)
    if valid is not None:
        scores = ops.where(ops.expand_dims(valid, -1), scores, filler)
    return targets, scores, valid, in_range


def class_id_flags(targets, num_classes, ignore_class=None, predictions="`y_pred`"):
    """Checks class ids where their values are known; returns them ready to
    gather, with where they are valid and, if unchecked, in range.

    Args:
        targets: Class ids, a tensor.
        num_classes: The number of classes: an int, or a scalar tensor
            when it is not known before run time (the ids go unchecked).
        ignore_class: Optional class id (e.g. padding) left out.
        predictions: What the error for an id out of range names as having
            `num_classes` classes.

    Returns:
        A tuple `(targets, valid, in_range)` as `sparse_inputs` returns them.

    Example:

    >>> targets, valid, in_range = class_id_flags(
    ...     keras.ops.convert_to_tensor([2, -100]), 3, ignore_class=-100)
    >>> keras.ops.convert_to_numpy(targets).tolist(), in_range is None
    ([2, 0], True)
    """
    checked = isinstance(num_classes, int) and check_class_ids(
        targets, num_classes, ignore_class, predictions
    )
    valid = None
    if ignore_class is not None:
        valid = ops.not_equal(targets, ignore_class)
        targets = ops.where(valid, targets, 0)
    in_range = None
    if not checked:
        # Compared before any cast, so float ids are never rounded or wrapped.
        in_range = ops.logical_and(
            ops.greater_equal(targets, 0), ops.less(targets, num_classes)
        )
        if "float" in keras.backend.standardize_dtype(targets.dtype):
            in_range = ops.logical_and(
                in_range, ops.equal(targets, ops.floor(targets))
            )
        targets = ops.where(in_range, targets, 0)
    return ops.cast(targets, "int32"), valid, in_range


def check_class_ids(targets, num_classes, ignore_class=None, predictions="`y_pred`"):
    """Raises for class ids that are out of range or not whole numbers.

    Args:
        targets: Class ids, a tensor.
        num_classes: The number of classes, or None if unknown.
        ignore_class: Optional id that is not checked.
        predictions: What the error names as having `num_classes` classes.

    Returns:
        Whether the ids were checked: their values and `num_classes` are
        known now. Where they were, every id but `ignore_class` is a whole
        number in `[0, num_classes)`.

    Example:

    >>> ids = keras.ops.convert_to_tensor([0, 3, -100])
    >>> check_class_ids(ids, 4, ignore_class=-100)
    True
    >>> check_class_ids(ids, 3, ignore_class=-100)
    Traceback (most recent call last):
    ...
    ValueError: `y_true` holds class id 3, outside [0, 3) ...
    """
    class_ids = values_if_known(targets)
    if num_classes is None or class_ids is None:
        return False
    if ignore_class is not None:
        class_ids = class_ids[class_ids != ignore_class]
    if not class_ids.size:
        return True
    if class_ids.dtype.kind == "f":
        whole = np.isfinite(class_ids) & (np.floor(class_ids) == class_ids)
        if not whole.all():
            raise ValueError(
                f"`y_true` holds {class_ids[~whole].flat[0]}, which is not a "
                "class id: float class ids must be whole numbers (Keras's own "
                "losses would silently truncate it)."
            )
    if class_ids.min() < 0 or class_ids.max() >= num_classes:
        bad_id = class_ids[(class_ids < 0) | (class_ids >= num_classes)].flat[0]
        bad_id = _as_python_number(bad_id)
        raise ValueError(
            f"`y_true` holds class id {bad_id}, outside [0, {num_classes}) "
            f"for {predictions} with {num_classes} classes. If it marks padding "
            "(as -100 does in Hugging Face datasets), pass "
            f"`ignore_class={bad_id}` to the loss."
        )
    return True


def check_one_hot(y_true, y_pred, axis=-1):
    """Raises unless `y_true` is one-hot with the shape of `y_pred`.

    The values are checked when they are known.

    Args:
        y_true: The targets, a tensor.
        y_pred: The predictions, a tensor.
        axis: The class axis.

    Example:

    >>> check_one_hot(keras.ops.convert_to_tensor([[0.0, 0.9, 0.1]]),
    ...               keras.ops.zeros((1, 3)))
    Traceback (most recent call last):
    ...
    ValueError: `y_true` must be one-hot: a single 1 per position, ...
    """
    if not shapes_match(y_true.shape, y_pred.shape):
        raise ValueError(
            "`y_true` must be one-hot and must have the same shape as "
            f"`y_pred`; received y_true.shape={tuple(y_true.shape)} and "
            f"y_pred.shape={tuple(y_pred.shape)}. For integer class ids use "
            "`sparse_as_softmax_crossentropy`."
        )
    values = values_if_known(y_true)
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


def check_multi_hot(y_true, y_pred):
    """Raises unless `y_true` is 0/1 with the shape of `y_pred`.

    The values are checked when they are known.

    Args:
        y_true: The targets, a tensor.
        y_pred: The predictions, a tensor.

    Example:

    >>> check_multi_hot(keras.ops.convert_to_tensor([[0, 2, 1]]),
    ...                 keras.ops.zeros((1, 3)))
    Traceback (most recent call last):
    ...
    ValueError: `y_true` must be multi-hot: 1 for each positive label, ...
    """
    if not shapes_match(y_true.shape, y_pred.shape):
        raise ValueError(
            "`y_true` must be multi-hot with the shape of `y_pred`; received "
            f"y_true.shape={tuple(y_true.shape)} and "
            f"y_pred.shape={tuple(y_pred.shape)}."
        )
    labels = values_if_known(y_true)
    if labels is not None and not np.isin(labels, (0, 1)).all():
        raise ValueError(
            "`y_true` must be multi-hot: 1 for each positive label, 0 "
            "elsewhere. Soft or smoothed labels are not supported: AS-Softmax "
            "needs to know which labels are positive."
        )


def align_weights(sample_weight, values):
    """Gives `sample_weight` the rank of `values` (trailing axes of size 1).

    Raises unless the weights' shape is a prefix of the values' shape, up to
    axes of size 1: anything else would broadcast silently.

    Args:
        sample_weight: The weights.
        values: The per-position values they weigh, a tensor.

    Returns:
        `sample_weight` as a tensor of the rank of `values`.

    Example:

    >>> weights = align_weights([1.0, 2.0], keras.ops.zeros((2, 3)))
    >>> tuple(weights.shape)
    (2, 1)
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
    for _ in range(rank - len(weight_shape)):
        sample_weight = ops.expand_dims(sample_weight, -1)
    return sample_weight


def shapes_match(shape, other):
    """Whether two static shapes agree (unknown dimensions match anything).

    Example:

    >>> shapes_match((None, 3), (8, 3)), shapes_match((8,), (8, 3))
    (True, False)
    """
    return len(shape) == len(other) and all(
        a is None or b is None or a == b for a, b in zip(shape, other)
    )


def is_placeholder(x):
    """Whether `x` only stands for a shape: a `KerasTensor`, or any tensor
    inside Keras's symbolic build (e.g. the first `fit` on torch).

    Example:

    >>> is_placeholder(keras.Input((3,))), is_placeholder(keras.ops.zeros(3))
    (True, False)
    """
    return isinstance(x, keras.KerasTensor) or in_symbolic_scope()


def values_if_known(x):
    """`x` as a NumPy array if its values are known now, else None.

    Example:

    >>> values_if_known(keras.ops.convert_to_tensor([1, 2])).tolist()
    [1, 2]
    >>> values_if_known(keras.Input((3,))) is None
    True
    """
    if is_placeholder(x):
        return None
    return known_values(x)


def _as_python_number(value):
    """`value` as a Python int when it is a whole number, else a float."""
    value = value.item()
    return int(value) if float(value).is_integer() else value
