"""The sparse baselines of the AS-Softmax paper, as Keras losses.

Lv et al. compare AS-Softmax with softmax and three sparse variants:

- Sparsemax (Martins & Astudillo, ICML 2016, arXiv 1602.02068): `p` is the
  Euclidean projection of the logits onto the probability simplex,
  `p_i = max(z_i - tau(z), 0)`, trained with the sparsemax loss
  `L = -z_t + 1/2 sum_{j in S(z)} (z_j^2 - tau(z)^2) + 1/2`, `S(z)` the
  classes with `p_j > 0`. Its gradient is `p - onehot(t)`.
- 1.5-entmax (Peters, Niculae & Martins, ACL 2019, arXiv 1905.05702):
  `p_i = max(z_i / 2 - tau(z), 0)^2`, trained with its Fenchel-Young loss
  `L = (1 - sum_j p_j^1.5) / 0.75 + <p - onehot(t), z>` (the `entmax`
  package's `Entmax15Loss`). Its gradient is `p - onehot(t)`.
- Sparse-Softmax (Sun et al. 2021, arXiv 2112.12433): the softmax
  cross-entropy over the `k` largest logits only,
  `L = logsumexp(top-k logits) - z_t`, as in the reference code of its
  co-author J. Su (`bojone/SPACES`, `seq2seq_model.py`): the target's logit
  is not added to the top k, so a target outside them keeps its loss and its
  gradient `-1`.

All three take integer class ids and logits with the classes last, compute
in float32 for float16/bfloat16 logits, and write their gradients out (no
gradient flows through a sort or `top_k`). Their loss classes are
`FunctionLoss`es (`keras_as_softmax.loss_wrapper`), as the AS-Softmax losses
are. The thresholds are exact, sort-based ones. `keras.ops.sparsemax` is not used: in every Keras release
up to 3.15.1 (the newest when this was written) it is wrong whenever more
than one class is in the support (keras-team/keras#23425); the fix,
keras-team/keras#23469, was merged on 2026-08-19, after 3.15.1, and no
release had it yet. This package supports Keras 3.9 and newer.
"""

import keras
import numpy as np
from keras import ops

from keras_as_softmax._keras_private import set_keras_mask
from keras_as_softmax.input_checks import sparse_inputs
from keras_as_softmax.loss_wrapper import FunctionLoss
from keras_as_softmax.loss_wrapper import and_masks

# Sparse-Softmax's k in the reference code (`bojone/SPACES`, `k_sparse = 10`).
_DEFAULT_K = 10


@keras.saving.register_keras_serializable(package="keras_as_softmax")
def sparsemax_loss(y_true, y_pred, ignore_class=None):
    """Sparsemax loss (Martins & Astudillo 2016) for integer targets.

    `L = -z_t + 1/2 sum_{j in S(z)} (z_j^2 - tau(z)^2) + 1/2`, where
    `sparsemax(z)_j = max(z_j - tau(z), 0)` and `S(z)` is its support. It is
    0 once the target's logit leads every other by at least 1. The gradient
    is `sparsemax(z) - onehot(t)`.

    Args:
        y_true: Class ids, the shape of `y_pred` without its last axis (or
            with size 1 there), as integers or floats that are whole numbers.
        y_pred: Logits, classes last, e.g. `(B, C)` or `(B, T, C)`.
        ignore_class: Optional class id (e.g. padding) whose positions get
            loss 0 and no gradient, and are left out of a loss's mean.

    Returns:
        The per-position losses, the shape of `y_true`: float32 for float16
        or bfloat16 logits, else the dtype of `y_pred`.

    Example:

    >>> loss = sparsemax_loss([0, 2], [[2.0, 1.0, -1.0], [0.5, 0.4, 0.1]])
    >>> print(np.round(keras.ops.convert_to_numpy(loss), 4))
    [0.   0.61]
    """
    targets, logits, valid, in_range = _prepare(y_true, y_pred, ignore_class)
    z = _shifted(ops.stop_gradient(logits))
    tau, probs = _sparsemax_threshold_and_probs(z)
    in_support = ops.greater(probs, 0.0)
    # 1/2 sum_S (z_j^2 - tau^2) = 1/2 sum_S p_j (z_j + tau).
    half_squares = 0.5 * ops.sum(
        ops.where(in_support, probs * (z + tau), 0.0), axis=-1
    )
    losses = half_squares - _target_logit(z, targets) + 0.5
    grad = probs - _one_hot(targets, z)
    return _finish(logits, losses, grad, valid, in_range)


