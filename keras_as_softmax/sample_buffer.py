"""Skipping masked samples by buffering the others: `skip_masked="buffer"`.

With `AdaptiveModel(skip_masked="buffer")` each training step runs the model
without gradients over its batch (the *selection pass*, in inference mode),
which also gives the step's loss, metrics and masked ratio. The samples that
the loss leaves a gradient join a buffer of `B` rows (`B` the batch size);
once it is full, one forward and backward pass over it and one optimizer
update follow. Every pass has the batch's shape: one compiled selection pass
and one compiled training pass, and no padding except in an update that
closes a window of `max_accumulation_steps` batches or `fit`.

Which samples an update covers, and how it is normalised: the samples of
`fit` form a stream, in batch order. An update covers the *stretch* of the
stream from the sample after the previous update's stretch to its `B`-th
sample that needs a backward pass, or to the end of the
`max_accumulation_steps`-th batch the stretch touches, or to the end of
`fit` (stretches go on across epochs, as AS-Speed's windows do). Its
gradient is the gradient of the AS loss of that stretch taken as one batch,
with the loss's reduction: the sum of its weighted losses divided by its
divisor (its counted positions for `sum_over_batch_size`, its weights for
`mean_with_sample_weight`, 1 for `sum`), plus the model's regularisation
losses once. Masked samples add nothing to the sum, so the buffer pass over
the needed samples, with their weights divided by the stretch's divisor and
the loss summed, gives exactly that gradient, provided every sample was
judged with the weights of its update: the weights change only at an
update, and the rest of a batch after the sample that completes an update
is selected again with the new weights.
"""

import keras
import numpy as np
from keras import ops
from keras import tree


