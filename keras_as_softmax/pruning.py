"""Pruning samples that were masked when last seen: `prune_masked=r`.

A sample that AS-Softmax masks has loss and gradient exactly 0, and most
masked samples stay masked for many epochs. With
`AdaptiveModel(..., prune_masked=r)` each epoch of `fit` leaves out, at
random, a fraction `r` of the training samples whose every counted position
was masked when the model last trained on them: they get no forward pass at
all. The samples it keeps of those are weighted by `1 / (1 - r)` (times the
user's sample weights), so that the expected gradient of an epoch is the
full data's: a sample that the model has "forgotten" since (it carries a
gradient again) is seen less often, but counts more when it is, as
InfoBatch (Qin et al., ICLR 2024) does for low-loss samples. Unbiased in
expectation, not exact: exact skipping (`skip_masked`) changes nothing
about the gradient and combines with it. The last epochs of `fit` (from
the fraction `prune_until` of them on) train on every sample with unit
weights.

The flag of each sample comes from the AS loss's own computation in the
training step: the step writes its batch's flags into a device array in the
order the batches were served, and the host reads that array once per
epoch (`SamplePruning.end_epoch`), so there is no extra pass over the data
and no host round trip per batch.

A model that trains with Keras's own step (a plain `keras.Model` compiled
with an AS loss) prunes with the `PruneMasked` callback over a
`PrunableDataset`: the AS loss then records the flags itself.
"""

import math
import warnings

import keras
import numpy as np
from keras import ops
from keras import tree

from keras_as_softmax._keras_private import drop_step_functions
from keras_as_softmax._keras_private import unlocked
from keras_as_softmax._keras_private import untrack
from keras_as_softmax.as_softmax import ASLoss

# Fraction of `fit`'s epochs that prune (InfoBatch's default annealing).
PRUNE_UNTIL = 0.875
UNSEEN, NEEDED, MASKED = -1, 0, 1


def check_pruning(rate, until, names=("prune_masked", "prune_until")):
    """Raises unless `0 <= rate < 1` and `0 < until <= 1`, naming them as
    the caller's arguments `names`."""
    rate_name, until_name = names
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 <= rate < 1:
        raise ValueError(
            f"`{rate_name}` is the fraction of the samples masked when last "
            "seen that an epoch leaves out: a number in [0, 1) (0 turns "
            f"pruning off); received {rate!r}."
        )
    if isinstance(until, bool) or not isinstance(until, (int, float)) or not 0 < until <= 1:
        raise ValueError(
            f"`{until_name}` is the fraction of `fit`'s epochs that prune (the "
            f"others train on every sample): a number in (0, 1]; received {until!r}."
        )


def check_one_device(model, what):
    """Raises under a `tf.distribute` strategy of several replicas: they
    would record their samples' flags apart."""
    strategy = getattr(model, "distribute_strategy", None)  # TensorFlow's.
    if strategy is not None and strategy.num_replicas_in_sync > 1:
        raise ValueError(
            f"{what} runs on one device under TensorFlow: the replicas of a "
            "`tf.distribute` strategy would record their samples' flags "
            "apart. Prune without a strategy, or on JAX's `keras.distribution`."
        )


