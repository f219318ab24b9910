"""PyTorch-specific operations (they import nothing of this package)."""

import keras
import torch


def known_values(x):
    """`x` as a NumPy array if its values are known now, else None.

    Under `torch.compile` reading values would break the graph, so they count
    as unknown.

    Example:

    >>> known_values(keras.ops.convert_to_tensor([1, 2])).tolist()
    [1, 2]
    """
    if torch.compiler.is_compiling():
        return None
    return x.detach().cpu().numpy()


def sum_across_replicas(x):
    """`x` summed over replicas: Keras's torch trainer runs on one device.

    Example:

    >>> int(sum_across_replicas(keras.ops.convert_to_tensor(3)))
    3
    """
    return x


# The sparse AS-Softmax loss from logits, as the `keras.ops` core
# (`keras_as_softmax.as_softmax._single_label_core`) computes it, in kernels
# of its own for speed only: eager PyTorch runs one kernel, and allocates one
# buffer, per operation, where Keras's own sparse cross-entropy is a single
# `cross_entropy` (tests/test_as_softmax.py checks that they agree).

# Where a target's probability is below this, its log is taken from a
# log-sum-exp instead of the probability, which may have lost precision.
_SMALLEST_LOGGED_PROB = 2.0**-100


def _softmax_keeps_order(logits):
    """Whether `torch.softmax` is known to keep the order of the logits:
    equal logits get equal probabilities, and a larger logit a probability
    at least as large, whatever their positions in the row.

    On the CPU, in float32, ATen's softmax applies one vectorized `exp` to
    every element of a row (a partial vector at its end), and that `exp` is
    monotone: checked for every float32 input in [-104, 0] (PyTorch 2.13).
    There a class whose logit is at least the target's has a probability at
    least `p_t`, so the mask's test `z_i >= z_t` adds nothing to
    `p_i >= p_t - delta`, and can be left out.
    """
    return logits.device.type == "cpu" and logits.dtype == torch.float32


def _target_log_prob(target_index, logits, target_prob):
    """`log(p_t)`, from the probability where it is large enough, else
    exactly, `z_t - logsumexp(z)` (a host check on the CPU)."""
    if logits.device.type == "cpu":
        if not target_prob.amin().item() < _SMALLEST_LOGGED_PROB:
            return target_prob.log()
    exact = logits.gather(-1, target_index) - torch.logsumexp(
        logits, -1, keepdim=True
    )
    return torch.where(target_prob < _SMALLEST_LOGGED_PROB, exact, target_prob.log())


# Elements of the scratch buffer of `_drop_in_place`: 4 MB of float32.
_DROP_CHUNK = 1 << 20