class SampleBuffer(keras.metrics.Metric):
    """The buffered samples and the open stretch, owned by an `AdaptiveModel`.

    The rows live on the device (twice the batch size, so that a batch's
    samples always fit after the rows waiting); the stretch's bookkeeping on
    the host. It is a `Metric` so that it is saved with the model's weights
    (`.keras` files, `BackupAndRestore`): a resumed `fit` loses no buffered
    sample. It reports nothing and keeps its state across epochs.

    Example:

    >>> buffer = SampleBuffer()
    >>> buffer.build((np.zeros((4, 3)), np.zeros(4), np.ones(4)))
    >>> buffer.batch_size, buffer.fill
    (4, 0)
    >>> # A batch whose samples 1 and 3 need a backward pass, 2 positions each:
    >>> buffer.add_batch(np.array([False, True, False, True]), np.full(4, 2.0), 8)
    >>> buffer.fill, buffer.stretch_divisor
    (2, 8.0)
    """

    def __init__(self, name="sample_buffer"):
        super().__init__(name=name)
        self._clear()

    @property
    def rows(self):
        """The rows, a flat list of tensors (None where the batch has None)."""
        return self.__dict__["_rows"]

    @rows.setter
    def rows(self, rows):
        # Not tracked: tensors, not variables.
        self.__dict__["_rows"] = None if rows is None else list(rows)

    def _clear(self):
        self.rows = None
        self._pending_rows = None
        self._structure = None
        self.batch_size = None
        self.fill = 0
        self.stretch_divisor = 0.0
        self.stretch_batches = 0

    def build(self, batch):
        """Creates the rows for batches like `batch`, `(x, y, weights)`."""
        leaves = tree.flatten(batch)
        self._structure = batch
        self.batch_size = int(next(leaf for leaf in leaves if leaf is not None).shape[0])
        self.rows = [
            None
            if leaf is None
            else ops.zeros(
                (2 * self.batch_size, *leaf.shape[1:]),
                keras.backend.standardize_dtype(leaf.dtype),
            )
            for leaf in leaves
        ]

    def check(self, batch):
        """Raises unless `batch`'s rows can join the buffer's."""
        leaves = tree.flatten(batch)
        fits = len(leaves) == len(self.rows) and all(
            (leaf is None) == (rows is None)
            and (
                leaf is None
                or (
                    tuple(leaf.shape[1:]) == tuple(rows.shape[1:])
                    and leaf.shape[0] <= self.batch_size
                )
            )
            for leaf, rows in zip(leaves, self.rows)
        )
        if not fits:
            shapes = [None if t is None else tuple(t.shape) for t in leaves]
            expected = [
                None if r is None else (self.batch_size, *r.shape[1:]) for r in self.rows
            ]
            raise ValueError(
                "`skip_masked=\"buffer\"` gathers the samples of several "
                "batches into one pass, so every batch needs the first "
                "batch's shapes (at most its size, the same shape per "
                f"sample); received a batch of shapes {shapes} after batches "
                f"of {expected}. Pad sequences to one length, or use "
                "`skip_masked=True`."
            )

    def add_batch(self, needs, shares, max_batches):
        """The host's bookkeeping of a batch whose needed samples the
        selection pass wrote after the buffered rows (`write_rows`).

        Args:
            needs: Boolean `(b,)`, the samples that need a backward pass.
            shares: `(b,)`, each sample's part of the reduction's divisor,
                or None (a `sum` reduction).
            max_batches: How many batches a stretch may touch.

        Returns:
            None, or the update this batch completes: `(count, divisor,
            rest)`, its buffered rows, its stretch's divisor, and where the
            next stretch starts in this batch (None: at the next batch).
        """
        needs = np.asarray(needs, bool)
        shares = np.zeros(len(needs)) if shares is None else np.asarray(shares, float)
        room = self.batch_size - self.fill
        self.stretch_batches += 1
        if needs.sum() >= room:
            # The stretch ends at the batch's `room`-th needed sample.
            last = int(np.flatnonzero(needs)[room - 1])
            update = (self.batch_size, self.stretch_divisor + shares[: last + 1].sum())
            rest = last + 1 if last + 1 < len(needs) else None
            self.fill = 0
            self.stretch_divisor = float(shares[last + 1 :].sum())
            self.stretch_batches = int(rest is not None)
            return (*update, rest)
        self.fill += int(needs.sum())
        self.stretch_divisor += float(shares.sum())
        if self.stretch_batches >= max_batches:
            return (*self.close(), None)
        return None

    def add_rest(self, needs):
        """After an update within a batch: the host's bookkeeping of the
        batch's rest, selected again with the new weights and written at
        the front."""
        self.fill = int(np.asarray(needs, bool).sum())

    def close(self):
        """Ends the open stretch: `(count, divisor)` of its update, or None
        if it touched no batch. The rows are free afterwards."""
        if self.stretch_batches == 0 and self.fill == 0:
            return None
        update = (self.fill, self.stretch_divisor)
        self.fill, self.stretch_divisor, self.stretch_batches = 0, 0.0, 0
        return update

    def unpack(self, rows):
        return tree.pack_sequence_as(self._structure, rows)

    def reset_state(self):
        pass  # Training state, not a per-epoch statistic.

    def update_state(self, *args, **kwargs):
        raise NotImplementedError(
            "The buffer is updated by `AdaptiveModel`'s training step."
        )

    def result(self):
        return {}

    def save_own_variables(self, store):
        if self.batch_size is None:
            return
        store["bookkeeping"] = np.array(
            [self.fill, self.stretch_divisor, self.stretch_batches, self.batch_size],
            "float64",
        )
        if self._pending_rows is not None:  # Loaded, not trained since.
            for key, rows in self._pending_rows.items():
                store[key] = rows
            return
        for i, rows in enumerate(self.rows):
            if rows is not None:
                store[f"rows_{i}"] = ops.convert_to_numpy(rows)

    def load_own_variables(self, store):
        self._clear()
        keys = list(store.keys())  # Keras 3.9's H5 store has no `in`.
        if "bookkeeping" not in keys:
            return
        fill, divisor, batches, batch_size = np.asarray(store["bookkeeping"]).tolist()
        self.fill, self.stretch_divisor = int(fill), float(divisor)
        self.stretch_batches, self.batch_size = int(batches), int(batch_size)
        self._pending_rows = {
            key: np.asarray(store[key]) for key in keys if key.startswith("rows_")
        }

    def restore(self, batch):
        """After `load_own_variables`: the saved rows, for batches like
        `batch` (the structure is the data's, known at the first step);
        whether there were any."""
        if self._pending_rows is None:
            return False
        self._structure = batch
        self.rows = [
            None if leaf is None else ops.convert_to_tensor(self._pending_rows[f"rows_{i}"])
            for i, leaf in enumerate(tree.flatten(batch))
        ]
        self._pending_rows = None
        return True