@keras.saving.register_keras_serializable(package="keras_as_softmax")
def entmax15_loss(y_true, y_pred, ignore_class=None):
    """1.5-entmax loss (Peters et al. 2019) for integer targets.

    The Fenchel-Young loss of 1.5-entmax, as the `entmax` package's
    `Entmax15Loss`: with `p = entmax15(z)`, `p_j = max(z_j / 2 - tau(z), 0)^2`
    (exact, sort-based threshold), `L = (1 - sum_j p_j^1.5) / 0.75 +
    <p - onehot(t), z>`. The gradient is `p - onehot(t)`.

    Args:
        y_true: Class ids, the shape of `y_pred` without its last axis (or
            with size 1 there), as integers or floats that are whole numbers.
        y_pred: Logits, classes last, e.g. `(B, C)` or `(B, T, C)`.
        ignore_class: Optional class id (e.g. padding) whose positions get
            loss 0 and no gradient, and are left out of a loss's mean.

    Returns:
        The per-position losses, the shape of `y_true`: float32 for float16
        or bfloat16 logits, else the dtype of `y_pred`.

    Example:

    >>> loss = entmax15_loss([0, 2], [[3.0, 1.0, -1.0], [0.5, 0.4, 0.1]])
    >>> print(np.round(keras.ops.convert_to_numpy(loss), 4))
    [0.     0.8211]
    """
    targets, logits, valid, in_range = _prepare(y_true, y_pred, ignore_class)
    z = _shifted(ops.stop_gradient(logits))
    probs = _entmax15_probs(z)
    in_support = ops.greater(probs, 0.0)
    tsallis = (1.0 - ops.sum(probs * ops.sqrt(probs), axis=-1)) / 0.75
    expected_logit = ops.sum(ops.where(in_support, probs * z, 0.0), axis=-1)
    losses = tsallis + expected_logit - _target_logit(z, targets)
    grad = probs - _one_hot(targets, z)
    return _finish(logits, losses, grad, valid, in_range)


@keras.saving.register_keras_serializable(package="keras_as_softmax")
def top_k_softmax_crossentropy(y_true, y_pred, k=_DEFAULT_K, ignore_class=None):
    """Sparse-Softmax (Sun et al. 2021): cross-entropy over the top k logits.

    `L = logsumexp(k largest logits) - z_t`. The target is not added to the
    top k: a target outside them still has its loss, with gradient `-1` on
    its logit (as in the reference code, `bojone/SPACES`). The gradient on
    the top k is their softmax; logits tied at the k-th largest value share
    its place equally, so the gradient does not depend on how a backend
    breaks ties. `k >= C` is plain softmax cross-entropy.

    Args:
        y_true: Class ids, the shape of `y_pred` without its last axis (or
            with size 1 there), as integers or floats that are whole numbers.
        y_pred: Logits, classes last, e.g. `(B, C)` or `(B, T, C)`.
        k: How many of the largest logits the softmax keeps, a positive int
            (10 in the reference code).
        ignore_class: Optional class id (e.g. padding) whose positions get
            loss 0 and no gradient, and are left out of a loss's mean.

    Returns:
        The per-position losses, the shape of `y_true`: float32 for float16
        or bfloat16 logits, else the dtype of `y_pred`.

    Example:

    >>> loss = top_k_softmax_crossentropy(
    ...     [1, 3], [[2.0, 1.0, 0.5, -1.0], [2.0, 1.0, 0.5, -1.0]], k=2)
    >>> print(np.round(keras.ops.convert_to_numpy(loss), 4))
    [1.3133 3.3133]
    """
    k = _validate_k(k)
    targets, logits, valid, in_range = _prepare(y_true, y_pred, ignore_class)
    z = ops.stop_gradient(logits)
    num_classes = z.shape[-1]
    if num_classes is not None:
        k = min(k, num_classes)
    kth = ops.top_k(z, k, sorted=True)[0][..., k - 1 :]
    above = ops.greater(z, kth)
    at_kth = ops.equal(z, kth)
    num_above = ops.sum(ops.cast(above, z.dtype), axis=-1, keepdims=True)
    num_at_kth = ops.sum(ops.cast(at_kth, z.dtype), axis=-1, keepdims=True)
    # The classes tied at the k-th value share the places left to them.
    weights = ops.where(
        above, 1.0, ops.where(at_kth, (k - num_above) / num_at_kth, 0.0)
    )
    z = _shifted(z)
    exps = weights * ops.exp(z)
    total = ops.sum(exps, axis=-1, keepdims=True)
    # `z` is shifted, and the target's shifted logit exact: no rounding of a
    # large maximum's log-sum-exp.
    losses = ops.squeeze(ops.log(total), -1) - _target_logit(z, targets)
    grad = exps / total - _one_hot(targets, z)
    return _finish(logits, losses, grad, valid, in_range)


