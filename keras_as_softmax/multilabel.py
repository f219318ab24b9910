"""Multi-label AS-Softmax cross-entropy.

The base loss is the multi-label categorical cross-entropy with decision
threshold 0 on the logits `s`, for positive labels `P` and negatives `N`:

    loss = log(1 + sum_{i in N} exp(s_i)) + log(1 + sum_{j in P} exp(-s_j))

AS-Softmax drops the terms the model already separates. With one softmax
`p = softmax(s)` across the labels (float32, no gradient), a negative `i` is
kept iff `min_{j in P} p_j - p_i <= delta` and a positive `j` is kept iff
`p_j - max_{i in N} p_i <= delta`. A sample with no positive keeps all its
negatives and one with no negative keeps all its positives, so `delta = 1`
is exactly the plain loss. A sample whose every term is dropped is *masked*.
Predict a label where its logit is above 0.
"""

import keras
import numpy as np
from keras import ops

from keras_as_softmax.as_softmax import ASLoss
from keras_as_softmax.as_softmax import count_masked
from keras_as_softmax.as_softmax import counted_positions
from keras_as_softmax.input_checks import check_multi_hot
from keras_as_softmax.input_checks import float_predictions
from keras_as_softmax.input_checks import validate_delta


def multilabel_as_softmax_crossentropy(y_true, y_pred, delta=0.1, from_logits=True):
    """Multi-label AS-Softmax cross-entropy.

    Args:
        y_true: Multi-hot targets (1 for a positive label), shape of `y_pred`.
        y_pred: Logits (or sigmoid probabilities if `from_logits=False`),
            labels last: `(B, C)` or per token `(B, T, C)`.
        delta: Drop margin in `[0, 1]`; `1.0` is the plain multi-label loss.
        from_logits: Whether `y_pred` holds logits rather than probabilities.

    Returns:
        The per-sample loss, shape of `y_pred` without the label axis;
        float32 for float16 or bfloat16 inputs, else the dtype of `y_pred`.

    Example:

    >>> loss = multilabel_as_softmax_crossentropy(
    ...     [[1, 1, 0, 0], [0, 1, 1, 0]],
    ...     [[1.2, 1.5, 1.0, -0.35], [2.5, 3.5, 0.4, 0.3]], delta=0.1)
    >>> np.round(keras.ops.convert_to_numpy(loss), 4)
    array([1.5765, 3.1894], dtype=float32)
    """
    return _multilabel_losses_and_masked(y_true, y_pred, delta, from_logits)[0]


def multilabel_as_softmax_mask(
    y_true, y_pred, delta=0.1, from_logits=True, sample_weight=None, mask=None
):
    """Which label terms multi-label AS-Softmax keeps, and how many samples it masks.

    A sample *counts* unless `mask` is False there or its `sample_weight`
    is 0; a counted sample is *masked* when every one of its terms is
    dropped (its loss and gradient are 0).

    Args:
        y_true, y_pred, delta, from_logits: As for
            `multilabel_as_softmax_crossentropy`.
        sample_weight: Optional weights, shape of `y_pred` without the label
            axis, or a prefix of it.
        mask: Optional boolean Keras mask, shape of `y_pred` without the
            label axis.

    Returns:
        A tuple `(keep, num_masked, num_counted)`: the boolean mask of kept
        terms with the shape of `y_pred`, and two int32 scalars.

    Example:

    >>> keep, num_masked, num_counted = multilabel_as_softmax_mask(
    ...     [[0, 1, 0], [1, 0, 0]], [[-2.0, 6.0, -2.0], [1.0, 1.2, 0.0]],
    ...     delta=0.1)
    >>> keras.ops.convert_to_numpy(keep).astype(int).tolist()
    [[0, 0, 0], [1, 1, 0]]
    >>> int(num_masked), int(num_counted)
    (1, 2)
    """
    delta = validate_delta(delta)
    positive, logits = _prepare(y_true, y_pred, from_logits)
    (keep, _, _), masked = _multilabel_core(positive, logits, delta)
    counted = counted_positions(masked, mask, sample_weight)
    return (keep, *count_masked(masked, counted))


@keras.saving.register_keras_serializable(package="keras_as_softmax")
class MultiLabelASSoftmaxCrossentropy(ASLoss):
    """Multi-label AS-Softmax cross-entropy.

    Args:
        delta: Drop margin in `[0, 1]`; `1.0` is the plain multi-label loss.
        from_logits: Whether `y_pred` holds logits rather than sigmoid
            probabilities.
        reduction: As in `keras.losses.Loss`.
        name: Name of the loss instance.
        dtype: Dtype of the loss's computations, as in `keras.losses.Loss`.

    Example:

    >>> loss_fn = MultiLabelASSoftmaxCrossentropy(delta=0.1)
    >>> loss = loss_fn([[1, 1, 0, 0], [0, 1, 1, 0]],
    ...                [[1.2, 1.5, 1.0, -0.35], [2.5, 3.5, 0.4, 0.3]])
    >>> round(float(loss), 4)
    2.383
    """

    def __init__(
        self,
        delta=0.1,
        from_logits=True,
        reduction="sum_over_batch_size",
        name="multilabel_as_softmax_crossentropy",
        dtype=None,
    ):
        super().__init__(
            _multilabel_losses_and_masked,
            delta,
            reduction=reduction,
            name=name,
            dtype=dtype,
            from_logits=from_logits,
        )