class SamplePruning(keras.metrics.Metric):
    """The per-sample state of `prune_masked`, a metric of the model.

    On the host: each training sample's flag when last seen (`UNSEEN`,
    `NEEDED` or `MASKED`) and the seed of the draws, saved with the model's
    weights (`.keras` files, `BackupAndRestore`). On the device, while a
    pruning `fit` runs: the flags of the epoch's samples in the order they
    were served, and how many there are.

    Args:
        rate: The fraction `r` of previously masked samples left out.
        until: The fraction of `fit`'s epochs that prune.
        seed: The seed of the draws; None draws one from NumPy's global
            generator (which `keras.utils.set_random_seed` seeds).

    Attributes:
        last_masked: int8 `(N,)`, each sample's flag when last seen.
        order: The indices of the samples the current epoch trains on, in
            the order it serves them.

    Example:

    >>> pruning = SamplePruning(0.5, seed=0)
    >>> pruning.start(4, batch_size=2)
    >>> pruning.last_masked[:] = [MASKED, MASKED, NEEDED, UNSEEN]
    >>> order, scale = pruning.draw(epoch=1, epochs=8, shuffle=False)
    >>> order.tolist(), scale.tolist()
    ([0, 2, 3], [2.0, 1.0, 1.0, 1.0])
    """

    def __init__(self, rate, until=PRUNE_UNTIL, seed=None, name="sample_pruning"):
        super().__init__(name=name)
        check_pruning(rate, until)
        self.rate, self.until = float(rate), float(until)
        self.seed = int(np.random.randint(2**31)) if seed is None else int(seed)
        self.last_masked = None
        self.draws = 0
        self.recording = False
        self._flags = self._served = None
        self.order = None
        self._previously_masked = None
        self.epoch_logs = {}

    def update_state(self, *args, **kwargs):
        raise NotImplementedError(
            "The flags are recorded by the training step (`record`): "
            "`AdaptiveModel`'s, or the AS loss's under `PruneMasked`."
        )

    def result(self):
        return {}  # Its logs are the epoch's, added by `fit` (`epoch_logs`).

    def reset_state(self):
        # Training state, not a statistic: `reset_metrics` (every epoch, and
        # `evaluate`) keeps it; an epoch's recording restarts in `draw`.
        pass

    def start(self, num_samples, batch_size):
        """Before a pruning `fit` over `num_samples` samples in batches of
        `batch_size`: the device arrays for them (and a padded last batch),
        and fresh flags if their number changed."""
        if self.last_masked is None or len(self.last_masked) != num_samples:
            self.last_masked = np.full(num_samples, UNSEEN, "int8")
        if self._flags is None or self._flags.shape[0] != num_samples + batch_size:
            self._flags = self.add_variable(
                (num_samples + batch_size,),
                initializer="zeros",
                dtype="int32",
                name="epoch_flags",
            )
            self._served = self.add_variable(
                (), initializer="zeros", dtype="int32", name="served"
            )

    def draw(self, epoch, epochs, shuffle):
        """Epoch `epoch` of `epochs`'s samples: `(order, scale)`, the
        indices of the samples it trains on, in order, and each sample's
        weight factor. Starts the epoch's recording."""
        # A new stream per draw, also across `fit`s (each starts at epoch 0).
        rng = np.random.default_rng([self.seed, self.draws])
        self.draws += 1
        num_samples = len(self.last_masked)
        scale = np.ones(num_samples, "float32")
        kept = np.ones(num_samples, bool)
        self._previously_masked = self.last_masked == MASKED
        if epoch < math.ceil(self.until * epochs) and self.rate > 0:
            pruned = self._previously_masked & (rng.random(num_samples) < self.rate)
            if not pruned.all():  # (An epoch with no sample keeps them all.)
                kept = ~pruned
                scale[self._previously_masked & kept] = 1.0 / (1.0 - self.rate)
        self.order = np.flatnonzero(kept)
        if shuffle:
            self.order = rng.permutation(self.order)
        self.epoch_logs = {"pruned_fraction": 1.0 - len(self.order) / max(num_samples, 1)}
        self._served.assign(0)
        return self.order, scale

    def record(self, masked):
        """In the training step: the batch's per-sample flags (boolean
        `(b,)`, True where every counted position is masked), written after
        those already served this epoch."""
        served = self._served.value
        self._flags.assign(
            ops.slice_update(self._flags.value, [served], ops.cast(masked, "int32"))
        )
        self._served.assign(served + ops.shape(masked)[0])

    def end_epoch(self):
        """After an epoch: its flags become the samples' last-seen flags; the
        epoch's logs (`pruned_fraction`, and `forgetting_rate`: the share of
        the previously masked samples it trained on that needed a gradient
        again)."""
        served = int(ops.convert_to_numpy(self._served.value))
        if served < len(self.order):
            raise ValueError(
                f"The epoch trained on {served} samples where the pruned data "
                f"set served {len(self.order)}: with `prune_masked`, pass "
                "the data as arrays or a `PrunableDataset`, without "
                "`steps_per_epoch`."
            )
        # (After them, the last batch's padding.)
        flags = ops.convert_to_numpy(self._flags.value)[: len(self.order)].astype("int8")
        again = self._previously_masked[self.order]
        self.epoch_logs["forgetting_rate"] = (
            float(np.mean(flags[again] == NEEDED)) if again.any() else 0.0
        )
        self.last_masked[self.order] = flags
        return self.epoch_logs

    def get_config(self):
        return {"rate": self.rate, "until": self.until, "seed": self.seed, "name": self.name}

    def save_own_variables(self, store):
        if self.last_masked is not None:
            store["last_masked"] = self.last_masked
            store["seed"] = np.array(self.seed, "int64")
            store["draws"] = np.array(self.draws, "int64")

    def load_own_variables(self, store):
        keys = list(store.keys())  # Keras 3.9's H5 store has no `in`.
        if "last_masked" in keys:
            self.last_masked = np.asarray(store["last_masked"]).astype("int8")
            self.seed = int(np.asarray(store["seed"]))
            self.draws = int(np.asarray(store["draws"]))