@keras.saving.register_keras_serializable(package="keras_as_softmax")
class SparsemaxLoss(FunctionLoss):
    """Sparsemax loss (Martins & Astudillo 2016) for integer targets.

    See `sparsemax_loss`. Integer targets are not cast to the loss dtype.

    Args:
        ignore_class: Optional class id whose positions get no loss and are
            left out of the mean.
        reduction: As in `keras.losses.Loss`.
        name: Name of the loss instance.
        dtype: Dtype of the loss's computations, as in `keras.losses.Loss`
            (float16 and bfloat16 logits are still computed in float32).

    Example:

    >>> loss = SparsemaxLoss()([0, 2], [[2.0, 1.0, -1.0], [0.5, 0.4, 0.1]])
    >>> print(np.round(keras.ops.convert_to_numpy(loss), 4))
    0.305
    """

    def __init__(
        self,
        ignore_class=None,
        reduction="sum_over_batch_size",
        name="sparsemax_loss",
        dtype=None,
    ):
        super().__init__(
            sparsemax_loss,
            reduction=reduction,
            name=name,
            dtype=dtype,
            ignore_class=ignore_class,
        )


@keras.saving.register_keras_serializable(package="keras_as_softmax")
class Entmax15Loss(FunctionLoss):
    """1.5-entmax Fenchel-Young loss (Peters et al. 2019) for integer targets.

    See `entmax15_loss`. Integer targets are not cast to the loss dtype.

    Args:
        ignore_class: Optional class id whose positions get no loss and are
            left out of the mean.
        reduction: As in `keras.losses.Loss`.
        name: Name of the loss instance.
        dtype: Dtype of the loss's computations, as in `keras.losses.Loss`
            (float16 and bfloat16 logits are still computed in float32).

    Example:

    >>> loss = Entmax15Loss(reduction="sum")(
    ...     [0, 2], [[3.0, 1.0, -1.0], [0.5, 0.4, 0.1]])
    >>> print(np.round(keras.ops.convert_to_numpy(loss), 4))
    0.8211
    """

    def __init__(
        self,
        ignore_class=None,
        reduction="sum_over_batch_size",
        name="entmax15_loss",
        dtype=None,
    ):
        super().__init__(
            entmax15_loss,
            reduction=reduction,
            name=name,
            dtype=dtype,
            ignore_class=ignore_class,
        )


@keras.saving.register_keras_serializable(package="keras_as_softmax")
class TopKSoftmaxCrossentropy(FunctionLoss):
    """Sparse-Softmax (Sun et al. 2021): cross-entropy over the top k logits.

    See `top_k_softmax_crossentropy`. Integer targets are not cast to the
    loss dtype.

    Args:
        k: How many of the largest logits the softmax keeps, a positive int
            (10 in the reference code); `k >= C` is softmax cross-entropy.
        ignore_class: Optional class id whose positions get no loss and are
            left out of the mean.
        reduction: As in `keras.losses.Loss`.
        name: Name of the loss instance.
        dtype: Dtype of the loss's computations, as in `keras.losses.Loss`
            (float16 and bfloat16 logits are still computed in float32).

    Example:

    >>> loss_fn = TopKSoftmaxCrossentropy(k=2)
    >>> loss = loss_fn([1, 3], [[2.0, 1.0, 0.5, -1.0], [2.0, 1.0, 0.5, -1.0]],
    ...                sample_weight=[1.0, 0.5])
    >>> print(np.round(keras.ops.convert_to_numpy(loss), 4))
    1.4849
    """

    def __init__(
        self,
        k=_DEFAULT_K,
        ignore_class=None,
        reduction="sum_over_batch_size",
        name="top_k_softmax_crossentropy",
        dtype=None,
    ):
        k = _validate_k(k)
        super().__init__(
            top_k_softmax_crossentropy,
            reduction=reduction,
            name=name,
            dtype=dtype,
            k=k,
            ignore_class=ignore_class,
        )


