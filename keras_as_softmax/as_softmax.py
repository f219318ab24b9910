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

from keras_as_softmax._keras_private import set_keras_mask
from keras_as_softmax.backend import fused_sparse_as_softmax_loss
from keras_as_softmax.input_checks import align_weights
from keras_as_softmax.input_checks import check_one_hot
from keras_as_softmax.input_checks import float_predictions
from keras_as_softmax.input_checks import sparse_inputs
from keras_as_softmax.input_checks import validate_delta
from keras_as_softmax.loss_wrapper import FunctionLoss
from keras_as_softmax.loss_wrapper import and_masks
from keras_as_softmax.skipping import needs_backward


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
    >>> np.round(keras.ops.convert_to_numpy(loss), 4)  # The first is masked.
    array([0.    , 3.4741], dtype=float32)
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
    >>> np.round(keras.ops.convert_to_numpy(loss), 4)
    array([0.    , 3.4741], dtype=float32)
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
    >>> keras.ops.convert_to_numpy(keep).astype(int).tolist()
    [[0, 1, 0, 0], [1, 1, 1, 1]]
    >>> int(num_masked), int(num_counted)
    (1, 2)
    """
    target_index, scores, delta, valid, in_range = _prepare_sparse(
        y_true, y_pred, delta, from_logits, ignore_class, axis
    )
    _, masked, keep = _single_label_core(target_index, scores, delta, from_logits)[:3]
    if in_range is not None:
        masked = ops.logical_and(masked, in_range)
    counted = counted_positions(masked, and_masks(valid, mask), sample_weight)
    return (keep, *count_masked(masked, counted))


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

    Args:
        y_true, y_pred, delta, from_logits, axis: As for
            `as_softmax_crossentropy`.
        sample_weight, mask: As for `sparse_as_softmax_mask`.

    Returns:
        A tuple `(keep, num_masked, num_counted)`.

    Example:

    >>> _, num_masked, num_counted = as_softmax_mask(
    ...     [[0, 1, 0, 0], [0, 0, 1, 0]],
    ...     [[1.2, 1.5, 1.0, -0.35], [2.5, 3.5, 0.4, 0.3]], delta=0.1)
    >>> int(num_masked), int(num_counted)
    (1, 2)
    """
    target_index, scores, delta = _prepare_one_hot(y_true, y_pred, delta, axis)
    _, masked, keep = _single_label_core(target_index, scores, delta, from_logits)[:3]
    counted = counted_positions(masked, mask, sample_weight)
    return (keep, *count_masked(masked, counted))


