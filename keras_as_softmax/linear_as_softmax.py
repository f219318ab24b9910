"""AS-Softmax fused with the output projection, for large vocabularies.

A language model's logits `hidden @ kernel + bias`, `(tokens, V)`, take more
memory than the model once the vocabulary is large (8 GiB of temporaries for
the gradient at 8192 tokens x 128k classes). The fused loss never holds them
whole: it computes the logits of a chunk of rows at a time, applies the
AS-Softmax core (`keras_as_softmax.as_softmax._single_label_core`) to them,
and keeps a few numbers per row. Its gradient recomputes each chunk's logits
and, from those numbers, the classes the forward pass kept.
A row that AS-Softmax masks (or that is ignored) has exactly zero gradient,
so the backward pass leaves it out: it gathers the rows that need a gradient
and runs only as many chunks as they fill. Written in `keras.ops`, the same
on every backend, compiled or eager. The passes over the chunks run as
`keras_as_softmax.backend.compile_chunk_loop` says: compiled with XLA on
TensorFlow, also in graph mode and eagerly (the graph executor would run
each chunk's elementwise work one operation at a time); within the
caller's `jit` on JAX; eagerly on PyTorch, also under `torch.compile`,
with chunk kernels of its own (`keras_as_softmax.backend.torch`), for
speed only.
"""

import keras
import numpy as np
from keras import ops

from keras_as_softmax._keras_private import get_keras_mask
from keras_as_softmax._keras_private import set_keras_mask
from keras_as_softmax.as_softmax import ASLoss
from keras_as_softmax.as_softmax import _cast_delta
from keras_as_softmax.as_softmax import _sparse_losses_and_masked
from keras_as_softmax.as_softmax import flag_class_ids
from keras_as_softmax.as_softmax import keep_cutoff
from keras_as_softmax.as_softmax import kept_exps
from keras_as_softmax.as_softmax import _single_label_core
from keras_as_softmax.backend import add_chunk_gradients
from keras_as_softmax.backend import chunk_as_softmax
from keras_as_softmax.backend import chunk_logits
from keras_as_softmax.backend import compile_chunk_loop
from keras_as_softmax.backend import eager_under_torch_compile
from keras_as_softmax.backend import kernel_gradient_slice
from keras_as_softmax.backend import scale_held_gradients
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
    reduction_weights=None,
):
    """`(losses, masked)` of `linear_sparse_as_softmax_crossentropy`: the
    losses (with a Keras mask where `ignore_class` leaves positions out)
    and, from the same computation, where the loss masks a position.

    With `reduction_weights`, a function from the losses' Keras mask (None
    without `ignore_class`) to a weight per position, it returns `(total,
    losses, masked)`: `total` is the weighted sum of the losses, with the
    gradient, which the forward pass computes (a `Loss` knows its weights
    before the loss: this saves a product), and `losses` have none.
    """
    delta = validate_delta(delta)
    hidden, kernel, bias = _check_projection(hidden, kernel, bias, transposed_kernel)
    num_classes = kernel.shape[0] if transposed_kernel else kernel.shape[1]
    targets = _check_targets(y_true, hidden)
    targets, valid, in_range = class_id_flags(
        targets, num_classes, ignore_class, predictions="`kernel`"
    )
    counted = and_masks(valid, in_range)
    positions = ops.shape(targets)
    coefficients = None
    if reduction_weights is not None:
        # Zeros as the losses will be: their shape, dtype and Keras mask.
        template = ops.zeros(positions, _statistics_dtype(hidden))
        if valid is not None:
            set_keras_mask(template, valid)
        coefficients = ops.reshape(reduction_weights(template), (-1,))
    outputs = _chunked_losses(
        ops.reshape(hidden, (-1, hidden.shape[-1])),
        kernel,
        bias,
        ops.reshape(targets, (-1,)),
        None if counted is None else ops.reshape(counted, (-1,)),
        delta,
        chunk_size or default_chunk_size(num_classes),
        kernel_gradient_slice,
        transposed_kernel,
        coefficients,
    )
    losses, masked = flag_class_ids(
        ops.reshape(outputs[-2], positions),
        ops.reshape(outputs[-1], positions),
        valid,
        in_range,
    )
    if reduction_weights is None:
        return losses, masked
    total = outputs[0]
    if in_range is not None:
        # NaN where the losses are NaN, as the unfused loss's mean is.
        out_of_range = ops.logical_not(in_range)
        if valid is not None:
            out_of_range = ops.logical_and(out_of_range, valid)
        total = ops.where(ops.any(out_of_range), np.nan, total)
    return total, losses, masked


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
        if not self._projects(y_pred):
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

    def __call__(self, y_true, y_pred, sample_weight=None):
        if self.reduction in (None, "none") or not self._projects(y_pred):
            return super().__call__(y_true, y_pred, sample_weight)
        # The loss knows its reduction's weights first, and the fused loss
        # computes the gradient of their sum in its forward pass.
        in_mask = get_keras_mask(y_pred)
        with keras.name_scope(self.name):
            y_pred = ops.convert_to_tensor(y_pred, dtype=self.dtype)
            reduced_with = []

            def reduction_weights(losses):
                reduced_with[:] = self._mask_and_weights(in_mask, losses, sample_weight)
                return self._reduction_weights(losses, *reduced_with)

            total, losses, masked = self.fn(
                y_true,
                y_pred,
                self.current_delta,
                kernel=self.kernel,
                bias=self.bias,
                reduction_weights=reduction_weights,
                **self._fn_arguments(),
            )
            self._seen(masked, losses, *reduced_with)
            return ops.cast(total, self.dtype)

    def _projects(self, y_pred):
        """Whether `y_pred` holds hidden states (not logits) to project."""
        if self.kernel is None:
            raise ValueError(
                f"`{self.name}` has no `kernel`: set `loss.kernel` to the "
                "output projection's kernel (and `loss.bias`) before calling "
                "it, or convert the model with `fuse_output_projection`."
            )
        num_classes = self.kernel.shape[0 if self.transposed_kernel else 1]
        hidden_size = self.kernel.shape[1 if self.transposed_kernel else 0]
        return y_pred.shape[-1] != num_classes or num_classes == hidden_size


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
    logits = None if chunk_logits is None else chunk_logits(rows, kernel, bias, transposed_kernel)
    if logits is None:
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