def _validate_k(k):
    """Checks that `k` is a positive int and returns it as a Python int."""
    if isinstance(k, np.ndarray) and k.ndim == 0:
        k = k.item()
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise TypeError(
            "`k` must be a positive int: how many of the largest logits the "
            f"softmax keeps; received {type(k).__name__}: {k!r}."
        )
    if k < 1:
        raise ValueError(
            "`k` must be a positive int: how many of the largest logits the "
            f"softmax keeps; received k={k}."
        )
    return int(k)


def _prepare(y_true, y_pred, ignore_class):
    """Checks the inputs; returns `(targets, logits, valid, in_range)` as
    `input_checks.sparse_inputs` does, logits with the classes last."""
    return sparse_inputs(
        y_true,
        y_pred,
        ignore_class,
        requirement="hold floating-point logits",
        hint=" These losses take class ids only: for one-hot targets pass "
        "their argmax.",
    )


def _shifted(z):
    """`z` minus its row maximum: every loss here is unchanged by the shift,
    and the support's logits become small numbers."""
    return z - ops.max(z, axis=-1, keepdims=True)


def _sparsemax_threshold_and_probs(z):
    """`(tau, sparsemax(z))` by sorting (Martins & Astudillo 2016, Alg. 1):
    with `s` sorted descending and `K` the largest `k` such that
    `1 + k s_k > s_1 + ... + s_k`, `tau = (s_1 + ... + s_K - 1) / K`."""
    s = -ops.sort(-z, axis=-1)
    cumsum = ops.cumsum(s, axis=-1)
    rank = ops.cumsum(ops.ones_like(s), axis=-1)
    support = ops.greater(1.0 + rank * s, cumsum)
    size = ops.sum(ops.cast(support, "int32"), axis=-1, keepdims=True)
    tau = (ops.take_along_axis(cumsum, size - 1, axis=-1) - 1.0) / ops.cast(
        size, z.dtype
    )
    return tau, ops.maximum(z - tau, 0.0)


def _entmax15_probs(z):
    """`entmax15(z)` with the exact sort-based threshold of the `entmax`
    package (`_entmax_threshold_and_support`, Peters et al. 2019): on
    `x = z / 2` sorted descending, for each `k` the threshold `tau_k` with
    `sum_{i <= k} (x_i - tau_k)^2 = 1`; `tau = tau_K` for `K` the number of
    `k` with `tau_k <= x_k`."""
    x = z / 2.0
    s = -ops.sort(-x, axis=-1)
    rank = ops.cumsum(ops.ones_like(s), axis=-1)
    mean = ops.cumsum(s, axis=-1) / rank
    mean_sq = ops.cumsum(s * s, axis=-1) / rank
    delta = (1.0 - rank * (mean_sq - mean * mean)) / rank
    taus = mean - ops.sqrt(ops.maximum(delta, 0.0))
    size = ops.sum(ops.cast(ops.less_equal(taus, s), "int32"), axis=-1, keepdims=True)
    tau = ops.take_along_axis(taus, size - 1, axis=-1)
    return ops.square(ops.maximum(x - tau, 0.0))


def _target_logit(z, targets):
    return ops.squeeze(ops.take_along_axis(z, ops.expand_dims(targets, -1), -1), -1)


def _one_hot(targets, z):
    classes = ops.arange(ops.shape(z)[-1], dtype="int32")
    return ops.cast(ops.equal(classes, ops.expand_dims(targets, -1)), z.dtype)


def _finish(logits, losses, grad, valid, in_range):
    """The per-position `losses` with gradient `grad` on `logits`.

    Out-of-range ids (seen only in a traced step, where `in_range` is not
    None) get a NaN loss and no gradient; ignored positions get loss 0, no
    gradient and a Keras mask.
    """
    counted = and_masks(in_range, valid)
    if counted is not None:
        grad = ops.where(ops.expand_dims(counted, -1), grad, 0.0)
    if in_range is not None:
        losses = ops.where(in_range, losses, np.nan)
    if valid is not None:
        losses = ops.where(valid, losses, 0.0)
    if not isinstance(logits, keras.KerasTensor):
        losses = _with_gradient(logits, losses, grad)
    if valid is not None:
        set_keras_mask(losses, valid)
    return losses


def _with_gradient(logits, losses, grad):
    """`losses`, whose gradient with respect to `logits` is `grad` times the
    upstream gradient of each position."""

    @ops.custom_gradient
    def with_gradient(logits):
        def gradient(*args, upstream=None):
            if upstream is None:
                (upstream,) = args
            return ops.expand_dims(ops.cast(upstream, grad.dtype), -1) * grad

        return losses, gradient

    return with_gradient(logits)
