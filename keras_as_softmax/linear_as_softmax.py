"""AS-Softmax fused with the output projection, for large vocabularies.

A language model's logits `hidden @ kernel + bias`, `(tokens, V)`, take more
memory than the model once the vocabulary is large (8 GiB of temporaries for
the gradient at 8192 tokens x 128k classes). The fused loss never holds them
whole: it computes the logits of a chunk of rows at a time, applies the
AS-Softmax core (`keras_as_softmax.as_softmax._single_label_core`) to them,
and keeps two numbers per row. Its gradient recomputes each chunk's logits.
A row that AS-Softmax masks (or that is ignored) has exactly zero gradient,
so the backward pass leaves it out: it gathers the rows that need a gradient
and runs only as many chunks as they fill. Written in `keras.ops`, the same
on every backend, compiled or eager.
"""

import keras
import numpy as np
from keras import ops

from keras_as_softmax.as_softmax import ASLoss
from keras_as_softmax.as_softmax import _cast_delta
from keras_as_softmax.as_softmax import _sparse_losses_and_masked
from keras_as_softmax.as_softmax import flag_class_ids
from keras_as_softmax.as_softmax import _single_label_core
from keras_as_softmax.backend import sequential_while_loop
from keras_as_softmax.input_checks import class_id_flags
from keras_as_softmax.input_checks import validate_delta
from keras_as_softmax.loss_wrapper import and_masks

# The default chunk holds about this many logits (64 MiB of float32).
CHUNK_ELEMENTS = 1 << 24


def default_chunk_size(num_classes):
    """Rows per chunk for a vocabulary of `num_classes`: a power of two
    between 16 and 4096 whose chunk of logits holds about `CHUNK_ELEMENTS`.

    Example:

    >>> default_chunk_size(32768), default_chunk_size(131072), default_chunk_size(10)
    (512, 128, 4096)
    """
    rows = CHUNK_ELEMENTS // max(int(num_classes), 1)
    return int(min(max(2 ** int(np.log2(max(rows, 1))), 16), 4096))


def linear_sparse_as_softmax_crossentropy(
    y_true,
    hidden,
    kernel,
    delta=0.1,
    bias=None,
    ignore_class=None,
    transposed_kernel=False,
    chunk_size=None,
):
    """AS-Softmax cross-entropy of the logits `hidden @ kernel + bias`,
    without the logits tensor.

    The per-position losses equal `sparse_as_softmax_crossentropy(y_true,
    hidden @ kernel + bias, delta)`, and so do their gradients with respect
    to `hidden`, `kernel` and `bias`; no `(positions, classes)` buffer
    exists in the forward or the backward pass. `delta=1` is Keras's sparse
    softmax cross-entropy, computed the same memory-lean way.

    Args:
        y_true: Class ids, shape `hidden.shape[:-1]`.
        hidden: The last hidden states, `(..., H)`, float32, float16 or
            bfloat16 (logits are computed in their dtype, then float32).
        kernel: The output projection, `(H, V)`; `(V, H)` with
            `transposed_kernel=True` (a tied embedding matrix).
        delta: Drop margin in `[0, 1]`; `1.0` is plain softmax cross-entropy.
        bias: Optional `(V,)` bias of the projection.
        ignore_class: Optional class id (e.g. padding) whose positions get
            loss 0, no gradient, and a Keras mask that leaves them out of a
            `Loss`'s mean.
        transposed_kernel: Whether `kernel` is `(V, H)`.
        chunk_size: Rows per chunk; by default `default_chunk_size(V)`.

    Returns:
        The per-position losses, shape of `y_true`, float32 for float16 or
        bfloat16 inputs, else the dtype of `hidden`.

    Example:

    >>> hidden = np.array([[1.0, 0.0], [0.0, 1.0]], "float32")
    >>> kernel = np.array([[1.2, 1.5, 1.0, -0.35], [2.5, 3.5, 0.4, 0.3]], "float32")
    >>> loss = linear_sparse_as_softmax_crossentropy([1, 2], hidden, kernel, delta=0.1)
    >>> np.round(keras.ops.convert_to_numpy(loss), 4)  # The first is masked.
    array([0.    , 3.4741], dtype=float32)
    """
    return linear_losses_and_masked(
        y_true,
        hidden,
        delta,
        kernel=kernel,
        bias=bias,
        ignore_class=ignore_class,
        transposed_kernel=transposed_kernel,
        chunk_size=chunk_size,
    )[0]