class PrunableDataset(keras.utils.PyDataset):
    """Training data that `prune_masked` can prune: samples by index.

    `AdaptiveModel.fit` makes one from arrays itself; build one for other
    sample-indexable data (anything with `len` and NumPy-style indexing by
    an array of indices, e.g. a memory-mapped array). Each epoch it serves
    the samples `SamplePruning.draw` keeps, in batches, with their weight
    factors applied to the sample weights. Only an `AdaptiveModel` with
    `prune_masked`, or the `PruneMasked` callback, draws them: elsewhere it
    serves every sample, in order.
    The last batch is padded to `batch_size` with rows of weight 0, so that
    an epoch's length changes but a compiled step's shapes do not (with the
    `"sum_over_batch_size"` reduction every sample's loss is divided by the
    batch size, the last batch's too).

    Args:
        x, y, sample_weight: As `fit` takes them as arrays (nested
            structures allowed); the same number of samples in each.
        batch_size: Samples per batch.
        shuffle: Whether each epoch serves its samples in a new random order
            (drawn from the pruning's seed).
        **kwargs: `keras.utils.PyDataset`'s (`workers`, ...).

    Example:

    >>> data = PrunableDataset(np.zeros((10, 3)), np.arange(10), batch_size=4)
    >>> len(data), data.num_batches
    (10, 3)
    """

    def __init__(self, x, y=None, sample_weight=None, batch_size=32, shuffle=True, **kwargs):
        super().__init__(**kwargs)
        self._data = (x, y, sample_weight)
        lengths = {len(leaf) for leaf in tree.flatten(self._data) if leaf is not None}
        if len(lengths) != 1:
            raise ValueError(
                "`PrunableDataset` needs the same number of samples in `x`, "
                f"`y` and `sample_weight`; received lengths {sorted(lengths)}."
            )
        (self._num_samples,) = lengths
        self.batch_size, self.shuffle = int(batch_size), bool(shuffle)
        # Until the first draw (Keras reads a batch to build the model): all.
        self.order = np.arange(self._num_samples)
        self._scale = np.ones(self._num_samples, "float32")
        # The batch indices asked for since `begin_epoch`, in order (in this
        # process: none with multiprocessing workers).
        self.requested = []

    def __len__(self):
        return self._num_samples

    @property
    def num_batches(self):
        return math.ceil(len(self.order) / self.batch_size)

    def begin_epoch(self, order, scale):
        """Serves `order`'s samples, weighted by `scale`, from now on."""
        self.order, self._scale = order, scale
        self.requested = []

    def __getitem__(self, index):
        self.requested.append(index)
        rows = self.order[index * self.batch_size : (index + 1) * self.batch_size]
        padding = self.batch_size - len(rows)
        rows = np.concatenate([rows, np.resize(self.order, padding)])
        x, y, sample_weight = tree.map_structure(
            lambda t: None if t is None else t[rows], self._data
        )
        weights = self._scale[rows]
        weights[len(rows) - padding :] = 0.0
        if sample_weight is not None:
            weights = np.asarray(sample_weight, "float32") * np.reshape(
                weights, (-1,) + (1,) * (np.ndim(sample_weight) - 1)
            )
        return x, y, weights


class PruningEpochs(keras.callbacks.Callback):
    """Draws each epoch's samples before it (`SamplePruning.draw`) and takes
    its flags after it, logging `pruned_fraction` and `forgetting_rate`.

    `AdaptiveModel.fit` puts it before the user's callbacks, so that
    `BackupAndRestore` saves the flags of the epoch it saves.

    Args:
        data: The `PrunableDataset` that `fit` trains on.
        pruning: Its `SamplePruning`.
    """

    def __init__(self, data, pruning):
        super().__init__()
        self.data, self.pruning = data, pruning

    def on_epoch_begin(self, epoch, logs=None):
        self.data.begin_epoch(
            *self.pruning.draw(epoch, self.params["epochs"], self.data.shuffle)
        )

    def on_epoch_end(self, epoch, logs=None):
        epoch_logs = self.pruning.end_epoch()
        if logs is not None:
            logs.update(epoch_logs)