@eager_under_torch_compile
def _chunked_losses(
    hidden,
    kernel,
    bias,
    targets,
    counted,
    delta,
    chunk_size,
    slice_size,
    transposed_kernel,
    coefficients=None,
):
    """Per row of `hidden` `(N, H)`: `(losses, masked)`, with the gradient.

    The forward pass runs every chunk of `chunk_size` rows; the backward
    pass only the chunks that the rows with a gradient fill (rows neither
    masked nor left out by `counted`), gathered first. The kernel's
    gradient is added `slice_size` classes at a time (None: all at once).

    With `coefficients` `(N,)`, it returns `(total, losses, masked)`: `total`
    is `sum(coefficients * losses)`, with the gradient, which the forward
    pass computes: a chunk whose rows mostly need a gradient gets it from
    the logits at hand (three products per chunk, where the backward pass
    needs four), and the rows of the other chunks are gathered as above.

    The passes over the chunks run as the backend compiles them
    (`compile_chunk_loop`); the gradients are joined to the inputs here,
    outside that code, so that scaling them by the upstream gradient
    needs no copy where the backend can avoid one.
    """
    float_dtype = _statistics_dtype(hidden)
    delta = _cast_delta(delta, ops.zeros((), float_dtype))
    projected = tuple(
        None if x is None else ops.stop_gradient(x) for x in (hidden, kernel, bias)
    )
    settings = (chunk_size, slice_size, transposed_kernel)
    inputs = (hidden, kernel) + (() if bias is None else (bias,))

    def returned(grads):
        return tuple(ops.cast(grad, x.dtype) for grad, x in zip(grads, inputs))

    if coefficients is not None:
        coefficients = ops.cast(coefficients, float_dtype)
        losses, masked, held = _forward_chunks(
            *projected, targets, counted, delta, coefficients, *settings
        )
        held = list(held)

        @ops.custom_gradient
        def with_total_gradient(*inputs):
            def gradient(*args, upstream=None):
                if upstream is None:
                    (upstream,) = args
                upstream = ops.cast(upstream, float_dtype)
                if scale_held_gradients is not None:
                    return returned(scale_held_gradients(held, upstream))
                return returned(tuple(grad * upstream for grad in held))

            return ops.sum(coefficients * losses), gradient

        return with_total_gradient(*inputs), losses, masked

    losses, masked, statistics = _forward_chunks(
        *projected, targets, counted, delta, None, *settings
    )
    needs = ops.logical_not(masked)
    if counted is not None:
        needs = ops.logical_and(needs, counted)

    @ops.custom_gradient
    def with_gradient(*inputs):
        def gradient(*args, upstream=None):
            if upstream is None:
                (upstream,) = args
            upstream = ops.cast(upstream, float_dtype)
            return returned(
                _backward_chunks(
                    *projected, targets, delta, statistics, needs, upstream, *settings
                )
            )

        return losses, gradient

    return with_gradient(*inputs), masked


