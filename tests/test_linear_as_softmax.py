"""The AS-Softmax loss fused with the output projection, against the unfused
loss and the float64 NumPy reference: losses, masked flags and gradients
with respect to the hidden states, the kernel and the bias."""

import keras
import numpy as np
import pytest
from keras import ops

from keras_as_softmax import LinearSparseASSoftmaxCrossentropy
from keras_as_softmax import SparseASSoftmaxCrossentropy
from keras_as_softmax import linear_sparse_as_softmax_crossentropy
from keras_as_softmax import sparse_as_softmax_crossentropy
from keras_as_softmax import linear_as_softmax
from keras_as_softmax._keras_private import set_keras_mask
from tests import reference
from tests.helpers import to_numpy
from tests.helpers import value_and_grads

NUM_ROWS, HIDDEN, VOCABULARY, CHUNK = 37, 6, 50, 8  # 37 rows: 5 chunks, 3 rows short.


def _inputs(seed=0, scale=3.0, dtype="float32"):
    rng = np.random.default_rng(seed)
    hidden = rng.standard_normal((NUM_ROWS, HIDDEN)).astype(dtype)
    kernel = (scale * rng.standard_normal((HIDDEN, VOCABULARY))).astype(dtype)
    bias = rng.standard_normal(VOCABULARY).astype(dtype)
    targets = rng.integers(0, VOCABULARY, NUM_ROWS)
    # The class each row already predicts, for half the rows: those are masked.
    logits = hidden.astype(np.float64) @ kernel + bias
    targets[::2] = logits.argmax(-1)[::2]
    weights = rng.uniform(0.5, 2.0, NUM_ROWS).astype(dtype)
    return hidden, kernel, bias, targets, weights


def _reference(targets, hidden, kernel, bias, weights, delta, ignore_class=None):
    """Float64: the weighted sum of losses and its gradients (hidden, kernel,
    bias), from `reference.sparse_as_softmax` on the materialised logits."""
    hidden, kernel = hidden.astype(np.float64), kernel.astype(np.float64)
    logits = hidden @ kernel + (0.0 if bias is None else bias.astype(np.float64))
    loss, grad_logits, keep, _ = reference.sparse_as_softmax(
        targets, logits, delta, ignore_class=ignore_class
    )
    grad_logits = grad_logits * weights[:, None]
    masked = keep.sum(-1) == 1
    return (
        float(np.sum(weights * loss)),
        (grad_logits @ kernel.T, hidden.T @ grad_logits, grad_logits.sum(0)),
        loss,
        masked,
    )


@pytest.mark.parametrize("jit", [False, True], ids=["eager", "compiled"])
@pytest.mark.parametrize("delta", [0.1, 1.0])
@pytest.mark.parametrize("transposed", [False, True], ids=["hv", "vh"])
def test_gradients_match_reference_and_unfused(delta, transposed, jit):
    hidden, kernel, bias, targets, weights = _inputs()
    ignore_class = int(targets[3])
    stored_kernel = kernel.T.copy() if transposed else kernel

    def fused(hidden, kernel, bias):
        losses = linear_sparse_as_softmax_crossentropy(
            targets, hidden, kernel, delta, bias=bias, ignore_class=ignore_class,
            transposed_kernel=transposed, chunk_size=CHUNK,
        )
        return ops.sum(ops.multiply(losses, weights))

    def unfused(hidden, kernel, bias):
        kernel = ops.transpose(kernel) if transposed else kernel
        losses = sparse_as_softmax_crossentropy(
            targets, ops.matmul(hidden, kernel) + bias, delta, ignore_class=ignore_class
        )
        return ops.sum(ops.multiply(losses, weights))

    value, grads = value_and_grads(fused, (hidden, stored_kernel, bias), jit)
    expected_value, expected_grads, _, _ = _reference(
        targets, hidden, kernel, bias, weights, delta, ignore_class
    )
    expected_grads = list(expected_grads)
    if transposed:
        expected_grads[1] = expected_grads[1].T
    unfused_value, unfused_grads = value_and_grads(
        unfused, (hidden, stored_kernel, bias), jit
    )
    np.testing.assert_allclose(value, expected_value, rtol=1e-5)
    np.testing.assert_allclose(value, unfused_value, rtol=1e-6)
    for grad, expected, unfused_grad in zip(grads, expected_grads, unfused_grads):
        np.testing.assert_allclose(grad, expected, rtol=1e-4, atol=1e-5)
        # Float32 rounding of sums over the vocabulary: relative to the
        # largest entry (the two compute exp and its normaliser differently).
        scale = np.abs(unfused_grad).max()
        np.testing.assert_allclose(grad, unfused_grad, rtol=1e-5, atol=1e-6 * scale)