class PruneMasked(PruningEpochs):
    """Prunes the samples masked when last seen, for a model that trains
    with Keras's own step: a plain `keras.Model` compiled with an AS loss.

    (`AdaptiveModel(prune_masked=r)` prunes by itself, and on arrays.) Give
    `fit` a `PrunableDataset`, `shuffle=False` (the dataset shuffles its
    samples itself, from the pruning's seed), and this callback over that
    dataset. Each epoch leaves out a random fraction `rate` of the samples
    whose every counted position was masked when last seen, and weights the
    kept ones of those by `1 / (1 - rate)`; the model's AS loss records each
    trained sample's flag in the training step. The epoch's logs get
    `pruned_fraction` and `forgetting_rate`.

    The per-sample state (`pruning`, a `SamplePruning`) belongs to the
    callback, and to the model while `fit` runs: `BackupAndRestore` saves
    and restores it with the weights, and a later `fit` with the same
    callback goes on from it. A `.keras` file keeps it for an
    `AdaptiveModel` only.

    Args:
        data: The `PrunableDataset` that `fit` trains on.
        rate: The fraction of the samples masked when last seen that each
            epoch leaves out, in `[0, 1)`.
        until: The fraction of `fit`'s epochs that prune; the others train
            on every sample with unit weights.
        seed: The seed of the draws (None: from NumPy's global generator).

    Example:

    >>> from keras_as_softmax import SparseASSoftmaxCrossentropy
    >>> model = keras.Sequential([keras.Input((2,)),
    ...                           keras.layers.Dense(2, kernel_initializer="zeros")])
    >>> model.compile(optimizer=keras.optimizers.SGD(1.0),
    ...               loss=SparseASSoftmaxCrossentropy(delta=0.5))
    >>> x = np.concatenate([np.full((32, 2), 2.0), np.full((32, 2), -2.0)])
    >>> y = np.repeat([0, 1], 32)
    >>> data = PrunableDataset(x, y, batch_size=16)
    >>> history = model.fit(data, epochs=4, shuffle=False, verbose=0,
    ...                     callbacks=[PruneMasked(data, rate=0.5, seed=0)])
    >>> [round(f, 2) for f in history.history["pruned_fraction"]]
    [0.0, 0.39, 0.66, 0.56]
    """

    def __init__(self, data, rate=0.5, until=PRUNE_UNTIL, seed=None):
        if not isinstance(data, PrunableDataset):
            raise TypeError(
                "`PruneMasked` needs the `keras_as_softmax.PrunableDataset` "
                "that `fit` trains on, to know which samples each batch "
                f"holds; received {type(data).__name__}."
            )
        check_pruning(rate, until, names=("rate", "until"))
        super().__init__(data, SamplePruning(rate, until, seed))
        self._loss = None
        self._warnings = None

    def set_model(self, model):
        super().set_model(model)
        # Before `fit` builds its step, and before `BackupAndRestore`
        # restores the weights: the state is then the model's to save.
        if getattr(model, "sample_pruning", None) is self.pruning:
            return
        if hasattr(model, "configure_pruning"):  # An `AdaptiveModel`.
            raise ValueError(
                "An `AdaptiveModel` prunes by itself: pass "
                "`prune_masked=...` to it (or `configure_pruning`) instead "
                "of the `PruneMasked` callback."
            )
        check_one_device(model, "`PruneMasked`")
        as_losses = [
            loss for loss in tree.flatten(getattr(model, "loss", None))
            if isinstance(loss, ASLoss)
        ]
        if len(as_losses) != 1:
            raise ValueError(
                "`PruneMasked` needs a model compiled with one AS-Softmax "
                "loss (SparseASSoftmaxCrossentropy, ASSoftmaxCrossentropy or "
                "MultiLabelASSoftmaxCrossentropy), whose masked samples it "
                f"prunes; received loss={getattr(model, 'loss', None)!r}."
            )
        (self._loss,) = as_losses
        with unlocked(model):
            stale = getattr(model, "sample_pruning", None)
            if stale is not None:  # Left by a `fit` that raised.
                untrack(model, stale)
            model.sample_pruning = self.pruning  # Tracked: saved, and JAX state.
        self.pruning.start(len(self.data), self.data.batch_size)
        self._loss.sample_pruning = self.pruning
        drop_step_functions(model)  # The step records the flags.

    def on_train_begin(self, logs=None):
        self.pruning.recording = True
        self._warnings = warnings.catch_warnings()
        self._warnings.__enter__()
        # A pruned epoch ends before the first (full) epoch's count of
        # batches, which Keras takes for the length of every epoch.
        warnings.filterwarnings("ignore", message="Your input ran out of data")

    def on_test_begin(self, logs=None):
        self.pruning.recording = False  # Validation's steps record nothing.

    def on_test_end(self, logs=None):
        self.pruning.recording = True

    def on_epoch_end(self, epoch, logs=None):
        requested = self.data.requested
        if any(later <= earlier for earlier, later in zip(requested, requested[1:])):
            raise ValueError(
                "`fit` served the `PrunableDataset`'s batches out of order, so "
                "the flags the loss recorded cannot be matched to samples: "
                "pass `shuffle=False` to `fit` (the dataset shuffles its "
                "samples itself)."
            )
        super().on_epoch_end(epoch, logs)

    def on_train_end(self, logs=None):
        model = self.model
        self.pruning.recording = False
        self._loss.sample_pruning = None
        untrack(model, self.pruning)
        delattr(model, "sample_pruning")
        drop_step_functions(model)
        if self._warnings is not None:
            self._warnings.__exit__(None, None, None)
            self._warnings = None
