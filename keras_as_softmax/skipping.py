"""Skipping masked samples: AS-Speed's sub-batch, in `keras.ops`.

A sample that AS-Softmax masks has loss and gradient exactly 0, so its
backward pass is wasted work. With `AdaptiveModel(skip_masked=True)` a
training step first runs the model without gradients over the batch (the
*selection pass*, in inference mode), reads from the loss which samples still
need a backward pass, and then runs forward and backward on those samples
only (a batch with nothing to learn runs no backward pass at all). The
sub-batch's predictions are merged back into the selection pass's, so that
the loss, its reduction, sample weights and regularisers are those of the
whole batch and the gradient equals AS-Softmax's gradient of the whole batch.

A step that runs eagerly (PyTorch, `run_eagerly=True`) takes exactly the
samples that need a backward pass. A compiled step needs static shapes: it
takes the smallest sub-batch of a fixed ladder of sizes `B, B/2, ..., B/32`
that holds them (padded with masked samples), and `PassChooser` chooses that
size on the host, between one compiled step per size.
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

    @property
    def counts(self):
        """int32 `[branch, num_needed]`, for `PassChooser`."""
        return ops.stack([ops.cast(self.branch, "int32"), self.num_needed])

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


class PassChooser:
    """Chooses a compiled skipping step's pass on the host.

    A compiled step cannot branch on data without compiling every branch into
    itself, and XLA on CPU runs a network's forward and backward pass several
    times slower inside a conditional than outside (see the README). So the
    trainer compiles a selection pass and one training step per size of the
    ladder (each when first used), and this calls them in Python, with one
    host synchronisation per step: the selection's counts when the step runs
    one, else the whole-batch step's count of samples that needed a backward
    pass; either decides whether the next step runs a selection pass.

    Args:
        select: `select(*args) -> (needs, selection_pred, counts)`, the
            compiled selection pass; `counts` is int32 `[branch, needed]`:
            the index in `ladder(B)` of the sub-batch that holds the samples
            that need a backward pass, and their number.
        compile_step: `compile_step(branch)`, the compiled training step for
            that index (0: the whole batch), called as
            `step(*args, selection)` with `selection` `(needs,
            selection_pred)`, or None for the whole batch.
        read_counts: `read_counts(args, outputs)`, the last training batch's
            `(needed, samples)`: from the state in `args` (`outputs` None:
            the first step since `reset`), else from a whole-batch step's
            `outputs`.
    """

    def __init__(self, select, compile_step, read_counts):
        self._select = select
        self._compile_step = compile_step
        self._read_counts = read_counts
        self._steps = {}
        self.reset()

    def reset(self):
        """Reads the choice of the next step from the state (e.g. when `fit`
        starts: the weights or the state may have been loaded since)."""
        self._selection_due = None

    def __call__(self, *args):
        if self._selection_due is None:
            self._selection_due = self._due(*self._fetch(self._read_counts(args, None)))
        selection, branch, selected = None, 0, self._selection_due
        if selected:
            needs, selection_pred, counts = self._select(*args)
            branch, num_needed = self._fetch(counts).tolist()
            self._selection_due = self._due(num_needed, needs.shape[0])
            if branch > 0:
                selection = (needs, selection_pred)
        if branch not in self._steps:
            self._steps[branch] = self._compile_step(branch)
        outputs = self._steps[branch](*args, selection)
        if not selected:
            self._selection_due = self._due(*self._fetch(self._read_counts(args, outputs)))
        return outputs

    @staticmethod
    def _fetch(values):
        """`values` on the host: the host synchronisation, once per step
        (and once more at the first step after `reset`)."""
        return ops.convert_to_numpy(ops.stack(values) if isinstance(values, tuple) else values)

    @staticmethod
    def _due(num_needed, num_samples):
        # `use_selection`, on the host.
        return bool(num_needed <= SELECTION_THRESHOLD * num_samples)


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