def linear_losses_and_masked(
    y_true,
    hidden,
    delta,
    kernel,
    bias=None,
    ignore_class=None,
    transposed_kernel=False,
    chunk_size=None,
):
    """`(losses, masked)` of `linear_sparse_as_softmax_crossentropy`: the
    losses (with a Keras mask where `ignore_class` leaves positions out)
    and, from the same computation, where the loss masks a position."""
    delta = validate_delta(delta)
    hidden, kernel, bias = _check_projection(hidden, kernel, bias, transposed_kernel)
    num_classes = kernel.shape[0] if transposed_kernel else kernel.shape[1]
    targets = _check_targets(y_true, hidden)
    targets, valid, in_range = class_id_flags(
        targets, num_classes, ignore_class, predictions="`kernel`"
    )
    counted = and_masks(valid, in_range)
    positions = ops.shape(targets)
    losses, masked = _chunked_losses(
        ops.reshape(hidden, (-1, hidden.shape[-1])),
        kernel,
        bias,
        ops.reshape(targets, (-1,)),
        None if counted is None else ops.reshape(counted, (-1,)),
        delta,
        chunk_size or default_chunk_size(num_classes),
        transposed_kernel,
    )
    return flag_class_ids(
        ops.reshape(losses, positions), ops.reshape(masked, positions), valid, in_range
    )


@keras.saving.register_keras_serializable(package="keras_as_softmax")
class LinearSparseASSoftmaxCrossentropy(ASLoss):
    """AS-Softmax cross-entropy fused with an output projection: `y_pred`
    holds hidden states, and the loss projects them with `kernel` (and
    `bias`) chunk by chunk, as `linear_sparse_as_softmax_crossentropy`.
    Logits (`y_pred` as wide as the vocabulary, which a model converted by
    `fuse_output_projection` gives outside training) take the unfused
    `sparse_as_softmax_crossentropy`.

    The projection is read when the loss is called: pass the layer's
    variables (e.g. `embedding.embeddings` with `transposed_kernel=True`),
    or set `loss.kernel` later. They are not part of the config: a loaded
    loss needs them set again (`fuse_output_projection` does this for a
    model).

    Args:
        kernel: The `(H, V)` kernel, or `(V, H)` with `transposed_kernel`.
        bias: Optional `(V,)` bias.
        delta, ignore_class: As for `SparseASSoftmaxCrossentropy`.
        transposed_kernel, chunk_size: As for
            `linear_sparse_as_softmax_crossentropy`.
        reduction, name, dtype: As in `keras.losses.Loss`.

    Example:

    >>> kernel = np.array([[1.2, 1.5, 1.0, -0.35], [2.5, 3.5, 0.4, 0.3]], "float32")
    >>> loss_fn = LinearSparseASSoftmaxCrossentropy(kernel, delta=0.1)
    >>> loss = loss_fn([1, 2], np.eye(2, dtype="float32"))
    >>> round(float(loss), 4)
    1.7371
    """

    def __init__(
        self,
        kernel=None,
        bias=None,
        delta=0.1,
        ignore_class=None,
        transposed_kernel=False,
        chunk_size=None,
        reduction="sum_over_batch_size",
        name="linear_sparse_as_softmax_crossentropy",
        dtype=None,
    ):
        super().__init__(
            linear_losses_and_masked,
            delta,
            reduction=reduction,
            name=name,
            dtype=dtype,
            ignore_class=ignore_class,
            transposed_kernel=transposed_kernel,
            chunk_size=chunk_size,
        )
        self.kernel = kernel
        self.bias = bias

    def losses_and_masked(self, y_true, y_pred):
        if self.kernel is None:
            raise ValueError(
                f"`{self.name}` has no `kernel`: set `loss.kernel` to the "
                "output projection's kernel (and `loss.bias`) before calling "
                "it, or convert the model with `fuse_output_projection`."
            )
        num_classes = self.kernel.shape[0 if self.transposed_kernel else 1]
        hidden_size = self.kernel.shape[1 if self.transposed_kernel else 0]
        if y_pred.shape[-1] == num_classes and num_classes != hidden_size:
            # Logits, as a fused model gives them outside training.
            return _sparse_losses_and_masked(
                y_true, y_pred, self.current_delta, ignore_class=self.ignore_class
            )
        return self.fn(
            y_true,
            y_pred,
            self.current_delta,
            kernel=self.kernel,
            bias=self.bias,
            **self._fn_arguments(),
        )