@compile_chunk_loop
def _forward_chunks(
    hidden, kernel, bias, targets, counted, delta, coefficients, chunk_size,
    slice_size, transposed_kernel,
):
    """The forward pass of `_chunked_losses` over every chunk: per row,
    `(losses, masked, statistics)`; with `coefficients`, `(losses, masked,
    gradients)`, the gradients `(hidden, kernel)` of `sum(coefficients *
    losses)`, and the bias's with a bias."""
    projection = _Projection(
        hidden, targets, kernel, bias, delta, chunk_size, slice_size, transposed_kernel
    )
    padded_rows = projection.padded_rows
    float_dtype = projection.dtype
    counted = None if counted is None else projection.pad(counted, False)
    if coefficients is not None:
        coefficients = projection.pad(coefficients)

    def forward_chunk(index, losses, masked, statistics, *needs_and_gradients):
        start = index * chunk_size
        rows, target_index = projection.chunk(projection.hidden, projection.targets, start)
        logits = projection.logits(rows)
        chunk_losses, chunk_masked, kept, kept_sum, chunk_statistics = (
            projection.kept_classes(target_index, logits)
        )
        losses = ops.slice_update(losses, (start,), chunk_losses)
        masked = ops.slice_update(masked, (start,), chunk_masked)
        statistics = ops.slice_update(
            statistics, (start, 0), ops.concatenate(chunk_statistics, -1)
        )
        if coefficients is None:
            return index + 1, losses, masked, statistics
        needs, gradients = needs_and_gradients
        chunk_needs = ops.logical_not(chunk_masked)
        if counted is not None:
            chunk_needs = ops.logical_and(
                chunk_needs, ops.slice(counted, (start,), (chunk_size,))
            )
        # Now, two products over the chunk; later, three over its rows.
        now = 3 * ops.sum(ops.cast(chunk_needs, "int32")) > 2 * chunk_size
        weights = ops.where(
            chunk_needs, ops.slice(coefficients, (start,), (chunk_size,)), 0.0
        )
        gradients = ops.cond(
            now,
            lambda: projection.add_gradients(
                gradients, start, rows, target_index, kept, kept_sum, weights
            ),
            lambda: gradients,
        )
        needs = ops.slice_update(
            needs, (start,), ops.logical_and(chunk_needs, ops.logical_not(now))
        )
        return index + 1, losses, masked, statistics, needs, gradients

    loop_vars = (
        ops.convert_to_tensor(0, "int32"),
        ops.zeros((padded_rows,), float_dtype),
        ops.zeros((padded_rows,), "bool"),
        ops.zeros((padded_rows, 3), float_dtype),
    )
    if coefficients is not None:
        # The rows left for later, and the gradients so far.
        loop_vars += (ops.zeros((padded_rows,), "bool"), projection.zero_gradients())
    _, losses, masked, statistics, *needs_and_gradients = sequential_while_loop(
        lambda index, *_: index < padded_rows // chunk_size, forward_chunk, loop_vars
    )
    num_rows = projection.num_rows
    if coefficients is None:
        return losses[:num_rows], masked[:num_rows], statistics[:num_rows]
    needs, gradients = needs_and_gradients
    gradients = projection.gathered_gradients(gradients, statistics, needs, coefficients)
    return losses[:num_rows], masked[:num_rows], gradients


@compile_chunk_loop
def _backward_chunks(
    hidden, kernel, bias, targets, delta, statistics, needs, weights, chunk_size,
    slice_size, transposed_kernel,
):
    """The backward pass of `_chunked_losses`: the gradients `(hidden,
    kernel)` (and the bias's, with a bias) of `sum(weights * losses)` over
    the rows where `needs`, from the forward pass's `statistics`."""
    projection = _Projection(
        hidden, targets, kernel, bias, delta, chunk_size, slice_size, transposed_kernel
    )
    return projection.gathered_gradients(
        projection.zero_gradients(),
        projection.pad(statistics),
        projection.pad(needs, False),
        projection.pad(weights),
    )


