"""Float64 NumPy references for `keras_as_softmax.baselines`.

Each function takes integer targets `y` (shape `z.shape[:-1]`) and logits
`z` (classes last) and returns `(losses, grad)`: the per-position losses and
their gradient with respect to `z`, written out analytically. The
probability maps are computed by sorting; `entmax15_bisect` and
`simplex_projection` are independent checks of them.
"""

import numpy as np


def sparsemax(z):
    """Sparsemax (Martins & Astudillo 2016, Algorithm 1), last axis."""
    z = np.asarray(z, np.float64)
    s = -np.sort(-z, axis=-1)
    cumsum = np.cumsum(s, axis=-1)
    rank = np.arange(1, z.shape[-1] + 1)
    size = np.sum(1 + rank * s > cumsum, axis=-1, keepdims=True)
    tau = (np.take_along_axis(cumsum, size - 1, -1) - 1) / size
    return np.maximum(z - tau, 0.0), tau


def simplex_projection(v):
    """Euclidean projection of each row onto the simplex, by bisection on the
    threshold (an independent check of `sparsemax`)."""
    v = np.asarray(v, np.float64)
    lo = v.max(-1, keepdims=True) - 1.0
    hi = v.max(-1, keepdims=True)
    for _ in range(200):
        mid = (lo + hi) / 2
        too_much = np.maximum(v - mid, 0).sum(-1, keepdims=True) > 1
        lo, hi = np.where(too_much, mid, lo), np.where(too_much, hi, mid)
    return np.maximum(v - (lo + hi) / 2, 0)


def sparsemax_loss(y, z):
    """Martins & Astudillo's loss `-z_t + 1/2 sum_S (z_j^2 - tau^2) + 1/2`
    and its gradient `p - onehot(t)`."""
    z = np.asarray(z, np.float64)
    y = np.asarray(y)
    p, tau = sparsemax(z)
    support = p > 0
    squares = np.where(support, z**2 - tau**2, 0).sum(-1)
    z_t = np.take_along_axis(z, y[..., None], -1)[..., 0]
    losses = -z_t + 0.5 * squares + 0.5
    return losses, p - one_hot(y, z.shape[-1])


def entmax15(z):
    """1.5-entmax, `max(z / 2 - tau, 0)^2`, with the `entmax` package's
    sort-based threshold, in float64."""
    x = np.asarray(z, np.float64) / 2
    x = x - x.max(-1, keepdims=True)
    s = -np.sort(-x, axis=-1)
    rank = np.arange(1, x.shape[-1] + 1)
    mean = np.cumsum(s, -1) / rank
    mean_sq = np.cumsum(s**2, -1) / rank
    delta = (1 - rank * (mean_sq - mean**2)) / rank
    taus = mean - np.sqrt(np.maximum(delta, 0))
    size = np.sum(taus <= s, axis=-1, keepdims=True)
    tau = np.take_along_axis(taus, size - 1, -1)
    return np.maximum(x - tau, 0) ** 2


def entmax15_bisect(z):
    """1.5-entmax by bisection on `tau` in `sum max(z/2 - tau, 0)^2 = 1`."""
    x = np.asarray(z, np.float64) / 2
    lo = x.max(-1, keepdims=True) - 1.0
    hi = x.max(-1, keepdims=True)
    for _ in range(200):
        mid = (lo + hi) / 2
        too_much = (np.maximum(x - mid, 0) ** 2).sum(-1, keepdims=True) > 1
        lo, hi = np.where(too_much, mid, lo), np.where(too_much, hi, mid)
    return np.maximum(x - (lo + hi) / 2, 0) ** 2


def entmax15_loss(y, z):
    """The Fenchel-Young loss of 1.5-entmax, `(1 - sum p^1.5) / 0.75 +
    <p - onehot(t), z>`, and its gradient `p - onehot(t)`."""
    z = np.asarray(z, np.float64)
    y = np.asarray(y)
    p = entmax15(z)
    target = one_hot(y, z.shape[-1])
    tsallis = (1 - np.sum(p**1.5, -1)) / 0.75
    losses = tsallis + np.sum((p - target) * (z - z.max(-1, keepdims=True)), -1)
    return losses, p - target


def top_k_softmax_crossentropy(y, z, k):
    """`logsumexp(k largest logits) - z_t`; the gradient is the softmax over
    the k largest (logits tied at the k-th value share its places equally)
    minus `onehot(t)`."""
    z = np.asarray(z, np.float64)
    y = np.asarray(y)
    k = min(k, z.shape[-1])
    kth = -np.sort(-z, axis=-1)[..., k - 1 : k]
    above = z > kth
    at = z == kth
    share = (k - above.sum(-1, keepdims=True)) / at.sum(-1, keepdims=True)
    weights = np.where(above, 1.0, np.where(at, share, 0.0))
    top = z.max(-1, keepdims=True)
    exps = weights * np.exp(z - top)
    total = exps.sum(-1, keepdims=True)
    z_t = np.take_along_axis(z, y[..., None], -1)[..., 0]
    losses = (top + np.log(total))[..., 0] - z_t
    return losses, exps / total - one_hot(y, z.shape[-1])


def keras_sparsemax_before_fix(z):
    """What `keras.ops.sparsemax` computes in Keras 3.15.1 and older: the
    threshold sums the cumulative sums over the support instead of taking
    the last one (keras-team/keras#23425)."""
    z = np.asarray(z, np.float64)
    s = -np.sort(-z, axis=-1)
    cumsum = np.cumsum(s, axis=-1)
    rank = np.arange(1, z.shape[-1] + 1)
    support = s - (cumsum - 1) / rank > 0
    size = support.sum(-1, keepdims=True)
    tau = (np.where(support, cumsum, 0).sum(-1, keepdims=True) - 1) / size
    return np.maximum(z - tau, 0)


def one_hot(y, num_classes):
    return (np.asarray(y)[..., None] == np.arange(num_classes)).astype(np.float64)


def numerical_gradient(loss_fn, y, z, eps=1e-6):
    """Central differences of `sum(loss_fn(y, z)[0])` in float64."""
    z = np.asarray(z, np.float64)
    grad = np.zeros_like(z)
    for index in np.ndindex(z.shape):
        step = np.zeros_like(z)
        step[index] = eps
        grad[index] = (
            loss_fn(y, z + step)[0].sum() - loss_fn(y, z - step)[0].sum()
        ) / (2 * eps)
    return grad
