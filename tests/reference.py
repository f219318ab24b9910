"""Independent float64 NumPy references for the AS-Softmax losses.

Written from the definition (paper.md, section 1): probabilities, the keep
test `p_t - p_i <= delta`, the kept log-sum-exp, and the closed-form
gradient `softmax over kept - one_hot(t)`.
"""

import numpy as np

# Keep decisions whose margin |delta - (p_t - p_i)| is below this fraction of
# p_t + p_i + delta (the size of the numbers compared) are ties that float32
# rounding may decide either way; either decision is correct.
TIE_TOLERANCE = 1e-5


def softmax(z):
    z = np.asarray(z, np.float64)
    e = np.exp(z - np.max(z, axis=-1, keepdims=True))
    return e / np.sum(e, axis=-1, keepdims=True)


def sparse_as_softmax(y, z, delta, ignore_class=None, tie_keep=None):
    """Per-position loss, its gradient, the keep mask and the tie count.

    Args:
        y: Integer targets, shape `z.shape[:-1]`.
        z: Logits `(..., C)`.
        delta: The drop margin.
        ignore_class: Target id whose positions have loss and gradient 0.
        tie_keep: Optional boolean `(..., C)` deciding the keep test where
            it is a tie (see `TIE_TOLERANCE`).

    Returns:
        `(loss, grad, keep, num_ties)`; `grad` is d(loss)/dz per position.
    """
    z = np.asarray(z, np.float64)
    y = np.asarray(y)
    valid = np.ones(y.shape, bool) if ignore_class is None else y != ignore_class
    t = np.where(valid, y, 0)
    p = softmax(z)
    p_t = np.take_along_axis(p, t[..., None], axis=-1)
    margin = delta - (p_t - p)
    keep = margin >= 0
    is_target = np.arange(z.shape[-1]) == t[..., None]
    ties = (np.abs(margin) < TIE_TOLERANCE * (p_t + p + delta)) & ~is_target
    if tie_keep is not None:
        keep = np.where(ties, tie_keep, keep)
    np.put_along_axis(keep, t[..., None], True, axis=-1)
    kept_z = np.where(keep, z, -np.inf)
    kept_max = np.max(kept_z, axis=-1, keepdims=True)
    kept_exp = np.where(keep, np.exp(kept_z - kept_max), 0.0)
    kept_sum = np.sum(kept_exp, axis=-1, keepdims=True)
    z_t = np.take_along_axis(z, t[..., None], axis=-1)
    loss = (kept_max + np.log(kept_sum) - z_t)[..., 0]
    grad = kept_exp / kept_sum
    np.put_along_axis(
        grad, t[..., None], np.take_along_axis(grad, t[..., None], -1) - 1, -1
    )
    loss = np.where(valid, loss, 0.0)
    grad = np.where(valid[..., None], grad, 0.0)
    num_ties = int(np.sum(ties & valid[..., None]))
    return loss, grad, keep & valid[..., None], num_ties


def sparse_as_softmax_from_probabilities(y, p, delta, epsilon=1e-7):
    """`sparse_as_softmax` for probabilities `p`, as Keras reads them.

    Each row is divided by its sum (`q = p / S`); class `i` is kept when
    `q_t - q_i <= delta`; the loss is `log(sum of kept q) - log(clip(q_t,
    epsilon, 1 - epsilon))`, with loss and gradient 0 where no kept class but
    the target has probability (masked). At `delta = 1` that is Keras's
    `-log(clip(q_t))`.

    Returns:
        `(loss, grad, masked)`; `grad` is d(loss)/dp per position.
    """
    p = np.asarray(p, np.float64)
    y = np.asarray(y)[..., None]
    total = np.sum(p, axis=-1, keepdims=True)
    q = p / total
    q_t = np.take_along_axis(q, y, axis=-1)
    keep = q >= q_t - delta
    kept_sum = np.sum(np.where(keep, q, 0.0), axis=-1, keepdims=True)
    is_target = np.arange(p.shape[-1]) == y
    others = np.where(keep & ~is_target, q, 0.0)
    masked = np.sum(others, axis=-1, keepdims=True) == 0
    clipped = np.clip(q_t, epsilon, 1 - epsilon)
    loss = np.where(masked, 0.0, np.log(kept_sum) - np.log(clipped))
    # d log(kept_sum)/dp_j = (keep_j / S - kept_sum / S) / kept_sum;
    # d log(clip(q_t))/dp_j = (onehot_j / S - q_t / S) / q_t inside the clip.
    inside = (q_t > epsilon) & (q_t < 1 - epsilon)
    grad = (keep - kept_sum) / (total * kept_sum) - np.where(
        inside, (is_target - q_t) / (total * q_t), 0.0
    )
    grad = np.where(masked, 0.0, grad)
    return loss[..., 0], grad, masked[..., 0]


def softmax_crossentropy(y, z):
    """Plain sparse softmax cross-entropy per position."""
    z = np.asarray(z, np.float64)
    log_p = z - np.max(z, -1, keepdims=True)
    log_p = log_p - np.log(np.sum(np.exp(log_p), -1, keepdims=True))
    return -np.take_along_axis(log_p, np.asarray(y)[..., None], -1)[..., 0]


def _logsumexp_with_zero(x, keep):
    """log(1 + sum(exp(x) where keep)) per row, and its gradient in x."""
    kept = np.where(keep, x, -np.inf)
    shift = np.maximum(np.max(kept, axis=-1, keepdims=True), 0.0)
    exps = np.where(keep, np.exp(kept - shift), 0.0)
    total = np.exp(-shift) + np.sum(exps, axis=-1, keepdims=True)
    return (shift + np.log(total))[..., 0], exps / total


def multilabel_as_softmax(y, s, delta, tie_keep=None):
    """Multi-label AS-Softmax (paper.md section 2 and "Our decisions").

    Returns:
        `(loss, grad, keep, num_ties)` as for `sparse_as_softmax`; `keep`
        marks the kept terms (negatives and positives together).
    """
    s = np.asarray(s, np.float64)
    positive = np.asarray(y) > 0.5
    negative = ~positive
    p = softmax(s)
    min_positive = np.min(np.where(positive, p, np.inf), -1, keepdims=True)
    max_negative = np.max(np.where(negative, p, -np.inf), -1, keepdims=True)
    negative_margin = delta - (min_positive - p)
    positive_margin = delta - (p - max_negative)
    has_positive = positive.any(-1, keepdims=True)
    has_negative = negative.any(-1, keepdims=True)
    keep_negative = negative & ((negative_margin >= 0) | ~has_positive)
    keep_positive = positive & ((positive_margin >= 0) | ~has_negative)
    ties = (
        negative & has_positive
        & (np.abs(negative_margin) < TIE_TOLERANCE * (min_positive + p + delta))
    ) | (
        positive & has_negative
        & (np.abs(positive_margin) < TIE_TOLERANCE * (max_negative + p + delta))
    )
    if tie_keep is not None:
        keep_negative = np.where(ties, tie_keep & negative, keep_negative)
        keep_positive = np.where(ties, tie_keep & positive, keep_positive)
    negative_loss, negative_grad = _logsumexp_with_zero(s, keep_negative)
    positive_loss, positive_grad = _logsumexp_with_zero(-s, keep_positive)
    return (
        negative_loss + positive_loss,
        negative_grad - positive_grad,
        keep_negative | keep_positive,
        int(ties.sum()),
    )