class _Projection:
    """The padded rows, targets and projection of `_chunked_losses`, and the
    gradient computations that its forward and backward passes share."""

    def __init__(
        self, hidden, targets, kernel, bias, delta, chunk_size, slice_size,
        transposed_kernel,
    ):
        self.num_rows = ops.shape(hidden)[0]
        num_chunks = (self.num_rows + chunk_size - 1) // chunk_size
        self.padded_rows = num_chunks * chunk_size
        self.hidden = _pad_rows(hidden, self.padded_rows)
        self.targets = _pad_rows(targets, self.padded_rows)
        self.kernel = kernel
        self.bias = bias
        self.delta = delta
        self.chunk_size = chunk_size
        self.transposed_kernel = transposed_kernel
        self.dtype = _statistics_dtype(hidden)
        num_classes = kernel.shape[0] if transposed_kernel else kernel.shape[1]
        self.classes = ops.arange(num_classes)
        # The kernel's gradient is added a slice of classes at a time (one
        # where the backend adds a chunk's whole product in place).
        self.slice_size = min(slice_size or num_classes, num_classes)
        self.class_slices = tuple(
            (start, min(self.slice_size, num_classes - start))
            for start in range(0, num_classes, self.slice_size)
        )
        self.class_axis = 0 if transposed_kernel else 1

    def pad(self, x, value=0):
        """Rows of `x` `(N, ...)`, in the dtype of the statistics if
        floating point, with rows of `value` up to the padded rows."""
        if "float" in keras.backend.standardize_dtype(x.dtype):
            x = ops.cast(x, self.dtype)
        return _pad_rows(x, self.padded_rows, value)

    def chunk(self, hidden, targets, start):
        """The chunk of rows from `start`, and their targets, `(rows, 1)`."""
        rows = ops.slice(hidden, (start, 0), (self.chunk_size, hidden.shape[-1]))
        targets = ops.slice(targets, (start,), (self.chunk_size,))
        return rows, ops.expand_dims(targets, -1)

    def logits(self, rows):
        return _logits(rows, self.kernel, self.bias, self.transposed_kernel)

    def kept_classes(self, target_index, logits):
        """`(losses, masked, kept, kept_sum, statistics)` of a chunk's logits,
        as `_single_label_core` gives them (a kernel of its own on eager
        PyTorch)."""
        if chunk_as_softmax is not None:
            fused = chunk_as_softmax(target_index, logits, self.delta)
            if fused is not None:
                *outputs, (log_sum, target_logit, threshold) = fused
                cutoff = keep_cutoff(log_sum, target_logit, threshold)
                return (*outputs, (log_sum, target_logit, cutoff))
        losses, masked, _, kept, kept_sum, statistics = _single_label_core(
            target_index, logits, self.delta, from_logits=True
        )
        return losses, masked, kept, kept_sum, statistics

    def kept_again(self, target_index, logits, statistics):
        """`(kept, kept_sum)` of rows whose logits are computed again: the
        classes kept found from the forward pass's `statistics` (on eager
        PyTorch, by its kernel from `delta` again), their sum taken again,
        so that each row's gradient sums to zero over the classes."""
        if chunk_as_softmax is not None:
            fused = chunk_as_softmax(target_index, logits, self.delta)
            if fused is not None:
                return fused[2:4]
        _, kept = kept_exps(logits, ops.exp(logits - statistics[0]), statistics)
        return kept, ops.sum(kept, axis=-1, keepdims=True)

    def zero_gradients(self):
        """Zeros for the gradients of the padded hidden rows, the kernel and
        the bias (none without a bias), float32 (float64 for float64
        inputs)."""
        gradients = (
            ops.zeros(ops.shape(self.hidden), self.dtype),
            ops.zeros(self.kernel.shape, self.dtype),
        )
        if self.bias is None:
            # No bias gradient: XLA kept the unused column sum of each
            # chunk's logit gradients inside the forward pass's conditional,
            # where on CPU it took about as long as a product.
            return gradients
        return gradients + (ops.zeros(self.classes.shape, self.dtype),)

    def add_gradients(
        self, gradients, start, rows, target_index, kept, kept_sum, weights
    ):
        """`gradients` plus those of `sum(weights * losses)` over the chunk
        of `rows` from `start`, whose kept classes are `kept` (summing to
        `kept_sum`, as `_single_label_core` gives them; on eager PyTorch
        in place, `kept` overwritten)."""
        if add_chunk_gradients is not None:
            fused = add_chunk_gradients(
                gradients, start, rows, target_index, kept, kept_sum, weights,
                self.kernel, self.transposed_kernel,
            )
            if fused is not None:
                return fused
        grad_hidden, grad_kernel, *grad_bias = gradients
        weights = ops.expand_dims(weights, -1)
        grad_logits = kept * (weights / kept_sum)
        grad_logits = ops.where(
            ops.equal(self.classes, target_index), grad_logits - weights, grad_logits
        )
        grad_rows = ops.cast(grad_logits, rows.dtype)
        if self.transposed_kernel:
            chunk_hidden = ops.matmul(grad_rows, self.kernel)
        else:
            # `(kernel @ grad_rows.T).T`, not `grad_rows @ kernel.T`: the
            # product over the vocabulary then runs in about 2/3 the time on
            # TensorFlow's CPU kernels (the same on XLA).
            chunk_hidden = ops.transpose(ops.matmul(self.kernel, ops.transpose(grad_rows)))
        dtype = grad_hidden.dtype
        return (
            ops.slice_update(grad_hidden, (start, 0), ops.cast(chunk_hidden, dtype)),
            self._add_kernel_gradient(grad_kernel, rows, grad_rows),
            *(grad + ops.sum(grad_logits, axis=0) for grad in grad_bias),
        )

    def _kernel_product(self, rows, grad_rows, first, size):
        """The kernel's gradient over classes `first` to `first + size` from
        a chunk's `rows` and the gradient of their logits `grad_rows`."""
        columns = grad_rows
        if size != grad_rows.shape[-1]:
            columns = ops.slice(grad_rows, (0, first), (grad_rows.shape[0], size))
        if self.transposed_kernel:
            return ops.matmul(ops.transpose(columns), rows)
        return ops.matmul(ops.transpose(rows), columns)

    def _add_kernel_gradient(self, grad_kernel, rows, grad_rows):
        """`grad_kernel` plus a chunk's kernel gradient, one slice of classes
        at a time in a loop, so that one slice's product is the only
        temporary: XLA adds it in place, but does not fuse a product into
        the add, and without the loop computes all the slices' products
        before adding any."""

        def add_slice(grad_kernel, first, size):
            start = (0, first) if self.class_axis else (first, 0)
            product = self._kernel_product(rows, grad_rows, first, size)
            product = ops.cast(product, grad_kernel.dtype)
            current = ops.slice(grad_kernel, start, product.shape)
            return ops.slice_update(grad_kernel, start, current + product)

        if len(self.class_slices) == 1:
            product = self._kernel_product(rows, grad_rows, 0, self.slice_size)
            return grad_kernel + ops.cast(product, grad_kernel.dtype)
        full_slices = len(self.class_slices) - (self.class_slices[-1][1] < self.slice_size)
        _, grad_kernel = sequential_while_loop(
            lambda index, _: index < full_slices,
            lambda index, grad_kernel: (
                index + 1,
                add_slice(grad_kernel, index * self.slice_size, self.slice_size),
            ),
            (ops.convert_to_tensor(0, "int32"), grad_kernel),
        )
        if full_slices < len(self.class_slices):
            grad_kernel = add_slice(grad_kernel, *self.class_slices[-1])
        return grad_kernel

    def gathered_gradients(self, gradients, statistics, needs, weights):
        """`gradients` plus those of `sum(weights * losses)` over the rows
        where `needs`: gathered first, their logits computed again, and
        the classes kept found from the forward pass's `statistics`."""
        chunk_size = self.chunk_size
        # Rows with a gradient first: chunk k of `order` holds rows to backprop.
        order = ops.cast(ops.argsort(ops.cast(ops.logical_not(needs), "int32")), "int32")
        num_chunks = (ops.sum(ops.cast(needs, "int32")) + chunk_size - 1) // chunk_size
        sorted_hidden = ops.take(self.hidden, order, axis=0)
        sorted_targets = ops.take(self.targets, order, axis=0)
        sorted_weights = ops.take(ops.where(needs, weights, 0.0), order, axis=0)
        sorted_statistics = ops.take(statistics, order, axis=0)

        def backward_chunk(index, gradients):
            start = index * chunk_size
            rows, target_index = self.chunk(sorted_hidden, sorted_targets, start)
            chunk_statistics = ops.split(
                ops.slice(sorted_statistics, (start, 0), (chunk_size, 3)), 3, -1
            )
            kept, kept_sum = self.kept_again(
                target_index, self.logits(rows), chunk_statistics
            )
            weights = ops.slice(sorted_weights, (start,), (chunk_size,))
            return index + 1, self.add_gradients(
                gradients, start, rows, target_index, kept, kept_sum, weights
            )

        grad_hidden, *others = gradients
        _, (sorted_grad_hidden, *others) = sequential_while_loop(
            lambda index, *_: index < num_chunks,
            backward_chunk,
            (ops.convert_to_tensor(0, "int32"), (ops.zeros_like(grad_hidden), *others)),
        )
        # The row gradients back in the rows' order, without the padding.
        grad_hidden = grad_hidden + ops.take(
            sorted_grad_hidden, ops.argsort(order), axis=0
        )
        return (grad_hidden[: self.num_rows], *others)
