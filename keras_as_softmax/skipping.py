"""Skipping masked samples: AS-Speed's sub-batch, in `keras.ops`.

A sample that AS-Softmax masks has loss and gradient exactly 0, so its
backward pass is wasted work. With `AdaptiveModel(skip_masked=True)` a
training step first runs the model without gradients over the batch (the
*selection pass*, in inference mode), reads from the loss which samples still
need a backward pass, and then runs forward and backward on those samples
only, gathered into the smallest sub-batch of a fixed ladder of sizes
`B, B/2, ..., B/32` (padded with masked samples; a batch with nothing to
learn runs no backward pass at all). The sub-batch's predictions are merged
back into the selection pass's, so that the loss, its reduction, sample
weights and regularisers are those of the whole batch and the gradient
equals AS-Softmax's gradient of the whole batch.

The ladder keeps shapes static, so that the step compiles: one branch per
size, chosen with `ops.switch` (on JAX with `jit_compile`, on the host
between jitted steps: see `keras_as_softmax.backend.jax`).
"""

from keras import ops
from keras import tree

from keras_as_softmax import backend
from keras_as_softmax._keras_private import get_keras_mask
from keras_as_softmax._keras_private import set_keras_mask

# Sizes B, B/2, ..., B/32 (rounded up).
LADDER_DEPTH = 5
# The selection pass runs when at most this fraction of the last batch's
# samples needed a backward pass: above it the sub-batch would be the whole
# batch (the next size of the ladder), and the selection pass pure cost.
SELECTION_THRESHOLD = 0.5