class ASLoss(FunctionLoss):
    """Wraps an AS-Softmax loss function into a `Loss`.

    A `FunctionLoss` (see `keras_as_softmax.loss_wrapper`): the loss is `fn`
    with the keyword arguments given here, which are also its config (with
    `delta`); each is an attribute of the loss. `fn(y_true, y_pred, delta,
    **kwargs)` returns `(losses, masked)`: the per-position losses (with a
    Keras mask where positions are ignored) and, from the same computation,
    where the loss masks a position (its loss and gradient are exactly 0).

    As for every `FunctionLoss`, `y_true` is never cast to the loss dtype (so
    class ids stay exact under float16/bfloat16), and per-sample weights
    `(B,)` broadcast over per-token losses `(B, T)` even with a Keras mask.

    `delta` is a Python number, saved with the config. While a
    `DeltaWarmup` callback trains the model it points the loss at a variable
    that the model carries (`delta_variable`), so that a changing delta
    reaches compiled training steps; `current_delta` is whichever is in use.

    Args:
        fn: The loss function.
        delta: Drop margin in `[0, 1]`.
        reduction, name, dtype: As in `keras.losses.Loss`.
        **kwargs: The keyword arguments of `fn`.

    Example:

    >>> loss_fn = SparseASSoftmaxCrossentropy(delta=0.1)
    >>> isinstance(loss_fn, ASLoss), loss_fn.from_logits
    (True, True)
    >>> with loss_fn.recording() as records:
    ...     loss = loss_fn([1, 2], [[1.2, 1.5, 1.0, -0.35], [2.5, 3.5, 0.4, 0.3]])
    >>> round(float(loss), 4)
    1.7371
    >>> masked, counted, divisor_shares = records[0]
    >>> keras.ops.convert_to_numpy(masked).tolist()
    [True, False]
    """

    # `mean_with_sample_weight` is the weighted mean over positions.
    weights_fill_losses = True

    def __init__(
        self,
        fn,
        delta=0.1,
        reduction="sum_over_batch_size",
        name=None,
        dtype=None,
        **kwargs,
    ):
        super().__init__(fn, reduction=reduction, name=name, dtype=dtype, **kwargs)
        self.delta = validate_delta(delta, allow_tensor=False)
        self.delta_variable = None
        # While `PruneMasked` trains the model: its `SamplePruning`.
        self.sample_pruning = None
        self._records = None

    @property
    def current_delta(self):
        """The delta in use: `delta_variable` when set, else `delta`."""
        if self.delta_variable is None:
            return self.delta
        return self.delta_variable

    def get_config(self):
        return {**super().get_config(), "delta": self.delta}

    def losses_and_masked(self, y_true, y_pred):
        """Per-position losses and where they are masked: `fn`'s outputs.

        Returns:
            A tuple `(losses, masked)`: `losses` as `call` returns them (with
            a Keras mask where positions are ignored), and a boolean tensor
            of their shape.
        """
        return self.fn(y_true, y_pred, self.current_delta, **self._fn_arguments())

    def call(self, y_true, y_pred):
        return self.losses_and_masked(y_true, y_pred)[0]

    def _losses_and_flags(self, y_true, y_pred):
        return self.losses_and_masked(y_true, y_pred)

    def _seen(self, masked, losses, mask, sample_weight):
        pruning = self.sample_pruning
        pruning_records = pruning is not None and pruning.recording
        if self._records is None and not pruning_records:
            return
        counted = counted_positions(losses, mask, sample_weight)
        if self._records is not None:
            self._records.append(
                (masked, counted, self._divisor_shares(losses, mask, sample_weight))
            )
        if pruning_records:  # `PruneMasked`: the loss records the flags.
            pruning.record(ops.logical_not(needs_backward(masked, counted)))

    @contextlib.contextmanager
    def recording(self):
        """Records the per-position flags of each call made within it.

        Yields a list; each `__call__` inside appends `(masked, counted,
        divisor_shares)`: two boolean tensors with the shape of its
        per-position losses, `counted` False where a position is ignored
        (`ignore_class`, a Keras mask) or has weight 0 and `masked` True where
        the loss masks a position, and each sample's part of the reduction's
        divisor (`FunctionLoss._divisor_shares`). This is how `AdaptiveModel` learns, from the
        loss's own computation, which samples carry no gradient.
        """
        self._records = []
        try:
            yield self._records
        finally:
            self._records = None  # Tensors of a traced step must not outlive it.

    @contextlib.contextmanager
    def summed(self):
        """Within it, calls reduce with `sum` (and record nothing): for a
        pass whose weights already hold the divisor of the batch it stands
        for (`keras_as_softmax.sample_buffer`)."""
        reduction, records = self.reduction, self._records
        self.reduction, self._records = "sum", None
        try:
            yield
        finally:
            self.reduction, self._records = reduction, records

    def masked_counts(self, y_true, y_pred, sample_weight=None):
        """How many positions of a batch this loss masks.

        Args:
            y_true, y_pred: A batch as this loss is called with; a Keras mask
                on `y_pred` leaves positions out.
            sample_weight: Optional weights; weight-0 positions do not count.

        Returns:
            A tuple of int32 scalars `(num_masked, num_counted)`.

        Example:

        >>> loss_fn = SparseASSoftmaxCrossentropy(delta=0.1, ignore_class=0)
        >>> counts = loss_fn.masked_counts(
        ...     [1, 2, 0], [[1.2, 1.5, 1.0], [2.5, 3.5, 0.4], [0.0, 0.0, 0.0]])
        >>> [int(count) for count in counts]
        [1, 2]
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
        return records[0][:2]


def count_masked(masked, counted):
    """`(num_masked, num_counted)`, int32 scalars, from per-position flags.

    Args:
        masked: Boolean tensor, where the loss masks a position.
        counted: Boolean tensor of the same shape, where a position counts.

    Returns:
        A tuple of int32 scalars: the counted positions that are masked, and
        all counted positions.

    Example:

    >>> counts = count_masked(keras.ops.convert_to_tensor([True, True, False]),
    ...                       keras.ops.convert_to_tensor([True, False, True]))
    >>> [int(count) for count in counts]
    [1, 2]
    """
    return (
        ops.sum(ops.cast(ops.logical_and(masked, counted), "int32")),
        ops.sum(ops.cast(counted, "int32")),
    )


def counted_positions(positions, mask=None, sample_weight=None):
    """Where positions count: `mask` is not False and the weight is not 0.

    Args:
        positions: A tensor with one value per position (e.g. the losses).
        mask: Optional boolean mask, shape of `positions`.
        sample_weight: Optional weights, shape of `positions` or a prefix of
            it.

    Returns:
        A boolean tensor, shape of `positions`.

    Example:

    >>> counted = counted_positions(keras.ops.zeros((2, 2)),
    ...                             sample_weight=[1.0, 0.0])
    >>> keras.ops.convert_to_numpy(counted).tolist()
    [[True, True], [False, False]]
    """
    counted = ops.ones(ops.shape(positions), dtype="bool")
    if mask is not None:
        counted = ops.logical_and(counted, ops.cast(mask, "bool"))
    if sample_weight is not None:
        sample_weight = align_weights(sample_weight, positions)
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

    >>> loss_fn = SparseASSoftmaxCrossentropy(delta=0.1, ignore_class=-1)
    >>> loss = loss_fn([1, 2, -1], [[1.2, 1.5, 1.0, -0.35],
    ...                             [2.5, 3.5, 0.4, 0.3],
    ...                             [0.0, 0.0, 0.0, 0.0]])
    >>> round(float(loss), 4)  # The mean over the two counted positions.
    1.7371
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
        super().__init__(
            _sparse_losses_and_masked,
            delta,
            reduction=reduction,
            name=name,
            dtype=dtype,
            from_logits=from_logits,
            ignore_class=ignore_class,
            axis=axis,
        )


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

    >>> loss_fn = ASSoftmaxCrossentropy(delta=0.1, reduction=None)
    >>> loss = loss_fn([[0, 1, 0, 0], [0, 0, 1, 0]],
    ...                [[1.2, 1.5, 1.0, -0.35], [2.5, 3.5, 0.4, 0.3]])
    >>> np.round(keras.ops.convert_to_numpy(loss), 4)
    array([0.    , 3.4741], dtype=float32)
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
        super().__init__(
            _one_hot_losses_and_masked,
            delta,
            reduction=reduction,
            name=name,
            dtype=dtype,
            from_logits=from_logits,
            axis=axis,
        )


def _sparse_losses_and_masked(
    y_true, y_pred, delta, from_logits=True, ignore_class=None, axis=-1
):
    """`(losses, masked)` of `sparse_as_softmax_crossentropy`."""
    target_index, scores, delta, valid, in_range = _prepare_sparse(
        y_true, y_pred, delta, from_logits, ignore_class, axis
    )
    losses, masked = _single_label_losses(target_index, scores, delta, from_logits)
    return flag_class_ids(losses, masked, valid, in_range)


def flag_class_ids(losses, masked, valid, in_range):
    """`(losses, masked)` with the positions of `class_id_flags`'s flags
    marked: ignored ones (`valid` False) get loss 0 and a Keras mask; an id
    outside `[0, C)` (or not a whole number) that no check could see, in a
    compiled step, gets a NaN loss, the same on every backend, and no
    gradient: the logged loss shows it without a host sync, and the weights
    stay as they were."""
    if in_range is not None:
        losses = ops.where(in_range, losses, np.nan)
        masked = ops.logical_and(masked, in_range)
    if valid is not None:
        losses = ops.where(valid, losses, 0.0)
        set_keras_mask(losses, valid)
    return losses, masked


def _one_hot_losses_and_masked(y_true, y_pred, delta, from_logits=True, axis=-1):
    """`(losses, masked)` of `as_softmax_crossentropy`."""
    target_index, scores, delta = _prepare_one_hot(y_true, y_pred, delta, axis)
    return _single_label_losses(target_index, scores, delta, from_logits)


def _prepare_sparse(y_true, y_pred, delta, from_logits, ignore_class, axis):
    """Checks sparse inputs; returns `(target_index, scores, delta, valid,
    in_range)`.

    `target_index` holds int32 class ids with a last axis of size 1, 0 where
    ignored or out of range, so that gathers stay in bounds; `scores` are
    `y_pred` (logits or probabilities) with classes last, float32 or wider;
    `delta` is a float or a tensor of their dtype. `valid` is None without
    `ignore_class`, else where the targets are not `ignore_class`.
    `in_range` is None where the ids were checked (their values are known),
    else where the (not ignored) ids are whole numbers in `[0, C)`.
    """
    delta = validate_delta(delta)
    targets, scores, valid, in_range = sparse_inputs(
        y_true, y_pred, ignore_class, axis, filler=0.0 if from_logits else 1.0
    )
    target_index = ops.expand_dims(targets, -1)
    return target_index, scores, _cast_delta(delta, scores), valid, in_range


def _prepare_one_hot(y_true, y_pred, delta, axis):
    """Checks one-hot inputs; returns `(target_index, scores, delta)` as
    `_prepare_sparse`."""
    delta = validate_delta(delta)
    y_pred = ops.convert_to_tensor(y_pred)
    scores = float_predictions(y_pred, axis)
    y_true = ops.convert_to_tensor(y_true)
    check_one_hot(y_true, y_pred, axis)
    target_index = ops.expand_dims(
        ops.cast(ops.argmax(y_true, axis=axis), "int32"), -1
    )
    return target_index, scores, _cast_delta(delta, scores)


def _cast_delta(delta, scores):
    """A tensor `delta` in the dtype of `scores`; a float stays as it is."""
    return delta if isinstance(delta, float) else ops.cast(delta, scores.dtype)


def _single_label_core(target_index, scores, delta, from_logits):
    """The AS-Softmax computation for one target class per position.

    Class `i` is kept iff `p_i >= p_t - delta` (or, from logits, `z_i >=
    z_t`), on `p = softmax(z)` or the probabilities divided by their sum:
    the target is always kept. A position is masked where its kept
    probabilities sum to exactly `p_t`: only the target is kept (or what
    else is kept rounds away), and its loss and gradient are 0. Its loss is
    `log(sum of kept p) - log(p_t)`, with `p_t` clipped to `[epsilon, 1 -
    epsilon]` for probabilities as Keras clips it, so that at `delta = 1` it
    is Keras's cross-entropy. The mask is a comparison: no gradient flows
    through it. From logits the probabilities are never divided out: the
    logits are compared with the cutoff `logit_statistics` gives (see
    `kept_exps`).

    Args:
        target_index: int32 class ids, the positions' shape plus an axis of
            size 1.
        scores: Logits, or probabilities if not `from_logits`; classes last.
        delta: A float, or a scalar tensor of the dtype of `scores`.
        from_logits: Whether `scores` are logits.

    Returns:
        A tuple `(losses, masked, keep, kept, kept_sum, statistics)`: the
        losses and the masked flags per position; the boolean keep mask and
        the kept probabilities times a factor per position (0 where
        dropped), shape of `scores`; their sum per position, with a last
        axis of size 1 (the gradient of the loss with respect to the logits
        is `kept / kept_sum - onehot(t)`); from logits, the statistics of
        `logit_statistics` (else None).
    """
    statistics = None
    if from_logits:
        exps, statistics = logit_statistics(target_index, scores, delta)
        keep, kept = kept_exps(scores, exps, statistics)
        target_exp = ops.take_along_axis(exps, target_index, axis=-1)
        # `log(p_t)` up to the factor's log: exact where `p_t` underflows.
        target_log_prob = statistics[1] - statistics[0]
    else:
        probs = scores / ops.sum(scores, axis=-1, keepdims=True)
        target_exp = ops.take_along_axis(probs, target_index, axis=-1)
        epsilon = keras.backend.epsilon()
        target_log_prob = ops.log(ops.clip(target_exp, epsilon, 1.0 - epsilon))
        keep = ops.greater_equal(probs, target_exp - delta)
        kept = ops.where(keep, probs, 0.0)
    kept_sum = ops.sum(kept, axis=-1, keepdims=True)
    masked = ops.equal(kept_sum, target_exp)
    losses = ops.where(masked, 0.0, ops.log(kept_sum) - target_log_prob)
    return (
        ops.squeeze(losses, axis=-1),
        ops.squeeze(masked, axis=-1),
        keep,
        kept,
        kept_sum,
        statistics,
    )


def logit_statistics(target_index, logits, delta):
    """What AS-Softmax keeps of each position's logits, in three numbers.

    Args:
        target_index: int32 class ids, the positions' shape plus an axis of
            size 1.
        logits: The logits, classes last.
        delta: A float, or a scalar tensor of the dtype of `logits`.

    Returns:
        A tuple `(exps, statistics)`: `exp(logits - max)`, and per position
        `(max, target logit, cutoff)`, each with a last axis of size 1.
        Class `i` is kept iff `z_i >= cutoff`: `p_i >= p_t - delta` on the
        logits' scale, `z_i >= max + log(exp(z_t - max) - delta *
        sum(exps))` (every class where that log's argument is not
        positive), or `z_i >= z_t`, so that a class whose logit is at least
        the target's is kept whatever `exp`'s rounding. `kept_exps`
        applies them to the logits again.
    """
    row_max = ops.max(logits, axis=-1, keepdims=True)
    exps = ops.exp(logits - row_max)
    threshold = ops.take_along_axis(exps, target_index, axis=-1) - delta * ops.sum(
        exps, axis=-1, keepdims=True
    )
    target_logit = ops.take_along_axis(logits, target_index, axis=-1)
    return exps, (row_max, target_logit, keep_cutoff(row_max, target_logit, threshold))


def keep_cutoff(log_scale, target_logit, threshold):
    """The cutoff of `logit_statistics`: the smallest logit kept.

    Args:
        log_scale: Per position, the log of the scale of `threshold`.
        target_logit: Per position, the target's logit.
        threshold: Per position, `p_t - delta` in units of `exp(z -
            log_scale)` (`log_scale` the log-sum-exp: probabilities).

    Returns:
        `min(z_t, log_scale + log(threshold))`, `-inf` where `threshold` is
        not positive (every class kept).

    Example:

    >>> cutoff = keep_cutoff(np.float32([0.0, 0.0]), np.float32([2.0, -1.0]),
    ...                      np.float32([0.5, 0.5]))
    >>> [round(float(c), 4) for c in keras.ops.convert_to_numpy(cutoff)]
    [-0.6931, -1.0]
    """
    positive = threshold > 0
    log_threshold = ops.log(ops.where(positive, threshold, 1.0))
    cutoff = ops.where(positive, ops.add(log_scale, log_threshold), -np.inf)
    return ops.minimum(cutoff, target_logit)


def kept_exps(logits, exps, statistics):
    """`(keep, kept)`: the classes AS-Softmax keeps, `exps` there and 0
    elsewhere, from `logit_statistics`' outputs. One comparison of the
    logits, so that (under XLA) no buffer of their size is kept beside the
    exps and the kept exps."""
    keep = ops.greater_equal(logits, statistics[2])
    return keep, ops.where(keep, exps, 0.0)


def _single_label_losses(target_index, scores, delta, from_logits):
    """Per-position `(losses, masked)` of `_single_label_core`.

    From logits the gradient is written out, `g * (kept p / sum of kept p -
    onehot(t))`, so that autodiff keeps no buffer of the logits' size beyond
    the kept probabilities; on PyTorch a kernel of its own computes both.
    """
    if not from_logits or isinstance(scores, keras.KerasTensor):
        return _single_label_core(target_index, scores, delta, from_logits)[:2]
    if fused_sparse_as_softmax_loss is not None:
        return fused_sparse_as_softmax_loss(target_index, scores, delta)
    return _logit_losses(target_index, scores, delta)


def _logit_losses(target_index, logits, delta):
    """`_single_label_losses` from logits in `keras.ops`, on every backend."""
    # No gradient flows through the statistics: the gradient is written out.
    losses, masked, _, kept, kept_sum, _ = _single_label_core(
        target_index, ops.stop_gradient(logits), delta, from_logits=True
    )

    @ops.custom_gradient
    def with_gradient(logits):
        def gradient(*args, upstream=None):
            if upstream is None:
                (upstream,) = args
            upstream = ops.expand_dims(ops.where(masked, 0.0, upstream), -1)
            grad = kept * (upstream / kept_sum)
            classes = ops.arange(ops.shape(logits)[-1], dtype="int32")
            return ops.where(
                ops.equal(classes, target_index), grad - upstream, grad
            )

        return losses, gradient

    return with_gradient(logits), masked