def _check_projection(hidden, kernel, bias, transposed_kernel):
    """Checks the shapes and dtypes; returns the three as tensors."""
    hidden = ops.convert_to_tensor(hidden)
    kernel = ops.convert_to_tensor(kernel)
    for name, tensor in (("hidden", hidden), ("kernel", kernel)):
        dtype = keras.backend.standardize_dtype(tensor.dtype)
        if "float" not in dtype:
            raise TypeError(f"`{name}` must be floating point; received dtype {dtype}.")
    if len(hidden.shape) < 2:
        raise ValueError(
            "`hidden` must be `(..., H)`, one row of hidden states per "
            f"position; received hidden.shape={tuple(hidden.shape)}."
        )
    layout = "(V, H)" if transposed_kernel else "(H, V)"
    if len(kernel.shape) != 2:
        raise ValueError(
            f"`kernel` must be {layout}; received kernel.shape={tuple(kernel.shape)}."
        )
    kernel_hidden = kernel.shape[1] if transposed_kernel else kernel.shape[0]
    if kernel_hidden != hidden.shape[-1]:
        other = "False" if transposed_kernel else "True"
        raise ValueError(
            f"`kernel` must be {layout} with H = hidden.shape[-1] = "
            f"{hidden.shape[-1]}; received kernel.shape={tuple(kernel.shape)}. "
            f"For a {'(H, V)' if transposed_kernel else '(V, H)'} kernel pass "
            f"`transposed_kernel={other}`."
        )
    if bias is not None:
        bias = ops.convert_to_tensor(bias)
        num_classes = kernel.shape[0] if transposed_kernel else kernel.shape[1]
        if tuple(bias.shape) != (num_classes,):
            raise ValueError(
                f"`bias` must be `(V,)` = ({num_classes},); received "
                f"bias.shape={tuple(bias.shape)}."
            )
    return hidden, ops.cast(kernel, hidden.dtype), bias


def _check_targets(y_true, hidden):
    """`y_true` as a tensor of `hidden.shape[:-1]` (a trailing 1 squeezed)."""
    targets = ops.convert_to_tensor(y_true)
    dtype = keras.backend.standardize_dtype(targets.dtype)
    if "int" not in dtype and "float" not in dtype:
        raise TypeError(
            "`y_true` must hold class ids as integers (or floats that are "
            f"whole numbers); received dtype {dtype}."
        )
    expected = tuple(hidden.shape[:-1])
    if len(targets.shape) == len(expected) + 1 and targets.shape[-1] == 1:
        targets = ops.squeeze(targets, axis=-1)
    if len(targets.shape) != len(expected) or not all(
        a is None or b is None or a == b for a, b in zip(targets.shape, expected)
    ):
        raise ValueError(
            "`y_true` must hold one class id per row of `hidden`, shape "
            f"hidden.shape[:-1] = {expected}; received "
            f"y_true.shape={tuple(targets.shape)}."
        )
    return targets


def _logits(rows, kernel, bias, transposed_kernel):
    """The float32 logits of some rows of hidden states."""
    equation = "rh,vh->rv" if transposed_kernel else "rh,hv->rv"
    logits = ops.einsum(equation, rows, kernel)
    if bias is not None:
        logits = logits + ops.cast(bias, logits.dtype)
    return ops.cast(logits, _statistics_dtype(logits))


def _statistics_dtype(x):
    """float64 for float64 inputs, else float32."""
    dtype = keras.backend.standardize_dtype(x.dtype)
    return "float64" if dtype == "float64" else "float32"


def _pad_rows(x, num_rows, value=0):
    """`x` with rows of `value` appended up to `num_rows` rows."""
    padding = num_rows - ops.shape(x)[0]
    filler = ops.full((padding, *x.shape[1:]), value, dtype=x.dtype)
    return ops.concatenate([x, filler], axis=0)