def ladder(batch_size):
    """The sub-batch sizes, largest first: `ceil(B / 2**k)`, k = 0..5.

    Example:

    >>> ladder(64)
    [64, 32, 16, 8, 4, 2]
    >>> ladder(10)
    [10, 5, 3, 2, 1, 1]
    """
    return [(batch_size + 2**k - 1) // 2**k for k in range(LADDER_DEPTH + 1)]


def needs_backward(masked, counted):
    """Per sample (first axis), whether some counted position is not masked.

    Args:
        masked, counted: Boolean per-position flags from the loss,
            `(B,)` or `(B, T, ...)`.

    Returns:
        A boolean `(B,)` tensor.

    Example:

    >>> masked = np.array([[True, True], [True, False], [False, False]])
    >>> counted = np.array([[True, True], [True, True], [False, False]])
    >>> keras.ops.convert_to_numpy(needs_backward(masked, counted)).tolist()
    [False, True, False]
    """
    needs = ops.logical_and(counted, ops.logical_not(masked))
    if len(needs.shape) > 1:
        needs = ops.any(ops.reshape(needs, (ops.shape(needs)[0], -1)), axis=1)
    return needs


def use_selection(num_needed, batch_size):
    """Whether the selection pass is worth running, from the last batch.

    Example:

    >>> bool(use_selection(2, 8)), bool(use_selection(6, 8))
    (True, False)
    """
    return ops.less_equal(
        ops.cast(num_needed, "float32"),
        SELECTION_THRESHOLD * ops.cast(batch_size, "float32"),
    )


class SubBatch:
    """Which rows of a batch go into the backward pass, and how their
    predictions rejoin the selection pass's.

    Args:
        needs: Boolean `(B,)`: the samples that need a backward pass.
        selection_pred: The selection pass's predictions of the batch.

    Attributes:
        branch: int32 scalar, which size of `ladder(B)` holds the samples
            that need a backward pass (0 is the whole batch), or
            `LADDER_DEPTH + 1` when none does.
        rows: The batch's row indices, those that need a backward pass
            first (in batch order), then the others.

    Example:

    >>> sub_batch = SubBatch(np.array([False, True, False, True]), np.zeros((4, 3)))
    >>> int(sub_batch.branch), ladder(4)[int(sub_batch.branch)]
    (1, 2)
    >>> keras.ops.convert_to_numpy(sub_batch.rows).tolist()
    [1, 3, 0, 2]
    """

    def __init__(self, needs, selection_pred):
        self.needs = needs
        self.selection_pred = selection_pred
        batch_size = ops.shape(needs)[0]
        needed = ops.cast(needs, "int32")
        self.num_needed = ops.sum(needed)
        sizes = ops.stack(ladder(batch_size))
        smallest_fit = ops.sum(ops.cast(sizes >= self.num_needed, "int32")) - 1
        self.branch = ops.where(self.num_needed == 0, LADDER_DEPTH + 1, smallest_fit)
        # Unique keys: the needed rows first, each group in batch order.
        self.rows = ops.argsort((1 - needed) * batch_size + ops.arange(batch_size))
        # Where each needed row sits in the sub-batch.
        self._positions = ops.cumsum(needed) - 1

    def predictions(self, call, x, size):
        """The batch's predictions for a pass over `size` rows.

        Args:
            call: `call(inputs)`, the model's training forward pass.
            x: The batch's inputs.
            size: How many of `rows` go through `call`; None for none.

        Returns:
            For the rows that need a backward pass, `call`'s predictions;
            elsewhere the selection pass's, without gradient. With the Keras
            mask of the selection pass's predictions.
        """
        if size is None:
            return tree.map_structure(_frozen, self.selection_pred)
        rows = self.rows[:size]
        sub_batch_pred = call(
            tree.map_structure(
                lambda t: None if t is None else ops.take(t, rows, axis=0), x
            )
        )
        positions = ops.minimum(self._positions, size - 1)

        def merge(selection, sub_batch):
            picked = ops.take(sub_batch, positions, axis=0)
            needs = ops.reshape(self.needs, (-1,) + (1,) * (len(selection.shape) - 1))
            return _with_mask_of(
                selection, ops.where(needs, picked, ops.stop_gradient(selection))
            )

        return tree.map_structure(merge, self.selection_pred, sub_batch_pred)


class TrainingPass:
    """One forward and backward pass of a training step: over the whole
    batch, or over `size` rows of a `SubBatch` (`size` None: no row).

    Attributes:
        backward_rows: How many rows it sends backward.

    Example:

    >>> sub_batch = SubBatch(np.array([False, True, False, True]), np.zeros((4, 3)))
    >>> TrainingPass(4).backward_rows, TrainingPass(4, sub_batch, 2).backward_rows
    (4, 2)
    """

    def __init__(self, batch_size, sub_batch=None, size=None):
        self.batch_size = batch_size
        self.sub_batch = sub_batch
        self.size = size
        if sub_batch is None:
            self.backward_rows = batch_size
        else:
            self.backward_rows = 0 if size is None else size

    def predictions(self, call, x):
        """The batch's predictions: `call(x)`, or see `SubBatch.predictions`."""
        if self.sub_batch is None:
            return call(x)
        return self.sub_batch.predictions(call, x, self.size)


def _frozen(selection):
    return _with_mask_of(selection, ops.stop_gradient(selection))


def _with_mask_of(source, tensor):
    mask = get_keras_mask(source)
    if mask is not None:
        set_keras_mask(tensor, mask)
    return tensor


def run_branch(index, branches):
    """`branches[index]()`: in Python where the backend branches in Python
    (PyTorch, eager steps: an untraced JAX `lax.switch` would compile every
    branch at every call), else with `ops.switch`.

    Example:

    >>> run_branch(keras.ops.convert_to_tensor(1), [lambda: "a", lambda: "b"])
    'b'
    """
    value = backend.branch_value(index)
    if value is not None:
        return branches[int(value)]()
    return ops.switch(index, branches)


def run_cond(condition, true_fn, false_fn, operands=()):
    """`true_fn(*operands)` if `condition` else `false_fn(*operands)`: with
    `ops.cond`, or a Python `if` where the backend branches in Python.

    Example:

    >>> run_cond(keras.ops.convert_to_tensor(False), lambda x: x + 1,
    ...          lambda x: x - 1, (10,))
    9
    """
    value = backend.branch_value(condition)
    if value is not None:
        return true_fn(*operands) if value else false_fn(*operands)
    return ops.cond(condition, lambda: true_fn(*operands), lambda: false_fn(*operands))