@pytest.mark.parametrize("delta", [0.1, 1.0])
def test_losses_and_masked_flags_match_unfused(delta):
    hidden, kernel, bias, targets, _ = _inputs(seed=1)
    hidden = hidden.reshape(NUM_ROWS, 1, HIDDEN)  # (B, T, H)
    positions = targets.reshape(NUM_ROWS, 1)
    losses, masked = linear_as_softmax.linear_losses_and_masked(
        positions, hidden, delta, kernel=kernel, bias=bias, chunk_size=CHUNK
    )
    _, _, expected_losses, expected_masked = _reference(
        targets, hidden[:, 0], kernel, bias, np.ones(NUM_ROWS), delta
    )
    assert tuple(losses.shape) == tuple(masked.shape) == (NUM_ROWS, 1)
    np.testing.assert_allclose(to_numpy(losses)[:, 0], expected_losses, rtol=1e-5, atol=1e-6)
    assert ops.convert_to_numpy(masked)[:, 0].tolist() == expected_masked.tolist()
    num_masked = expected_masked.sum()
    assert 0 < num_masked < NUM_ROWS if delta < 1 else num_masked == 0


def test_all_rows_masked_have_zero_loss_and_gradient():
    hidden, kernel, bias, _, weights = _inputs(scale=30.0)
    targets = (hidden @ kernel + bias).argmax(-1)

    def fused(hidden, kernel, bias):
        losses = linear_sparse_as_softmax_crossentropy(
            targets, hidden, kernel, 0.1, bias=bias, chunk_size=CHUNK
        )
        return ops.sum(ops.multiply(losses, weights))

    value, grads = value_and_grads(fused, (hidden, kernel, bias))
    assert value == 0.0
    for grad in grads:
        assert not grad.any()


def _count_logits(monkeypatch):
    """A list to which each chunk of logits computed appends its rows (on
    TensorFlow the chunk loop then runs uncompiled, a Python loop in eager
    mode: code that XLA compiles cannot call Python)."""
    calls = []
    logits = linear_as_softmax._logits
    if keras.backend.backend() == "tensorflow":
        for name in ("_forward_chunks", "_backward_chunks"):
            compiled = getattr(linear_as_softmax, name)
            monkeypatch.setattr(linear_as_softmax, name, compiled.python_function)

    def counted_logits(rows, *args):
        if keras.backend.backend() == "jax":
            import jax

            # Runs each time the compiled loop computes a chunk.
            jax.debug.callback(lambda: calls.append(rows.shape[0]))
        else:
            calls.append(rows.shape[0])
        return logits(rows, *args)

    monkeypatch.setattr(linear_as_softmax, "_logits", counted_logits)
    return calls


