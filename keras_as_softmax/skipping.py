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
size on the host, between one compiled step per size. With
`skip_masked="auto"` the selection pass and each size are compiled only once
the time they would have saved pays for their compilation, and would again
over the rest of `fit`; until then a larger compiled size, which holds the
samples too, or the whole batch without a selection pass stands in.
"""

import statistics
import time

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
# `skip_masked="auto"`: the selection pass's share of a whole-batch training
# step, assumed until one is measured. The dearest measured (issue 20, a CNN:
# 0.06 on JAX, 0.30 on TensorFlow with XLA, 0.46 in its graph mode), so that
# savings are not overestimated before anything is compiled for them.
SELECTION_SHARE_PRIOR = 0.5
# The same for the share of a training pass that does not shrink with its
# rows, until two sizes are measured: 0.3 fits the dearest measured (a pass
# over B/8 at 0.37 of the whole batch's, TensorFlow's graph mode).
FIXED_SHARE_PRIOR = 0.3


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


@backend.eager_under_torch_compile
def selects(num_needed, num_samples, costs=None):
    """Whether a step runs the selection pass, from the last training batch's
    counts (Python numbers): when at most `SELECTION_THRESHOLD` of its
    samples needed a backward pass and, with `costs` (`skip_masked="auto"`),
    while `SkippingCosts` finds skipping cheaper.

    Example:

    >>> selects(2, 8), selects(6, 8)
    (True, False)
    """
    if num_needed > SELECTION_THRESHOLD * num_samples:
        return False
    return costs is None or costs.skips(1 + ladder_index(num_needed, num_samples))


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
        """int32 `[branch, num_needed, batch_size]`, for `PassChooser`."""
        return ops.stack(
            [
                ops.cast(self.branch, "int32"),
                self.num_needed,
                ops.cast(ops.shape(self.needs)[0], "int32"),
            ]
        )

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


def ladder_index(num_needed, batch_size):
    """`SubBatch.branch` on the host: the index in `ladder(B)` of the
    smallest size that holds `num_needed` samples, `LADDER_DEPTH + 1` for
    none.

    Example:

    >>> ladder_index(5, 64), ladder_index(64, 64), ladder_index(0, 64)
    (3, 0, 6)
    """
    if num_needed == 0:
        return LADDER_DEPTH + 1
    return max(i for i, size in enumerate(ladder(batch_size)) if size >= num_needed)


class SkippingCosts:
    """`skip_masked="auto"`: skip only while it makes the steps cheaper.

    The host times each training step, from its start to the next one's (a
    step synchronises once, so that is the device's time for it), and keeps
    the median of the last `SAMPLES` times of each pass: the whole batch, and
    a selection pass followed by each size of the ladder. A step whose
    samples would fit a sub-batch (`selects`) then runs the selection
    pass when the skipping pass of the size that the last batch needed is
    measured cheaper than the whole batch. A pass not measured yet runs to be
    measured, and the dearer pass runs again once its extra time is at most
    `EXPLORATION_SHARE` (1 %) of the time the cheaper one has run since the
    dearer one was last measured (sooner when the two are close), so the
    choice follows the masked ratio and the machine at a bounded cost. The
    first run of each pass (its compilation) and the step before a `reset`
    are not counted.

    A compiled step (`PassChooser`) also weighs compilations (`pays_to_compile`):
    a size not compiled yet (with the selection pass, the first time) is
    compiled once the time it would have saved, since the last compilation,
    over the larger compiled size that stands in for it (or the whole batch)
    reaches what its compilations take (the median first run of a compiled
    step, per compilation), as in ski rental: at most twice the cost of the
    better choice in hindsight; and only while it would save that again over
    `remaining_steps`, the steps left in `fit` (so a short `fit` compiles
    nothing that cannot pay back).

    Args:
        clock: `clock() -> seconds`; by default `time.perf_counter`.

    Attributes:
        remaining_steps: The training steps `fit` has left after the one in
            flight, or None when unknown (`AdaptiveModel` sets it each epoch).

    Example:

    >>> costs = SkippingCosts(clock=iter([0.0, 1.0, 2.0, 3.0, 3.5, 4.0]).__next__)
    >>> for key in [0, 0, 3, 3, 0]:   # Pass 0 (whole batch) costs 1 s, pass 3 0.5 s.
    ...     costs.begin_step()
    ...     costs.ran(key)
    >>> costs.skips(3)
    True
    """

    SAMPLES = 5
    EXPLORATION_SHARE = 0.01

    def __init__(self, clock=time.perf_counter):
        self._clock = clock
        self._seconds = {}  # Pass: its recent times.
        self._measured_at = {}  # Pass: the step of its last time.
        self._runs = set()
        self._step = 0
        self._compile_seconds = []  # First runs of compiled steps, per compilation.
        self._savings = {}  # Pass not compiled: the time it would have saved.
        self.remaining_steps = None
        self.reset()

    def reset(self):
        """Forgets the step in flight (e.g. when `fit` starts)."""
        self._started = None
        self._key = None
        self._compilations = 0

    @backend.eager_under_torch_compile
    def begin_step(self):
        """Called when a step starts: times the step before it."""
        now = self._clock()
        if self._compilations:
            self._compile_seconds.append((now - self._started) / self._compilations)
        elif self._key is not None and self._key in self._runs:
            times = self._seconds.setdefault(self._key, [])
            times[:] = [*times[-(self.SAMPLES - 1) :], now - self._started]
            self._measured_at[self._key] = self._step
        if self._key is not None:
            self._runs.add(self._key)
        self._started, self._key, self._compilations = now, None, 0
        self._step += 1
        if self.remaining_steps:
            self.remaining_steps -= 1

    @backend.eager_under_torch_compile
    def ran(self, key, compilations=0):
        """Says which pass this step ran: 0 the whole batch without a
        selection pass, else `1 + ladder_index` of the selection's sub-batch
        (`1` a selection pass then the whole batch); `compilations`: how many
        compiled functions it compiled (its time then measures them)."""
        self._key, self._compilations = key, compilations
        if compilations:
            self._savings.clear()  # Against the stand-ins before it.

    def pays_to_compile(self, key, stand_in, compilations=1):
        """Whether this step may compile pass `key` (`compilations` compiled
        functions) rather than run pass `stand_in` in its place (a larger
        compiled sub-batch, or 0: the whole batch without a selection pass):
        once the time `key` would have saved over the cheaper of `stand_in`
        and the whole batch, summed over the steps whose samples it would
        have held since the last compilation, reaches what the compilations
        take, and the time it saves a step, over `remaining_steps`, does too.

        `key`'s time is estimated as `stand_in`'s, with the selection pass,
        less the training time of the rows it leaves out: affine in the rows,
        through the measured selection passes of the most and the fewest
        rows. Until they are measured, the selection pass is taken as
        `SELECTION_SHARE_PRIOR` of the whole batch, and the training pass's
        part that does not shrink with the rows as `FIXED_SHARE_PRIOR`.

        Example:

        >>> costs = SkippingCosts(clock=iter([0.0, 2.0, 3.0, 4.0, 5.0]).__next__)
        >>> costs.begin_step(); costs.ran(0, compilations=1)  # Compiles in 2 s.
        >>> for _ in range(3):   # Then runs in 1 s.
        ...     costs.begin_step(); costs.ran(0)
        >>> costs.begin_step()
        >>> # B/8 (pass 4) would take 0.5 + 0.3 + 0.7 / 8 s: 0.1125 s saved a
        >>> # step, against a selection pass and a size to compile (4 s).
        >>> [costs.pays_to_compile(4, 0, compilations=2) for _ in range(36)][-2:]
        [False, True]
        >>> costs.remaining_steps = 30   # 3.4 s left to save: less than 4 s.
        >>> costs.pays_to_compile(4, 0, compilations=2)
        False
        """
        if stand_in not in self._seconds or not self._compile_seconds:
            return False
        selection = self._selection_seconds()
        left_out = _rows_share(stand_in) - _rows_share(key)
        estimate = (
            self._median(stand_in)
            + (0.0 if stand_in else selection)
            - self._seconds_per_share() * left_out
        )
        instead = min(self._median(k) for k in (stand_in, 0) if k in self._seconds)
        saving = max(instead - estimate, 0.0)
        self._savings[key] = self._savings.get(key, 0.0) + saving
        cost = compilations * statistics.median(self._compile_seconds)
        repays = self.remaining_steps is None or saving * self.remaining_steps >= cost
        return self._savings[key] >= cost and repays

    def _selection_seconds(self):
        # The selection pass alone (nothing to train), or its share of a
        # selection pass then the whole batch; until one is measured,
        # `SELECTION_SHARE_PRIOR` of the whole batch (0 until that is).
        nothing = LADDER_DEPTH + 2
        if nothing in self._seconds:
            return self._median(nothing)
        if 0 in self._seconds and 1 in self._seconds:
            return max(self._median(1) - self._median(0), 0.0)
        return SELECTION_SHARE_PRIOR * self._median(0) if 0 in self._seconds else 0.0

    def _seconds_per_share(self):
        # A training pass's time per share of the batch's rows: the slope
        # between the measured selection passes (the selection cancels) with
        # the most and the fewest rows; until two are measured,
        # `1 - FIXED_SHARE_PRIOR` of the whole batch's time.
        trained = {
            _rows_share(key): self._median(key)
            for key in self._seconds
            if 0 < key <= LADDER_DEPTH + 1
        }
        if len(trained) > 1:
            most, fewest = max(trained), min(trained)
            return max((trained[most] - trained[fewest]) / (most - fewest), 0.0)
        return (1 - FIXED_SHARE_PRIOR) * self._median(0) if 0 in self._seconds else 0.0

    def skips(self, predicted):
        """Whether this step runs the selection pass, `predicted` the pass
        key of the last batch's needed samples."""
        for key in (predicted, 0):
            if key not in self._seconds:
                return key != 0  # Not measured yet.
        chosen, aside = sorted((predicted, 0), key=self._median)
        if self._recheck_due(aside, chosen):
            return aside != 0
        return chosen != 0

    def _recheck_due(self, aside, chosen):
        # Measuring `aside` again costs its extra time over `chosen` once: at
        # most `EXPLORATION_SHARE` of `chosen`'s time since it was measured.
        extra = self._median(aside) - self._median(chosen)
        steps = self._step - self._measured_at[aside]
        return steps * self._median(chosen) * self.EXPLORATION_SHARE >= extra

    def _median(self, key):
        # Not NumPy's: a step calls this several times, and `np.median`
        # costs about 40 us, `statistics.median` 1 us here.
        return statistics.median(self._seconds[key])