def write_rows(rows, batch, needs, fill):
    """The buffer's rows with `batch`'s rows written from row `fill`, those
    that need a backward pass first (in batch order), in `keras.ops` with
    static shapes.

    Args:
        rows: The buffer's rows, a flat list (None where the batch has None).
        batch: The batch's leaves, flat as `rows`.
        needs: Boolean `(b,)`.
        fill: int32 scalar, the rows already buffered.

    Returns:
        The new rows.
    """
    batch_size = ops.shape(needs)[0]
    needed = ops.cast(needs, "int32")
    order = ops.argsort((1 - needed) * batch_size + ops.arange(batch_size))
    offset = ops.arange(ops.shape(next(r for r in rows if r is not None))[0]) - fill
    inside = ops.logical_and(offset >= 0, offset < batch_size)
    source = ops.take(order, ops.clip(offset, 0, batch_size - 1))

    def write(old, new):
        if old is None:
            return None
        taken = ops.take(ops.cast(new, old.dtype), source, axis=0)
        where = ops.reshape(inside, (-1,) + (1,) * (len(old.shape) - 1))
        return ops.where(where, taken, old)

    return [write(old, new) for old, new in zip(rows, batch)]


def training_rows(buffer, rows, count, divisor):
    """The buffer pass's batch: its first `B` rows, their weights zero after
    `count` and divided by the stretch's `divisor` (the loss is then summed).

    Returns:
        `(x, y, sample_weight)`.
    """
    size = buffer.batch_size
    x, y, weights = buffer.unpack([None if r is None else r[:size] for r in rows])
    kept = ops.cast(ops.arange(size) < count, weights.dtype)
    kept = ops.reshape(kept, (-1,) + (1,) * (len(weights.shape) - 1))
    return x, y, weights * kept / ops.cast(divisor, weights.dtype)


def batch_weights(x, sample_weight):
    """The weights the buffer keeps for a batch: `sample_weight`, or ones."""
    if sample_weight is not None:
        return ops.cast(sample_weight, "float32")
    batch_size = ops.shape(next(t for t in tree.flatten(x) if t is not None))[0]
    return ops.ones((batch_size,), "float32")


class BufferedSteps:
    """Runs `skip_masked="buffer"`'s steps on the host, between compiled
    functions, with one host synchronisation per step (the selection's
    flags; one more in a step whose batch completes an update).

    Args:
        buffer: The model's `SampleBuffer`.
        observe: `observe(state, data, rows, fill) -> (logs, state, rows,
            needs, shares)`: the selection pass, the step's logs, and the
            batch written into the rows (`state` None where the trainer is
            stateful).
        train: `train(state, rows, count, divisor) -> (state, updates)`: the
            training pass over the first `B` rows and the optimizer update.
        select_rest: `select_rest(state, data, rows, start) -> (rows,
            needs)`: after an update within a batch, the selection pass again
            with the new weights, the batch's needed samples from `start` on
            written at the front of the rows.
        max_batches: How many batches a stretch may touch.
        prepare: `prepare(data) -> (x, y, weights)`, the batch as the buffer
            keeps it.
    """

    def __init__(self, buffer, observe, train, select_rest, max_batches, prepare):
        self.buffer = buffer
        self._observe = observe
        self._train = train
        self._select_rest = select_rest
        self._max_batches = max_batches
        self._prepare = prepare
        self.spanned = 0

    def __call__(self, state, data):
        buffer = self.buffer
        batch = self._prepare(data)
        if buffer.rows is None and not buffer.restore(batch):
            buffer.build(batch)
        buffer.check(batch)
        fill = ops.convert_to_tensor(buffer.fill, "int32")
        logs, state, buffer.rows, needs, shares = self._observe(
            state, data, buffer.rows, fill
        )
        needs = ops.convert_to_numpy(needs)  # The step's synchronisation.
        shares = None if shares is None else ops.convert_to_numpy(shares)
        batches = buffer.stretch_batches + 1
        update = buffer.add_batch(needs, shares, self._max_batches)
        if update is not None:
            count, divisor, rest = update
            self.spanned = batches
            state, updates = self._run_update(state, count, divisor)
            logs = {**logs, "optimizer_updates": updates}
            if rest is not None:
                buffer.rows, needs = self._select_rest(
                    state, data, buffer.rows, ops.convert_to_tensor(rest, "int32")
                )
                buffer.add_rest(ops.convert_to_numpy(needs))
        return {**logs, "accumulation_steps": ops.convert_to_tensor(self.spanned)}, state

    def _run_update(self, state, count, divisor):
        return self._train(
            state,
            self.buffer.rows,
            ops.convert_to_tensor(count, "int32"),
            ops.convert_to_tensor(divisor if divisor > 0 else 1.0, "float32"),
        )

    def flush(self, state):
        """Closes the open stretch with its update (`fit` calls it when it
        ends); returns the new state, and whether it trained."""
        update = None if self.buffer.rows is None else self.buffer.close()
        if update is None:
            return state, False
        self.spanned = 0
        return self._run_update(state, *update)[0], True