def _multilabel_losses_and_masked(y_true, y_pred, delta, from_logits=True):
    """`(losses, masked)` of `multilabel_as_softmax_crossentropy`: the
    per-sample loss, and where every term is dropped (loss and gradient
    exactly 0)."""
    delta = validate_delta(delta)
    positive, logits = _prepare(y_true, y_pred, from_logits)
    keep_masks, masked = _multilabel_core(positive, logits, delta)
    if isinstance(logits, keras.KerasTensor):
        return _losses_and_terms(positive, logits, keep_masks)[0], masked

    @ops.custom_gradient
    def loss_and_gradient(logits):
        losses, terms = _losses_and_terms(positive, logits, keep_masks)

        def gradient(*args, upstream=None):
            if upstream is None:
                (upstream,) = args
            return ops.expand_dims(upstream, -1) * terms()

        return losses, gradient

    return loss_and_gradient(logits), masked


def _prepare(y_true, y_pred, from_logits):
    """Checks inputs; returns `(positive, logits)`, labels last."""
    y_true = ops.convert_to_tensor(y_true)
    logits = float_predictions(y_pred)
    check_multi_hot(y_true, logits)
    if not from_logits:
        epsilon = keras.backend.epsilon()
        probs = ops.clip(logits, epsilon, 1.0 - epsilon)
        logits = ops.log(probs) - ops.log1p(-probs)
    return ops.greater(y_true, 0.5), logits


def _multilabel_core(positive, logits, delta):
    """The multi-label AS-Softmax masks: `((keep, negative_shift,
    positive_shift), masked)`, the kept terms labels last, and where a
    sample keeps no term.

    The probability tests become thresholds on the logits: with the row's
    maximum `m` and `S = sum(exp(s - m))`, a negative is kept iff
    `s_i >= log(exp(min_P s) - delta * S * exp(m))` and a positive iff
    `s_j <= log(exp(max_N s) + delta * S * exp(m))`. Both are monotone in the
    logit, so some negative is kept iff the largest negative is, and some
    positive iff the smallest positive is: the shifts that keep the two
    log-sum-exps stable, `max(0, max_N s)` and `max(0, -min_P s)` (0 where
    nothing is kept), are row statistics too. No gradient flows through them.
    """
    logits = ops.stop_gradient(logits)
    negative = ops.logical_not(positive)
    row_max = ops.amax(logits, axis=-1, keepdims=True)
    log_margin = ops.log(
        delta * ops.sum(ops.exp(logits - row_max), axis=-1, keepdims=True)
    )
    if not isinstance(delta, float):
        log_margin = ops.cast(log_margin, logits.dtype)
    max_negative = ops.amax(
        ops.where(negative, logits, -np.inf), axis=-1, keepdims=True
    )
    min_positive = ops.amin(
        ops.where(positive, logits, np.inf), axis=-1, keepdims=True
    )
    has_positive = ops.any(positive, axis=-1, keepdims=True)
    has_negative = ops.any(negative, axis=-1, keepdims=True)
    # In log space, so that nothing underflows: exactly `min_P s` and
    # `max_N s` at delta 0, and never on the wrong side of them.
    ratio = row_max + log_margin - min_positive
    negative_floor = ops.where(
        ops.logical_and(has_positive, ratio < 0),
        min_positive + ops.log1p(-ops.exp(ops.minimum(ratio, 0.0))),
        -np.inf,
    )
    positive_ceiling = ops.where(
        has_negative,
        ops.logaddexp(max_negative, row_max + log_margin),
        np.inf,
    )
    keep = ops.where(
        positive, logits <= positive_ceiling, logits >= negative_floor
    )
    negative_shift = ops.where(
        ops.logical_and(has_negative, max_negative >= negative_floor),
        ops.maximum(max_negative, 0.0),
        0.0,
    )
    positive_shift = ops.where(
        ops.logical_and(has_positive, min_positive <= positive_ceiling),
        ops.maximum(-min_positive, 0.0),
        0.0,
    )
    masked = ops.logical_not(ops.any(keep, axis=-1))
    return (keep, negative_shift, positive_shift), masked


def _losses_and_terms(positive, logits, keep_masks):
    """Returns `(losses, terms)`; `terms()` gives the loss's derivatives by
    the logits, shape of `logits`.

    `log(1 + sum_kept exp(x)) = shift + log(exp(-shift) + sum_kept
    exp(x - shift))`, which is exactly 0 where nothing is kept. A label is a
    term of one of the two sums (`x = s` for a negative, `-s` for a
    positive), so one exponential per label serves both.
    """
    keep, negative_shift, positive_shift = keep_masks

    def exps():
        shifted = ops.where(
            positive, -logits - positive_shift, logits - negative_shift
        )
        return ops.where(keep, ops.exp(shifted), 0.0)

    kept_exps = exps()
    negative_total = ops.exp(-negative_shift) + ops.sum(
        ops.where(positive, 0.0, kept_exps), axis=-1, keepdims=True
    )
    positive_total = ops.exp(-positive_shift) + ops.sum(
        ops.where(positive, kept_exps, 0.0), axis=-1, keepdims=True
    )
    losses = (
        negative_shift
        + ops.log(negative_total)
        + positive_shift
        + ops.log(positive_total)
    )

    def terms():
        # Recomputed rather than kept: no buffer of the logits' size
        # between the forward pass and the gradient, but the mask.
        return exps() / ops.where(positive, -positive_total, negative_total)

    return ops.squeeze(losses, axis=-1), terms