def _chunked_losses(
    hidden, kernel, bias, targets, counted, delta, chunk_size, transposed_kernel
):
    """Per row of `hidden` `(N, H)`: `(losses, masked)`, with the gradient.

    The forward pass runs every chunk of `chunk_size` rows; the backward
    pass only the chunks that the rows with a gradient fill (rows neither
    masked nor left out by `counted`), gathered first.
    """
    num_rows = ops.shape(hidden)[0]
    num_chunks = (num_rows + chunk_size - 1) // chunk_size
    padded_rows = num_chunks * chunk_size
    rows_hidden = _pad_rows(ops.stop_gradient(hidden), padded_rows)
    rows_targets = _pad_rows(targets, padded_rows)
    kernel_value = ops.stop_gradient(kernel)
    bias_value = None if bias is None else ops.stop_gradient(bias)
    float_dtype = _statistics_dtype(hidden)
    delta = _cast_delta(delta, ops.zeros((), float_dtype))

    def chunk_statistics(start):
        rows = ops.slice(rows_hidden, (start, 0), (chunk_size, hidden.shape[-1]))
        target_index = ops.expand_dims(
            ops.slice(rows_targets, (start,), (chunk_size,)), -1
        )
        logits = _logits(rows, kernel_value, bias_value, transposed_kernel)
        return rows, target_index, _single_label_core(
            target_index, logits, delta, from_logits=True
        )

    def forward_chunk(index, losses, masked):
        start = index * chunk_size
        _, _, (chunk_losses, chunk_masked, _, _, _) = chunk_statistics(start)
        losses = ops.slice_update(losses, (start,), chunk_losses)
        masked = ops.slice_update(masked, (start,), chunk_masked)
        return index + 1, losses, masked

    _, losses, masked = sequential_while_loop(
        lambda index, *_: index < num_chunks,
        forward_chunk,
        (
            ops.convert_to_tensor(0, "int32"),
            ops.zeros((padded_rows,), float_dtype),
            ops.zeros((padded_rows,), "bool"),
        ),
    )
    needs = ops.logical_not(masked)
    if counted is not None:
        needs = ops.logical_and(needs, _pad_rows(counted, padded_rows, False))
    # Rows with a gradient first: chunk k of `order` holds rows to backprop.
    order = ops.cast(ops.argsort(ops.cast(ops.logical_not(needs), "int32")), "int32")
    num_needed_chunks = (
        ops.sum(ops.cast(needs, "int32")) + chunk_size - 1
    ) // chunk_size
    classes = ops.arange(kernel.shape[0] if transposed_kernel else kernel.shape[1])

    @ops.custom_gradient
    def with_gradient(hidden, kernel, *maybe_bias):
        def gradient(*args, upstream=None):
            if upstream is None:
                (upstream,) = args
            weights = ops.where(
                needs, _pad_rows(ops.cast(upstream, float_dtype), padded_rows), 0.0
            )
            # The row order keeps the `(rows, classes)` gradient of each
            # chunk in the order of `order`; row gradients are scattered back.
            sorted_hidden = ops.take(rows_hidden, order, axis=0)
            sorted_targets = ops.take(rows_targets, order, axis=0)
            sorted_weights = ops.take(weights, order, axis=0)

            def backward_chunk(index, grad_hidden, grad_kernel, grad_bias):
                start = index * chunk_size
                rows = ops.slice(sorted_hidden, (start, 0), (chunk_size, hidden.shape[-1]))
                target_index = ops.expand_dims(
                    ops.slice(sorted_targets, (start,), (chunk_size,)), -1
                )
                upstream_rows = ops.expand_dims(
                    ops.slice(sorted_weights, (start,), (chunk_size,)), -1
                )
                logits = _logits(rows, kernel_value, bias_value, transposed_kernel)
                _, _, _, kept_probs, kept_sum = _single_label_core(
                    target_index, logits, delta, from_logits=True
                )
                grad_logits = kept_probs * (upstream_rows / kept_sum)
                grad_logits = ops.where(
                    ops.equal(classes, target_index),
                    grad_logits - upstream_rows,
                    grad_logits,
                )
                grad_rows = ops.cast(grad_logits, rows.dtype)
                if transposed_kernel:
                    chunk_hidden = ops.matmul(grad_rows, kernel_value)
                    chunk_kernel = ops.einsum("rv,rh->vh", grad_rows, rows)
                else:
                    chunk_hidden = ops.einsum("rv,hv->rh", grad_rows, kernel_value)
                    chunk_kernel = ops.einsum("rh,rv->hv", rows, grad_rows)
                grad_hidden = ops.slice_update(
                    grad_hidden, (start, 0), ops.cast(chunk_hidden, float_dtype)
                )
                grad_kernel = grad_kernel + ops.cast(chunk_kernel, float_dtype)
                grad_bias = grad_bias + ops.sum(grad_logits, axis=0)
                return index + 1, grad_hidden, grad_kernel, grad_bias

            _, sorted_grad_hidden, grad_kernel, grad_bias = sequential_while_loop(
                lambda index, *_: index < num_needed_chunks,
                backward_chunk,
                (
                    ops.convert_to_tensor(0, "int32"),
                    ops.zeros((padded_rows, hidden.shape[-1]), float_dtype),
                    ops.zeros(kernel.shape, float_dtype),
                    ops.zeros(classes.shape, float_dtype),
                ),
            )
            grad_hidden = ops.scatter(
                ops.expand_dims(order, -1), sorted_grad_hidden, (padded_rows, hidden.shape[-1])
            )[:num_rows]
            grads = (
                ops.cast(grad_hidden, hidden.dtype),
                ops.cast(grad_kernel, kernel.dtype),
            )
            if maybe_bias:
                grads += (ops.cast(grad_bias, maybe_bias[0].dtype),)
            return grads

        return losses[:num_rows], gradient

    projection = (hidden, kernel) + (() if bias is None else (bias,))
    return with_gradient(*projection), masked[:num_rows]