def _rows_share(key):
    """The share of the batch that pass `key` trains, about."""
    if key == LADDER_DEPTH + 2:
        return 0.0
    return 1.0 if key == 0 else 2.0 ** (1 - key)


class PassChooser:
    """Chooses a compiled skipping step's pass on the host.

    A compiled step cannot branch on data without compiling every branch into
    itself, and XLA on CPU runs a network's forward and backward pass several
    times slower inside a conditional than outside (see the README). So the
    trainer compiles a selection pass and one training step per size of the
    ladder (each when first used), and this calls them in Python, with one
    host synchronisation per step: the selection's counts when the step runs
    one, else the whole-batch step's count of samples that needed a backward
    pass; either decides whether the next step runs a selection pass. (With
    `costs`, until a selection pass is compiled, the step after the next:
    the host reads a whole-batch step's count after it has started the next
    step, so that it does not wait for the device.)

    Called as `chooser(*args)`, with the compiled functions' arguments.

    Args:
        select: `select(*args) -> (needs, selection_pred, counts)`, the
            compiled selection pass; `counts` is int32 `[branch, needed,
            samples]`: the index in `ladder(B)` of the sub-batch that holds
            the samples that need a backward pass, their number, and the
            batch's.
        compile_step: `compile_step(branch)`, the compiled training step for
            that index (0: the whole batch), called as
            `step(*args, selection)` with `selection` `(needs,
            selection_pred)`, or None for the whole batch.
        read_counts: `read_counts(args, outputs)`, the last training batch's
            `(needed, samples)`: from the state in `args` (`outputs` None:
            the first step since `reset`), else from a whole-batch step's
            `outputs`.
        costs: A `SkippingCosts` for `skip_masked="auto"`, else None.
        batch_size: `batch_size(args)`, the size of the batch in `args` (a
            step compiles again for a new one); by default the first
            dimension of the last argument's first tensor.
    """

    def __init__(self, select, compile_step, read_counts, costs=None, batch_size=None):
        self._select = select
        self._compile_step = compile_step
        self._read_counts = read_counts
        self._costs = costs
        self._batch_size = batch_size or (lambda args: tree.flatten(args[-1])[0].shape[0])
        self._steps = {}
        self._traced = set()  # (branch, batch size): a step compiled for it.
        self._selecting = set()  # Batch sizes the selection pass compiled for.
        self.reset()

    def reset(self):
        """Reads the choice of the next step from the state (e.g. when `fit`
        starts: the weights or the state may have been loaded since)."""
        self._last_counts = None
        self._pending_counts = None
        if self._costs is not None:
            self._costs.reset()

    def __call__(self, *args):
        if self._costs is not None:
            self._costs.begin_step()
        if self._last_counts is None:
            self._last_counts = self._fetch(self._read_counts(args, None)).tolist()
        selection, branch = None, 0
        batch_size = self._batch_size(args)
        selected, planned = selects(*self._last_counts), None
        if selected and self._costs is not None:
            planned = self._planned_branch(ladder_index(*self._last_counts), batch_size)
            selected = planned is not None and self._costs.skips(1 + planned)
        compilations = 0
        if selected:
            compilations += batch_size not in self._selecting
            self._selecting.add(batch_size)
            needs, selection_pred, counts = self._select(*args)
            branch, *self._last_counts = self._fetch(counts).tolist()
            if self._costs is not None:
                branch = self._stand_in(branch, batch_size, planned)
            if branch > 0:
                selection = (needs, selection_pred)
        if branch not in self._steps:
            self._steps[branch] = self._compile_step(branch)
        compilations += (branch, batch_size) not in self._traced
        self._traced.add((branch, batch_size))
        if self._costs is not None:
            self._costs.ran(1 + branch if selected else 0, compilations)
        outputs = self._steps[branch](*args, selection)
        pending, self._pending_counts = self._pending_counts, None
        if not selected:
            counts = _stacked(self._read_counts(args, outputs))
            if self._costs is not None and batch_size not in self._selecting:
                # `"auto"` before it runs a selection pass: every step trains
                # the whole batch, so it reads the counts one step late, and
                # the host prepares the next batch while this step runs.
                counts, self._pending_counts = pending, counts
            if counts is not None:
                self._last_counts = self._fetch(counts).tolist()
        return outputs

    def _stand_in(self, branch, batch_size, planned=None):
        """`branch` once compiled for `batch_size` (a step compiles again for
        a new shape, e.g. an epoch's last batch), else the smallest size,
        compiled or `planned`, that holds its samples; `branch` when none
        does."""
        sizes = [size for size, batch in self._traced if batch == batch_size]
        sizes += [] if planned is None else [planned]
        return max((size for size in sizes if size <= branch), default=branch)

    def _planned_branch(self, branch, batch_size):
        """With `costs`: the size this step runs (before its selection pass
        says which samples need it): `branch` when compiled, else the
        smallest size whose compilation `costs` finds paid for (any that
        holds `branch`'s samples serves it), else the compiled stand-in.
        Before the selection pass is compiled for `batch_size`, the whole
        batch without one stands in, and None says to run it. (Without
        `costs` each size compiles when needed.)"""
        if batch_size not in self._selecting:
            paid = [
                size
                for size in range(1, branch + 1)
                if self._costs.pays_to_compile(1 + size, 0, compilations=2)
            ]
            return max(paid, default=None)
        stand_in = self._stand_in(branch, batch_size)
        paid = [
            size
            for size in range(stand_in + 1, branch + 1)
            if self._costs.pays_to_compile(1 + size, 1 + stand_in)
        ]
        return max(paid, default=stand_in)

    @staticmethod
    def _fetch(values):
        """`values` on the host: the host synchronisation, once per step
        (and once more at the first step after `reset`)."""
        return ops.convert_to_numpy(_stacked(values))


def _stacked(values):
    """A tuple of counts as one new tensor (a step may donate the state they
    come from), or the tensor of counts."""
    return ops.stack(values) if isinstance(values, tuple) else values


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