def test_backward_runs_only_the_chunks_of_rows_with_a_gradient(monkeypatch):
    """37 rows in chunks of 8: the forward pass computes 5 chunks of logits,
    the backward only the chunks that the rows neither masked nor ignored
    fill."""
    hidden, kernel, bias, targets, weights = _inputs()
    ignore_class = int(targets[3])
    calls = _count_logits(monkeypatch)

    def fused(hidden, kernel, bias):
        losses = linear_sparse_as_softmax_crossentropy(
            targets, hidden, kernel, 0.1, bias=bias, ignore_class=ignore_class,
            chunk_size=CHUNK,
        )
        return ops.sum(ops.multiply(losses, weights))

    value_and_grads(fused, (hidden, kernel, bias))
    _, _, _, masked = _reference(targets, hidden, kernel, bias, weights, 0.1)
    needed = int((~masked & (targets != ignore_class)).sum())
    needed_chunks = -(-needed // CHUNK)
    assert needed_chunks <= 3
    assert calls == [CHUNK] * (5 + needed_chunks)


def test_bfloat16_inputs_match_the_unfused_loss():
    hidden, kernel, bias, targets, weights = _inputs(seed=2, scale=1.0)
    hidden, kernel, bias = (ops.cast(x, "bfloat16") for x in (hidden, kernel, bias))

    def fused(hidden, kernel, bias):
        losses = linear_sparse_as_softmax_crossentropy(
            targets, hidden, kernel, 0.1, bias=bias, chunk_size=CHUNK
        )
        assert keras.backend.standardize_dtype(losses.dtype) == "float32"
        return ops.sum(ops.multiply(losses, weights))

    def unfused(hidden, kernel, bias):
        logits = ops.matmul(hidden, kernel) + bias
        losses = sparse_as_softmax_crossentropy(targets, logits, 0.1)
        return ops.sum(ops.multiply(losses, weights))

    value, grads = value_and_grads(fused, (hidden, kernel, bias))
    unfused_value, unfused_grads = value_and_grads(unfused, (hidden, kernel, bias))
    np.testing.assert_allclose(value, unfused_value, rtol=1e-2)
    for grad, unfused_grad in zip(grads, unfused_grads):
        scale = np.abs(unfused_grad).max()
        np.testing.assert_allclose(grad, unfused_grad, atol=2e-2 * scale)


def test_loss_class_reduces_with_sample_weights_and_keras_mask():
    hidden, kernel, bias, targets, weights = _inputs(seed=3)
    hidden = hidden.reshape(NUM_ROWS, 1, HIDDEN)
    targets = targets.reshape(NUM_ROWS, 1)
    ignore_class = int(targets[5, 0])
    fused = LinearSparseASSoftmaxCrossentropy(
        kernel, bias=bias, delta=0.1, ignore_class=ignore_class, chunk_size=CHUNK
    )
    unfused = SparseASSoftmaxCrossentropy(delta=0.1, ignore_class=ignore_class)
    logits = hidden @ kernel + bias
    for sample_weight in (None, weights):
        np.testing.assert_allclose(
            to_numpy(fused(targets, hidden, sample_weight)),
            to_numpy(unfused(targets, logits, sample_weight)),
            rtol=1e-5,
        )
    with fused.recording() as records:
        fused(targets, hidden)
    masked, counted, _ = records[0]
    assert not ops.convert_to_numpy(counted)[targets == ignore_class].any()
    assert ops.convert_to_numpy(masked).sum() > 0


def _loss_route_inputs():
    """Inputs whose first two chunks have no masked row (the `Loss` computes
    their gradient at once) and whose others are half masked (gathered)."""
    hidden, kernel, bias, targets, weights = _inputs(seed=5)
    predicted = (hidden.astype(np.float64) @ kernel + bias).argmax(-1)
    targets[: 2 * CHUNK] = (predicted[: 2 * CHUNK] + 1) % VOCABULARY
    return hidden, kernel, bias, targets, weights, int(targets[2 * CHUNK + 5])


@pytest.mark.parametrize("jit", [False, True], ids=["eager", "compiled"])
@pytest.mark.parametrize("reduction", ["sum_over_batch_size", "sum", "mean_with_sample_weight"])
@pytest.mark.parametrize("with_bias", [True, False], ids=["bias", "no_bias"])
def test_loss_class_gradients_match_reference(reduction, jit, with_bias):
    hidden, kernel, bias, targets, weights, ignore_class = _loss_route_inputs()
    if not with_bias:
        bias = None

    def fused(hidden, kernel, *bias):
        loss_fn = LinearSparseASSoftmaxCrossentropy(
            kernel, bias=bias[0] if bias else None, delta=0.1,
            ignore_class=ignore_class, chunk_size=CHUNK, reduction=reduction,
        )
        # An upstream gradient of 2.5 scales the gradients of the forward pass.
        return 2.5 * loss_fn(targets, hidden, weights)

    inputs = (hidden, kernel) + (() if bias is None else (bias,))
    value, grads = value_and_grads(fused, inputs, jit)
    counted = weights * (targets != ignore_class)
    divisor = {
        "sum": 1.0,
        "sum_over_batch_size": (targets != ignore_class).sum(),
        "mean_with_sample_weight": counted.sum(),
    }[reduction]
    expected_value, expected_grads, _, _ = _reference(
        targets, hidden, kernel, bias, 2.5 * counted / divisor, 0.1
    )
    np.testing.assert_allclose(value, expected_value, rtol=1e-5)
    for grad, expected in zip(grads, expected_grads):
        np.testing.assert_allclose(grad, expected, rtol=1e-4, atol=1e-5 * np.abs(expected).max())


@pytest.mark.parametrize("route", ["function", "Loss"])
@pytest.mark.parametrize("transposed", [False, True], ids=["hv", "vh"])
def test_kernel_gradient_accumulated_in_slices_matches_reference(
    monkeypatch, route, transposed
):
    """The kernel's gradient added a slice of classes at a time, in a loop,
    as on TensorFlow and JAX: 50 classes in slices of 16 (the last one 2),
    in the `keras.ops` form on every backend (PyTorch's chunk kernel adds
    the whole product in place)."""
    monkeypatch.setattr(linear_as_softmax, "kernel_gradient_slice", 16)
    monkeypatch.setattr(linear_as_softmax, "add_chunk_gradients", None)
    hidden, kernel, bias, targets, weights, ignore_class = _loss_route_inputs()
    stored_kernel = kernel.T.copy() if transposed else kernel

    def fused(hidden, kernel, bias):
        if route == "Loss":
            loss_fn = LinearSparseASSoftmaxCrossentropy(
                kernel, bias=bias, delta=0.1, ignore_class=ignore_class,
                transposed_kernel=transposed, chunk_size=CHUNK, reduction="sum",
            )
            return loss_fn(targets, hidden, weights)
        losses = linear_sparse_as_softmax_crossentropy(
            targets, hidden, kernel, 0.1, bias=bias, ignore_class=ignore_class,
            transposed_kernel=transposed, chunk_size=CHUNK,
        )
        return ops.sum(ops.multiply(losses, weights))

    value, grads = value_and_grads(fused, (hidden, stored_kernel, bias), jit=True)
    counted = weights * (targets != ignore_class)
    expected_value, expected_grads, _, _ = _reference(
        targets, hidden, kernel, bias, counted, 0.1
    )
    expected_grads = list(expected_grads)
    if transposed:
        expected_grads[1] = expected_grads[1].T
    np.testing.assert_allclose(value, expected_value, rtol=1e-5)
    for grad, expected in zip(grads, expected_grads):
        np.testing.assert_allclose(grad, expected, rtol=1e-4, atol=1e-5 * np.abs(expected).max())


@pytest.mark.skipif(keras.backend.backend() != "torch", reason="PyTorch's autograd graph")
def test_loss_class_gradient_once_per_call_on_torch():
    """On PyTorch the `Loss` scales its forward pass's gradients in place:
    a second backward pass through the same graph raises, naming the fix,
    instead of scaling them twice."""
    import torch

    hidden, kernel, bias, targets, weights, _ = _loss_route_inputs()
    hidden = torch.tensor(hidden, requires_grad=True)
    loss_fn = LinearSparseASSoftmaxCrossentropy(kernel, delta=0.1, chunk_size=CHUNK)
    loss = loss_fn(targets, hidden, weights)
    (first,) = torch.autograd.grad(loss, hidden, retain_graph=True)
    assert float(first.abs().sum()) > 0
    with pytest.raises(RuntimeError, match="call the loss again"):
        torch.autograd.grad(loss, hidden)
    (again,) = torch.autograd.grad(loss_fn(targets, hidden, weights), hidden)
    np.testing.assert_array_equal(to_numpy(again), to_numpy(first))


def test_loss_class_computes_dense_chunks_at_once(monkeypatch):
    """The forward pass computes every chunk's logits once; of the rows that
    need a gradient, those of chunks they mostly fill get it from those
    logits, and the others are gathered into chunks computed again."""
    hidden, kernel, bias, targets, weights, ignore_class = _loss_route_inputs()
    calls = _count_logits(monkeypatch)

    def fused(hidden, kernel, bias):
        loss_fn = LinearSparseASSoftmaxCrossentropy(
            kernel, bias=bias, delta=0.1, ignore_class=ignore_class, chunk_size=CHUNK
        )
        return loss_fn(targets, hidden, weights)

    value_and_grads(fused, (hidden, kernel, bias))
    _, _, _, masked = _reference(targets, hidden, kernel, bias, weights, 0.1)
    needs = np.pad(~masked & (targets != ignore_class), (0, 3))
    per_chunk = needs.reshape(-1, CHUNK).sum(-1)
    at_once = 3 * per_chunk > 2 * CHUNK
    gathered = per_chunk[~at_once].sum()
    assert at_once.sum() >= 2 and gathered > 0
    assert calls == [CHUNK] * (5 + -(-gathered // CHUNK))


@pytest.mark.skipif(keras.backend.backend() != "torch", reason="PyTorch's kernels")
@pytest.mark.parametrize("transposed", [False, True], ids=["hv", "vh"])
def test_torch_chunk_kernels_equal_the_keras_ops_form(monkeypatch, transposed):
    """PyTorch computes the chunks with kernels of its own, for speed only,
    eagerly and under `torch.compile`: the same values and gradients as the
    `keras.ops` form, for both routes; and the kernel's row statistics give
    the core's kept classes."""
    from keras_as_softmax.as_softmax import _single_label_core
    from keras_as_softmax.as_softmax import keep_cutoff
    import torch

    from keras_as_softmax.backend import torch as torch_backend

    hidden, kernel, bias, targets, weights, ignore_class = _loss_route_inputs()
    stored_kernel = kernel.T.copy() if transposed else kernel

    def both_routes(hidden, kernel, bias):
        losses = linear_sparse_as_softmax_crossentropy(
            targets, hidden, kernel, 0.1, bias=bias, ignore_class=ignore_class,
            transposed_kernel=transposed, chunk_size=CHUNK,
        )
        loss_fn = LinearSparseASSoftmaxCrossentropy(
            kernel, bias=bias, delta=0.1, ignore_class=ignore_class,
            transposed_kernel=transposed, chunk_size=CHUNK,
        )
        return ops.sum(ops.multiply(losses, weights)) + loss_fn(targets, hidden, weights)

    with_kernels = value_and_grads(both_routes, (hidden, stored_kernel, bias))
    # Under `torch.compile` the chunk loop runs eagerly, with the kernels.
    calls = []

    def counted_chunk_as_softmax(*args):
        calls.append(torch.compiler.is_compiling())
        return torch_backend.chunk_as_softmax(*args)

    monkeypatch.setattr(linear_as_softmax, "chunk_as_softmax", counted_chunk_as_softmax)
    compiled = value_and_grads(both_routes, (hidden, stored_kernel, bias), jit=True)
    assert calls and not any(calls)
    for name in ("add_chunk_gradients", "chunk_as_softmax", "chunk_logits"):
        monkeypatch.setattr(linear_as_softmax, name, None)
    without = value_and_grads(both_routes, (hidden, stored_kernel, bias))
    for routes in (with_kernels, compiled):
        np.testing.assert_allclose(routes[0], without[0], rtol=1e-6)
        for grad, expected in zip(routes[1], without[1]):
            np.testing.assert_allclose(
                grad, expected, rtol=1e-5, atol=1e-6 * np.abs(expected).max()
            )

    logits = ops.convert_to_tensor(hidden @ kernel + bias)
    target_index = ops.convert_to_tensor(targets[:, None], "int32")
    for delta in (0.0, 0.1, 0.5, 1.0):
        losses, masked, kept, kept_sum, statistics = torch_backend.chunk_as_softmax(
            target_index, logits, delta
        )
        core = _single_label_core(target_index, logits, delta, from_logits=True)
        np.testing.assert_array_equal(to_numpy(masked), to_numpy(core[1]))
        np.testing.assert_allclose(to_numpy(losses), to_numpy(core[0]), rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(
            to_numpy(kept / kept_sum), to_numpy(core[3] / core[4]), rtol=1e-5, atol=1e-7
        )
        log_sum, target_logit, threshold = statistics
        keep, _ = linear_as_softmax.kept_exps(
            logits,
            ops.exp(logits - log_sum),
            (log_sum, target_logit, keep_cutoff(log_sum, target_logit, threshold)),
        )
        np.testing.assert_array_equal(to_numpy(keep), to_numpy(core[2]))


def test_loss_class_leaves_out_keras_masked_positions():
    hidden, kernel, bias, targets, weights = _inputs(seed=4)
    mask = np.arange(NUM_ROWS) % 3 != 0
    fused = LinearSparseASSoftmaxCrossentropy(kernel, bias=bias, delta=0.1, chunk_size=CHUNK)
    unfused = SparseASSoftmaxCrossentropy(delta=0.1)
    masked_hidden = ops.convert_to_tensor(hidden)
    masked_logits = ops.convert_to_tensor(hidden @ kernel + bias)
    set_keras_mask(masked_hidden, ops.convert_to_tensor(mask))
    set_keras_mask(masked_logits, ops.convert_to_tensor(mask))
    expected = to_numpy(unfused(targets, masked_logits, weights))
    np.testing.assert_allclose(to_numpy(fused(targets, masked_hidden, weights)), expected, rtol=1e-5)
    _, _, losses, _ = _reference(targets, hidden, kernel, bias, weights, 0.1)
    np.testing.assert_allclose(expected, (weights * losses)[mask].sum() / mask.sum(), rtol=1e-5)


def test_loss_class_config_round_trips_without_the_projection():
    loss_fn = LinearSparseASSoftmaxCrossentropy(
        np.zeros((2, 3), "float32"), delta=0.2, ignore_class=-1, transposed_kernel=True,
        chunk_size=64,
    )
    config = loss_fn.get_config()
    assert config["delta"] == 0.2 and config["chunk_size"] == 64
    assert "kernel" not in config
    restored = LinearSparseASSoftmaxCrossentropy.from_config(config)
    assert restored.transposed_kernel and restored.kernel is None
    with pytest.raises(ValueError, match="has no `kernel`"):
        restored([0], np.zeros((1, 3), "float32"))


@pytest.mark.parametrize(
    "y_true, hidden_shape, kernel_shape, bias_shape, match",
    [
        ([0, 1], (2, 4), (5, 3), None, r"`kernel` must be \(H, V\) with H = .* 4"),
        ([0, 1], (2, 4), (3, 4), None, "transposed_kernel=True"),
        ([0, 1, 2], (2, 4), (4, 3), None, r"one class id per row of `hidden`"),
        ([0, 1], (2, 4), (4, 3), (4,), r"`bias` must be `\(V,\)` = \(3,\)"),
        ([0, 3], (2, 4), (4, 3), None, r"class id 3, outside \[0, 3\) for `kernel`"),
        ([0, 1], (4,), (4, 3), None, r"`hidden` must be `\(..., H\)`"),
    ],
)
def test_bad_input_raises_naming_the_argument(
    y_true, hidden_shape, kernel_shape, bias_shape, match
):
    bias = None if bias_shape is None else np.zeros(bias_shape, "float32")
    with pytest.raises(ValueError, match=match):
        linear_sparse_as_softmax_crossentropy(
            y_true, np.zeros(hidden_shape, "float32"),
            np.zeros(kernel_shape, "float32"), bias=bias,
        )