def _drop_in_place(probs, threshold):
    """Sets `probs` (classes last) to 0 where below `threshold` (their shape,
    last axis 1), in place, with arithmetic only.

    `threshold - p` lies in [-2, 1] (both are probabilities, delta at most
    1) and is above 0 exactly where `p` is dropped, so its ceiling, clamped
    at 0, is 1 there and 0 elsewhere, and `p - p * step` is 0 or exactly
    `p`. Beyond `_DROP_CHUNK` elements the step goes through a scratch
    buffer of that size, a few rows at a time: a buffer of the logits' size
    would be fresh memory on every call, whose page faults cost more than
    the arithmetic.
    """
    num_classes = probs.shape[-1]
    if probs.numel() <= _DROP_CHUNK:
        step = torch.sub(threshold, probs).ceil_().clamp_(min=0.0)
        probs.addcmul_(probs, step, value=-1.0)
        return
    probs = probs.view(-1, num_classes)
    threshold = threshold.reshape(-1, 1)
    rows = max(1, _DROP_CHUNK // max(1, num_classes))
    scratch = probs.new_empty((min(rows, probs.shape[0]), num_classes))
    for start in range(0, probs.shape[0], rows):
        part = probs[start : start + rows]
        step = torch.sub(
            threshold[start : start + rows], part, out=scratch[: part.shape[0]]
        )
        part.addcmul_(part, step.ceil_().clamp_(min=0.0), value=-1.0)


def _dropped(probs, threshold, logits, target_logit):
    """The classes that the loss drops: `p_i < p_t - delta` and `z_i < z_t`."""
    return (probs < threshold) & (logits < target_logit)


def _losses_and_masked(kept_sum, target_prob, target_log_prob, ctx=None):
    """A forward pass's outputs: per-position losses `log(kept sum) -
    log(p_t)`, 0 where masked (only the target kept: the sum is exactly
    `p_t`), and the masked positions (marked as without a gradient in the
    autograd context `ctx`); then the masked flags with their last axis,
    for the backward pass."""
    masked = kept_sum == target_prob
    losses = (kept_sum.log() - target_log_prob).masked_fill_(masked, 0.0)
    masked_positions = masked.squeeze(-1)
    if ctx is not None:
        ctx.mark_non_differentiable(masked_positions)
    return losses.squeeze(-1), masked_positions, masked


def _kept_probs(target_index, logits, delta):
    """`(kept, target_prob, threshold, kept_sum)`: `softmax(logits)` with the
    classes that the loss drops set to 0 in its own buffer, the target's
    probability, `p_t - delta`, and the kept probabilities' sum."""
    probs = torch.softmax(logits, dim=-1)
    target_prob = probs.gather(-1, target_index)
    threshold = target_prob - delta
    if _softmax_keeps_order(logits):
        _drop_in_place(probs, threshold)
    else:
        target_logit = logits.gather(-1, target_index)
        probs.masked_fill_(_dropped(probs, threshold, logits, target_logit), 0.0)
    return probs, target_prob, threshold, probs.sum(-1, keepdim=True)


class _SparseASSoftmaxLoss(torch.autograd.Function):
    """The sparse AS-Softmax loss as one autograd node, for eager PyTorch.

    It takes `torch.softmax` (the probabilities that the core compares) and
    drops classes in its buffer, in place: on the CPU with arithmetic
    (`_drop_in_place`), because comparisons and masked fills there are
    several times slower than a multiplication. The gradient, `g * (kept p /
    sum of kept p - onehot(t))`, is one multiplication of the saved kept
    probabilities.
    """

    @staticmethod
    def forward(ctx, target_index, logits, delta):
        probs, target_prob, _, kept_sum = _kept_probs(target_index, logits, delta)
        target_log_prob = _target_log_prob(target_index, logits, target_prob)
        losses, masked_positions, masked = _losses_and_masked(
            kept_sum, target_prob, target_log_prob, ctx
        )
        ctx.save_for_backward(target_index, probs, kept_sum, masked)
        return losses, masked_positions

    @staticmethod
    def backward(ctx, upstream, _):
        target_index, kept_probs, kept_sum, masked = ctx.saved_tensors
        upstream = torch.where(masked, 0.0, upstream.unsqueeze(-1))
        grad = kept_probs * (upstream / kept_sum)
        return None, grad.scatter_add_(-1, target_index, -upstream), None


class _CompiledSparseASSoftmaxLoss(torch.autograd.Function):
    """The sparse AS-Softmax loss for `torch.compile`: row statistics in the
    forward pass, the kept probabilities recomputed in the backward pass, so
    that Inductor keeps no buffer of the logits' size (as for Keras's
    cross-entropy, which it fuses into one pass forward and one backward).

    The forward pass, the kept sum and the backward pass each write
    `exp(z - max)` differently (`z - m`, `z + (-m)`, `(-m) + z`: the same
    values): written alike, Inductor computes it once and keeps it, a
    float32 buffer of the logits' size. The target's one-hot term is a
    comparison with the class ids rather than a scatter, which Inductor
    cannot fuse. Its exponentials are Inductor's, not ATen's, so the mask
    keeps the test `z_i >= z_t`.
    """

    @staticmethod
    def forward(ctx, target_index, logits, delta):
        row_max = logits.amax(-1, keepdim=True)
        neg_row_max = -row_max
        log_sum = torch.exp(logits - row_max).sum(-1, keepdim=True).log()
        inv_sum = torch.exp(-log_sum)
        target_logit = logits.gather(-1, target_index)
        target_prob = torch.exp(target_logit + neg_row_max) * inv_sum
        threshold = target_prob - delta
        probs = torch.exp(logits + neg_row_max) * inv_sum
        dropped = _dropped(probs, threshold, logits, target_logit)
        kept_sum = torch.where(dropped, 0.0, probs).sum(-1, keepdim=True)
        target_log_prob = target_logit - row_max - log_sum
        losses, masked_positions, masked = _losses_and_masked(
            kept_sum, target_prob, target_log_prob, ctx
        )
        ctx.save_for_backward(
            target_index, logits, neg_row_max, inv_sum, threshold, target_logit,
            kept_sum, masked,
        )
        return losses, masked_positions

    @staticmethod
    def backward(ctx, upstream, _):
        (target_index, logits, neg_row_max, inv_sum, threshold, target_logit,
         kept_sum, masked) = ctx.saved_tensors
        upstream = torch.where(masked, 0.0, upstream.unsqueeze(-1))
        probs = inv_sum * torch.exp(neg_row_max + logits)
        keep = (threshold <= probs) | (target_logit <= logits)
        grad = torch.where(keep, probs * (upstream / kept_sum), 0.0)
        classes = torch.arange(logits.shape[-1], device=logits.device)
        return None, grad - torch.where(classes == target_index, upstream, 0.0), None


def fused_sparse_as_softmax_loss(target_index, logits, delta):
    """Per-position sparse AS-Softmax `(losses, masked)` of `logits` (classes
    last) for `target_index` (their shape, last axis 1) and a float or
    tensor `delta`, as `keras_as_softmax.as_softmax._logit_losses` computes
    them.

    Example:

    >>> import torch
    >>> losses, masked = fused_sparse_as_softmax_loss(
    ...     torch.tensor([[1], [2]]),
    ...     torch.tensor([[1.2, 1.5, 1.0, -0.35], [2.5, 3.5, 0.4, 0.3]]), 0.1)
    >>> [round(loss, 4) for loss in losses.tolist()], masked.tolist()
    ([0.0, 3.4741], [True, False])
    """
    if torch.compiler.is_compiling():
        return _CompiledSparseASSoftmaxLoss.apply(target_index, logits, delta)
    return _SparseASSoftmaxLoss.apply(target_index, logits, delta)


@torch.compiler.disable
def branch_value(x):
    """The value of scalar `x`, to branch on in Python: PyTorch's steps
    always branch in Python (under `torch.compile` a quiet graph break)."""
    return x.item() if isinstance(x, torch.Tensor) else x


def eager_under_torch_compile(function):
    """`function`, run eagerly even inside `torch.compile`d code: the host's
    bookkeeping (Dynamo would trace its NumPy calls), and the fused
    projection loss's chunk loop (Dynamo would unroll it, where the eager
    chunk kernels below are faster than Inductor's code for it).

    Example:

    >>> eager_under_torch_compile(lambda: 1)()
    1
    """
    return torch.compiler.disable(function)


# Eager PyTorch runs a loop's iterations one at a time.
sequential_while_loop = keras.ops.while_loop


def compile_chunk_loop(function):
    """The fused projection loss's chunk loop as it is: it runs eagerly,
    with the chunk kernels below, also under `torch.compile` (its caller
    is `eager_under_torch_compile`)."""
    return function


# The chunk computations of the AS loss fused with the output projection
# (`keras_as_softmax.linear_as_softmax`), as its `keras.ops` form computes
# them, in place for speed only: eager PyTorch allocates a buffer of the
# chunk's logits for each operation of that form. The chunk loop runs them
# eagerly under `torch.compile` too (`eager_under_torch_compile`); for
# inputs they do not cover they return None and the caller takes the
# `keras.ops` form.

# `add_chunk_gradients` adds a chunk's kernel gradient in place: one slice.
kernel_gradient_slice = None


def chunk_logits(rows, kernel, bias, transposed_kernel):
    """`rows @ kernel + bias` as one product (`kernel` `(V, H)` if
    `transposed_kernel`), for float32 or float64 inputs; else None.

    Example:

    >>> chunk_logits(torch.ones(1, 2), torch.ones(2, 3), torch.arange(3.0), False)
    tensor([[2., 3., 4.]])
    """
    if rows.dtype not in (torch.float32, torch.float64):
        return None
    weights = kernel.T if transposed_kernel else kernel
    if bias is None:
        return rows @ weights
    return torch.addmm(bias.to(rows.dtype), rows, weights)


def chunk_as_softmax(target_index, logits, delta):
    """`(losses, masked, kept, kept_sum, statistics)` of a chunk's logits (a
    matrix) for `target_index` `(rows, 1)`, as
    `keras_as_softmax.as_softmax._single_label_core` gives them from logits,
    with `kept` the kept probabilities and `statistics` `(log-sum-exp, target
    logit, p_t - delta)`: `exp(logits - log-sum-exp)` are the probabilities,
    in the threshold's units (`as_softmax.keep_cutoff` turns them into the
    core's).

    Example:

    >>> losses, masked, kept, kept_sum, _ = chunk_as_softmax(
    ...     torch.tensor([[1], [2]]),
    ...     torch.tensor([[1.2, 1.5, 1.0, -0.35], [2.5, 3.5, 0.4, 0.3]]), 0.1)
    >>> [round(loss, 4) for loss in losses.tolist()], masked.tolist()
    ([0.0, 3.4741], [True, False])
    """
    kept, target_prob, threshold, kept_sum = _kept_probs(target_index, logits, delta)
    target_log_prob = _target_log_prob(target_index, logits, target_prob)
    losses, masked, _ = _losses_and_masked(kept_sum, target_prob, target_log_prob)
    target_logit = logits.gather(-1, target_index)
    statistics = (target_logit - target_log_prob, target_logit, threshold)
    return losses, masked, kept, kept_sum, statistics


def add_chunk_gradients(
    gradients, start, rows, target_index, kept, kept_sum, weights, kernel,
    transposed_kernel,
):
    """`gradients` `(hidden rows, kernel)` (and the bias's, with a bias)
    plus, added in place, those of `sum(weights * losses)` over the chunk of
    `rows` from row `start`, whose kept classes are `kept` (overwritten: it
    becomes the gradient of the logits) summing to `kept_sum`. None where
    the rows' dtype is not the gradients'.
    """
    grad_hidden, grad_kernel, *grad_bias = gradients
    if rows.dtype != grad_kernel.dtype:
        return None
    weights = weights.unsqueeze(-1)
    grad_logits = kept.mul_(weights / kept_sum)
    grad_logits.scatter_add_(-1, target_index.long(), -weights)
    if transposed_kernel:
        chunk_hidden = grad_logits @ kernel
        grad_kernel.addmm_(grad_logits.T, rows)
    else:
        chunk_hidden = grad_logits @ kernel.T
        grad_kernel.addmm_(rows.T, grad_logits)
    start = int(start)
    grad_hidden[start : start + rows.shape[0]] = chunk_hidden
    for grad in grad_bias:
        grad.add_(grad_logits.sum(0))
    return gradients


def scale_held_gradients(held, factor):
    """The gradients in the list `held` times `factor` (the fused projection
    loss's, computed in its forward pass, times the upstream gradient), in
    place: a copy of the kernel's gradient would be the largest temporary
    of the backward pass. It empties `held`, so that a second backward pass
    through the same graph (`retain_graph=True`) raises instead of scaling
    them twice.

    Example:

    >>> held = [torch.ones(())]
    >>> [float(x) for x in scale_held_gradients(held, 2.0)], held
    ([2.0], [])
    """
    if not held:
        raise RuntimeError(
            "The gradient of a `LinearSparseASSoftmaxCrossentropy` loss can "
            "be taken once per call on PyTorch (it scales the gradients that "
            "its forward pass computed, in place): call the loss again for "
            "another backward pass."
        )
    gradients = tuple(gradient.mul_(factor) for gradient in held)
    held.clear()
    return gradients
